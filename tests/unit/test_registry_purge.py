"""The registry's purge (``Registry.purge``) and the tombstones it leaves, on SQLite,
MariaDB and PostgreSQL; test_registry_http.py runs these tests again through the http
registry and a registry server. Also :func:`abbild.purge.purge`, the loop above it."""

from __future__ import annotations

import datetime
import threading
import traceback
import uuid

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from abbild import purge as purging
from abbild.db.models import ImageRow, MemberRow, TombstoneRow
from abbild.errors import DuplicateImage, ImageNotFound, Invalid
from abbild.image import Image, Location, Status, utcnow
from abbild.registry import PURGE_TABLES, CacheEntry

NODE = "http://api-a.example:9292"
DAYS = datetime.timedelta(days=1)


def new_id() -> str:
    return str(uuid.uuid4())


def make_image(registry, *, members=(), **fields) -> Image:
    image = registry.create_image(
        Image(
            id=new_id(),
            owner="p1",
            visibility="shared",
            disk_format="raw",
            container_format="bare",
            properties={"os_distro": "debian", "arch": "x86_64"},
            tags={"gold", "prod"},
            **fields,
        )
    )
    for member in members:
        registry.add_member(image.id, member)
    return image


def delete(registry, image_id: str, days_ago: float) -> None:
    """Delete the image (its row stays, status ``deleted``), *days_ago* days ago."""
    registry.update_image(image_id, lambda image: image.transition(Status.DELETED))
    with Session(registry.engine) as session, session.begin():
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(deleted_at=utcnow() - days_ago * DAYS))


def remove_member(registry, image_id: str, member: str, days_ago: float) -> None:
    registry.delete_member(image_id, member)
    with Session(registry.engine) as session, session.begin():
        session.execute(
            update(MemberRow)
            .where(MemberRow.image_id == image_id, MemberRow.member == member)
            .values(updated_at=utcnow() - days_ago * DAYS)
        )


def rows(registry, row, *where) -> int:
    with Session(registry.engine) as session:
        return session.scalar(select(func.count()).select_from(row).where(*where))


def removed(**counts) -> dict[str, int]:
    return {table: counts.get(table, 0) for table in PURGE_TABLES}


def month_ago() -> datetime.datetime:
    return utcnow() - 30 * DAYS


def test_old_deleted_images_go_with_all_their_rows(sql_registry):
    old = make_image(sql_registry, members=("p2", "p3"))
    sql_registry.cache_put(CacheEntry(NODE, old.id))
    delete(sql_registry, old.id, days_ago=40)
    recent = make_image(sql_registry, members=("p2",))
    delete(sql_registry, recent.id, days_ago=10)
    live = make_image(sql_registry, members=("p2",))
    sql_registry.cache_put(CacheEntry(NODE, live.id, "cached", size=1, checksum="0" * 32))

    assert sql_registry.purge(month_ago()) == removed(
        images=1, image_properties=2, image_tags=2, image_members=2, cache_entries=1
    )

    with pytest.raises(ImageNotFound):
        sql_registry.get_image(old.id, include_deleted=True)
    assert rows(sql_registry, MemberRow, MemberRow.image_id == old.id) == 0
    assert sql_registry.get_image(recent.id, include_deleted=True).properties == recent.properties
    kept = sql_registry.get_image(live.id)
    assert (kept.status, kept.properties, kept.tags, kept.version) == (Status.QUEUED, live.properties, live.tags, 1)
    assert [m.member_id for m in sql_registry.list_members(live.id)] == ["p2"]
    assert [e.image_id for e in sql_registry.cache_entries()] == [live.id]
    # Nothing left of that age: a second run removes nothing.
    assert sql_registry.purge(month_ago()) == removed()


def test_the_locations_of_a_deleted_image_go_too(sql_registry):
    image = make_image(sql_registry, locations=[Location("local", "file:///gone/1", 3, "active", {})], size=3)
    delete(sql_registry, image.id, days_ago=31)
    assert sql_registry.purge(month_ago())["image_locations"] == 1


def test_images_in_other_statuses_stay_however_old(sql_registry):
    """Only ``deleted`` images are purged: a ``pending_delete`` one still has data to
    delete, and the rest are in use."""
    long_ago = utcnow() - 400 * DAYS
    images = [make_image(sql_registry) for _ in range(3)]

    def kill(image: Image) -> None:
        image.transition(Status.SAVING)
        image.transition(Status.KILLED)

    def delete_later(image: Image) -> None:
        image.locations = [Location("local", "file:///x", 1, "active", {})]
        image.transition(Status.ACTIVE)
        image.transition(Status.PENDING_DELETE)

    sql_registry.update_image(images[1].id, kill)
    sql_registry.update_image(images[2].id, delete_later)
    with Session(sql_registry.engine) as session, session.begin():
        session.execute(update(ImageRow).values(created_at=long_ago, updated_at=long_ago, deleted_at=long_ago))
    assert sql_registry.purge(utcnow() + DAYS) == removed()
    assert {sql_registry.get_image(i.id).status for i in images} == {
        Status.QUEUED,
        Status.KILLED,
        Status.PENDING_DELETE,
    }


def test_age_zero_purges_everything_deleted_so_far(sql_registry):
    image = make_image(sql_registry)
    delete(sql_registry, image.id, days_ago=0.001)
    assert sql_registry.purge(utcnow())["images"] == 1


def test_a_purged_id_is_never_used_again(sql_registry):
    image = make_image(sql_registry)
    delete(sql_registry, image.id, days_ago=31)
    with pytest.raises(DuplicateImage) as deleted:
        sql_registry.create_image(Image(id=image.id, name="reuse"))
    sql_registry.purge(month_ago())

    with pytest.raises(DuplicateImage) as purged:
        sql_registry.create_image(Image(id=image.id, name="reuse"))
    assert str(purged.value) == str(deleted.value) == f"An image with identifier {image.id} already exists"
    assert purged.value.image_id == image.id
    with pytest.raises(ImageNotFound):
        sql_registry.get_image(image.id, include_deleted=True)
    # Refused whole: nothing of the attempt is left behind.
    assert rows(sql_registry, ImageRow, ImageRow.id == image.id) == 0


def test_the_tombstone_keeps_only_the_id_and_when(sql_registry):
    image = make_image(sql_registry)
    delete(sql_registry, image.id, days_ago=31)
    before = utcnow().replace(microsecond=0)
    sql_registry.purge(month_ago())
    with Session(sql_registry.engine) as session:
        [tombstone] = session.scalars(select(TombstoneRow)).all()
    assert tombstone.id == image.id
    assert before <= tombstone.purged_at <= utcnow()
    assert [c.name for c in TombstoneRow.__table__.columns] == ["id", "purged_at"]


def test_max_rows_limits_each_run_oldest_first(sql_registry):
    images = [make_image(sql_registry) for _ in range(5)]
    for age, image in enumerate(images):
        delete(sql_registry, image.id, days_ago=100 - age)  # images[0] the oldest
    assert sql_registry.purge(month_ago(), 2)["images"] == 2
    assert rows(sql_registry, ImageRow) == 3
    assert sql_registry.get_image(images[2].id, include_deleted=True)
    with pytest.raises(ImageNotFound):
        sql_registry.get_image(images[1].id, include_deleted=True)
    assert sql_registry.purge(month_ago(), 2)["images"] == 2
    assert sql_registry.purge(month_ago(), 2)["images"] == 1
    assert sql_registry.purge(month_ago(), 2) == removed()
    assert sql_registry.purge(month_ago(), 0) == removed()


def test_max_rows_limits_removed_memberships_apart_from_images(sql_registry):
    live = make_image(sql_registry, members=("p2", "p3", "p4", "p5"))
    for member in ("p2", "p3", "p4"):
        remove_member(sql_registry, live.id, member, days_ago=40)
    gone = make_image(sql_registry, members=("p6", "p7", "p8"))
    delete(sql_registry, gone.id, days_ago=40)
    # The purged image's three members go with it, whatever max_rows says.
    assert sql_registry.purge(month_ago(), 1) == removed(
        images=1, image_properties=2, image_tags=2, image_members=3 + 1
    )
    assert sql_registry.purge(month_ago(), 5) == removed(image_members=2)
    assert rows(sql_registry, MemberRow) == 1
    assert [m.member_id for m in sql_registry.list_members(live.id)] == ["p5"]


def test_removed_memberships_go_when_old_and_can_be_added_again(sql_registry):
    image = make_image(sql_registry, members=("p2", "p3", "p4"))
    remove_member(sql_registry, image.id, "p2", days_ago=40)
    remove_member(sql_registry, image.id, "p3", days_ago=10)
    assert sql_registry.purge(month_ago()) == removed(image_members=1)
    assert rows(sql_registry, MemberRow, MemberRow.image_id == image.id) == 2  # p3 removed, p4
    assert sql_registry.add_member(image.id, "p2").status == "pending"
    assert sql_registry.add_member(image.id, "p3").status == "pending"
    assert sorted(m.member_id for m in sql_registry.list_members(image.id)) == ["p2", "p3", "p4"]


def test_each_batch_is_a_transaction_of_its_own(sql_registry, monkeypatch):
    monkeypatch.setattr(sql_registry, "purge_batch", 2)
    for _ in range(5):
        delete(sql_registry, make_image(sql_registry).id, days_ago=40)
    commits = []

    def count(conn) -> None:
        commits.append(conn)

    event.listen(sql_registry.write_engine, "commit", count)
    try:
        assert sql_registry.purge(month_ago())["images"] == 5
    finally:
        event.remove(sql_registry.write_engine, "commit", count)
    # images 2 + 2 + 1, then one batch that finds no membership and one that finds no task
    assert len(commits) == 3 + 1 + 1


@pytest.mark.parametrize("max_rows", [-1, 1.5, "3", True])
def test_bad_max_rows_are_invalid(sql_registry, max_rows):
    image = make_image(sql_registry)
    delete(sql_registry, image.id, days_ago=40)
    with pytest.raises(Invalid):
        sql_registry.purge(month_ago(), max_rows)
    assert rows(sql_registry, ImageRow) == 1


def test_an_aware_cutoff_means_the_same_moment(sql_registry):
    image = make_image(sql_registry)
    delete(sql_registry, image.id, days_ago=2)
    in_berlin = datetime.timezone(datetime.timedelta(hours=1))

    def days_ago_in_berlin(days: int) -> datetime.datetime:
        return (utcnow() - days * DAYS).replace(tzinfo=datetime.timezone.utc).astimezone(in_berlin)

    assert sql_registry.purge(days_ago_in_berlin(3)) == removed()
    assert sql_registry.purge(days_ago_in_berlin(1))["images"] == 1


def test_concurrent_purges_remove_each_row_once(sql_registry):
    images = [make_image(sql_registry, members=("p2",)) for _ in range(12)]
    for image in images:
        delete(sql_registry, image.id, days_ago=40)
    results: list[dict] = []
    failures: list[str] = []
    start = threading.Barrier(3)

    def run() -> None:
        try:
            start.wait()
            results.append(sql_registry.purge(month_ago(), None))
        except Exception:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    assert sum(r["images"] for r in results) == 12
    assert sum(r["image_members"] for r in results) == 12
    assert rows(sql_registry, ImageRow) == 0
    assert rows(sql_registry, TombstoneRow) == 12


# -- abbild.purge: the loop of the command and the periodic task ------------------------------


def test_the_loop_asks_in_chunks_and_keeps_to_max_rows(sql_registry, monkeypatch):
    monkeypatch.setattr(purging, "CHUNK", 2)
    live = make_image(sql_registry, members=[f"m{i}" for i in range(6)])
    for i in range(6):
        remove_member(sql_registry, live.id, f"m{i}", days_ago=40)
    for _ in range(7):
        delete(sql_registry, make_image(sql_registry).id, days_ago=40)

    counts = purging.purge(sql_registry, month_ago(), max_rows=5)
    assert (counts["images"], counts["image_members"]) == (5, 5)
    counts = purging.purge(sql_registry, month_ago())
    assert (counts["images"], counts["image_members"]) == (2, 1)
    assert purging.purge(sql_registry, month_ago()) == removed()


def test_the_loop_stops_between_calls_when_asked(sql_registry, monkeypatch):
    monkeypatch.setattr(purging, "CHUNK", 1)
    for _ in range(3):
        delete(sql_registry, make_image(sql_registry).id, days_ago=40)
    stopping = threading.Event()
    calls = []
    real = type(sql_registry).purge

    def purge_then_stop(self, older_than, max_rows=None):
        calls.append(max_rows)
        stopping.set()
        return real(self, older_than, max_rows)

    monkeypatch.setattr(type(sql_registry), "purge", purge_then_stop)
    assert purging.purge(sql_registry, month_ago(), None, stopping)["images"] == 1
    assert calls == [1]


def test_the_periodic_purger_purges_what_is_older_than_its_age(sql_registry):
    old, recent = make_image(sql_registry), make_image(sql_registry)
    delete(sql_registry, old.id, days_ago=8)
    delete(sql_registry, recent.id, days_ago=6)
    assert purging.Purger(sql_registry, 7).run(threading.Event())["images"] == 1
    assert sql_registry.get_image(recent.id, include_deleted=True)
    stopped = threading.Event()
    stopped.set()
    assert purging.Purger(sql_registry, 0).run(stopped) == removed()


@pytest.mark.parametrize("days", [-1, purging.MAX_AGE_IN_DAYS + 1])
def test_the_purger_refuses_an_age_it_cannot_use(sql_registry, days):
    with pytest.raises(ValueError, match="a whole number of days from 0 to 365000"):
        purging.Purger(sql_registry, days)
