"""The ``sql`` registry, run against SQLite, MariaDB and PostgreSQL (``sql_registry``)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import operator
import random
import time
import uuid

import pytest
from sqlalchemy import delete as delete_rows
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from abbild.db import registry as db_registry
from abbild.db.models import ChildrenRow, ImageRow, MemberRow, PropertyRow, TagRow
from abbild.db.registry import SQLRegistry, make_engine
from abbild.errors import (
    ConcurrentUpdate,
    DuplicateImage,
    ImageNotFound,
    Invalid,
    InvalidTransition,
    RegistryUnavailable,
)
from abbild.image import Image, Location, Status
from abbild.registry import SORT_KEYS, ImageFilters, Registry, Viewer

BASE_TIME = datetime.datetime(2024, 5, 1, 12, 0, 0)
EVERYTHING = ImageFilters(os_hidden=None)


def image_id(name: str) -> str:
    """A stable id per name, so expectations can be written as names."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"abbild-test/{name}"))


def make_image(name: str | None = None, **fields) -> Image:
    fields.setdefault("id", image_id(name) if name else str(uuid.uuid4()))
    return Image(name=name, **fields)


def write_rows(registry, rows) -> None:
    """Write rows behind the registry's back, in one transaction: columns it owns
    (``created_at``, ...) or tables it has no API for yet (members)."""
    with Session(registry.engine) as session, session.begin():
        session.add_all(rows)


def set_times(registry, times: dict[str, tuple[datetime.datetime, datetime.datetime]]) -> None:
    """Set ``(created_at, updated_at)`` per image id."""
    with Session(registry.engine) as session, session.begin():
        rows = [{"id": id_, "created_at": created, "updated_at": updated} for id_, (created, updated) in times.items()]
        session.execute(update(ImageRow), rows)
        for child in (PropertyRow, TagRow, MemberRow):  # their copies of created_at
            for id_, (created, _) in times.items():
                session.execute(update(child).where(child.image_id == id_).values(image_created_at=created))


def delete(registry, image_id_: str) -> Image:
    return registry.update_image(image_id_, lambda image: image.transition(Status.DELETED))


def names(images) -> list:
    return [image.name for image in images]


def list_names(registry, filters=EVERYTHING, viewer=None) -> set:
    found = names(registry.list_images(filters, [], 1000, viewer=viewer))
    assert len(found) == len(set(found)), "an image was listed twice"
    return set(found)


# -- create / get -----------------------------------------------------------------------


def full_image() -> Image:
    return Image(
        id=str(uuid.uuid4()),
        name="Ubuntu 24.04 ✓ ümlaut 𝔘",
        status=Status.ACTIVE,
        visibility="public",
        protected=True,
        os_hidden=True,
        owner="project-𝔘",
        disk_format="qcow2",
        container_format="bare",
        size=5 * 2**40,
        virtual_size=2**53,
        checksum="0123456789abcdef0123456789abcdef",
        os_hash_algo="sha512",
        os_hash_value="ab" * 64,
        min_disk=40,
        min_ram=4096,
        deleted_at=None,
        tags={"Ubuntu", "ubuntu", "日本語", "t" * 255, "𝔘" * 255, "🐧"},
        properties={
            "n" * 255: "name at the limit",
            "N" * 255: "differs only in case",
            "ü" * 254 + "𝔘": "multi-byte name at the limit",
            "hw_ünïcode_𝔘": "välue ✓ 𝔘",
            "long": "lorem ipsum ü𝔘 " * 2000,
            "empty": "",
        },
        locations=[
            Location(
                "file", "file:///var/lib/abbild/x", 5 * 2**40, "active", {"k": "v", "nested": {"n": [1, 2.5, None]}}
            ),
            Location("s3", "s3://bucket/ü/" + "x" * 2000, None, "pending", {}),
        ],
        upload_worker="worker-𝔘:1234",
        upload_lease=datetime.datetime(2030, 1, 2, 3, 4, 5),
    )


def test_create_get_round_trip(sql_registry):
    image = full_image()
    created = sql_registry.create_image(image)
    assert created.version == 1
    fetched = sql_registry.get_image(image.id)
    assert fetched == created
    # Everything but the registry's own bookkeeping is what was handed in.
    image.created_at, image.updated_at, image.version = created.created_at, created.updated_at, 1
    assert fetched == image


def test_times_read_back_as_naive_utc_seconds(sql_registry):
    """What the registry returns is what every database reads back: MariaDB keeps no
    fractions of a second, and the columns have no time zone."""
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    lease = datetime.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus2)
    created = sql_registry.create_image(make_image("x", upload_lease=lease))
    assert created.upload_lease == datetime.datetime(2030, 1, 2, 1, 4, 5)
    assert created.created_at.microsecond == 0 and created.created_at.tzinfo is None
    assert sql_registry.get_image(created.id) == created
    created.upload_lease = lease.replace(hour=9, microsecond=999999)
    created.deleted_at = datetime.datetime(2031, 1, 1, 0, 0, 0, 1)
    saved = sql_registry.save_image(created)
    assert saved.upload_lease == datetime.datetime(2030, 1, 2, 7, 4, 5)
    assert saved.deleted_at == datetime.datetime(2031, 1, 1)
    assert sql_registry.get_image(created.id) == saved


def test_create_minimal_image_round_trip(sql_registry):
    created = sql_registry.create_image(Image(id=str(uuid.uuid4())))
    assert sql_registry.get_image(created.id) == created
    assert (created.name, created.size, created.tags, created.properties, created.locations) == (
        None,
        None,
        set(),
        {},
        [],
    )


def test_create_does_not_modify_its_argument(sql_registry):
    image = make_image("x")
    before = image.copy()
    sql_registry.create_image(image)
    assert image == before


def test_duplicate_id(sql_registry):
    first = sql_registry.create_image(make_image("first", tags={"a"}))
    with pytest.raises(DuplicateImage) as info:
        sql_registry.create_image(Image(id=first.id, name="second", tags={"b"}, properties={"p": "v"}))
    assert info.value.image_id == first.id
    assert sql_registry.get_image(first.id) == first


def test_deleted_ids_are_never_reused(sql_registry):
    image = sql_registry.create_image(make_image("gone"))
    delete(sql_registry, image.id)
    with pytest.raises(DuplicateImage):
        sql_registry.create_image(make_image("gone"))


def test_get_missing(sql_registry):
    with pytest.raises(ImageNotFound) as info:
        sql_registry.get_image("no-such-image")
    assert info.value.image_id == "no-such-image"


# test_registry_http.py leaves these out: they are about the SQL registry's own connections.
SQL_ONLY_TESTS = {
    "test_a_database_out_of_reach_says_the_registry_is_unavailable",
    "test_connections_the_database_server_closed_are_replaced",
    "test_connections_closed_moments_after_use_fail_one_request_at_most",
}


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-directory/abbild.db",
        "mysql+pymysql://root@127.0.0.1:1/abbild",
        "postgresql+psycopg://postgres@127.0.0.1:1/abbild",
    ],
    ids=["sqlite", "mariadb", "postgresql"],
)
def test_a_database_out_of_reach_says_the_registry_is_unavailable(url):
    registry = SQLRegistry(url=url)
    try:
        with pytest.raises(RegistryUnavailable):
            registry.get_image(image_id("any"))
        with pytest.raises(RegistryUnavailable):
            registry.list_images(EVERYTHING, [], 10)
        with pytest.raises(RegistryUnavailable):
            registry.create_image(make_image("lost"))
    finally:
        registry.close()


@contextlib.contextmanager
def server_closed_connections(registry: SQLRegistry):
    """End every other connection to the registry's database, as its server's restart
    would; afterwards the registry's pool starts afresh, so the next test does not pay
    for this one's restart."""
    dialect = registry.engine.dialect.name
    if dialect == "sqlite":
        pytest.skip("SQLite has no server to close connections")
    others = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        if dialect == "postgresql"
        else "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
    )
    # PostgreSQL's waits (up to 5 s) until the connection's process has ended.
    kill = "SELECT pg_terminate_backend({}, 5000)" if dialect == "postgresql" else "KILL {}"
    admin = make_engine(registry.url)
    try:
        with admin.connect() as conn:
            pids = conn.exec_driver_sql(others).scalars().all()
            assert pids, "the registry's pool holds no connection"
            for pid in pids:
                conn.exec_driver_sql(kill.format(pid))
    finally:
        admin.dispose()
    try:
        yield
    finally:
        registry.engine.dispose()


def test_connections_the_database_server_closed_are_replaced(sql_registry, monkeypatch):
    """A pooled connection idle for PING_AFTER_IDLE seconds is checked before use."""
    image = sql_registry.create_image(make_image("kept", properties={"p": "v"}))
    assert sql_registry.get_image(image.id) == image
    monkeypatch.setattr(db_registry, "PING_AFTER_IDLE", 0.0)
    with server_closed_connections(sql_registry):
        made = sql_registry.create_image(make_image("made"))
        assert sql_registry.get_image(image.id) == image
        assert sorted(names(sql_registry.list_images(EVERYTHING, [], 10))) == ["kept", "made"]
        assert sql_registry.get_image(made.id) == made


@pytest.mark.parametrize("first", ["read", "write"])
def test_connections_closed_moments_after_use_fail_one_request_at_most(sql_registry, monkeypatch, first):
    """Connections used moments ago go to work unchecked: after the server closed
    them, the first request fails, and the pool replaces all of them at once."""
    image = sql_registry.create_image(make_image("kept"))
    held = [sql_registry.engine.connect() for _ in range(3)]  # the pool keeps three at least
    for conn in held:
        conn.close()
    monkeypatch.setattr(db_registry, "PING_AFTER_IDLE", 3600.0)
    made, failed = [], []
    with server_closed_connections(sql_registry):
        for n in range(8):
            try:
                if (n % 2 == 0) == (first == "read"):
                    assert sql_registry.get_image(image.id) == image
                else:
                    made.append(sql_registry.create_image(make_image(f"made-{n}")).name)
            except RegistryUnavailable:
                failed.append(n)
    assert len(failed) <= 1, failed
    assert sorted(names(sql_registry.list_images(EVERYTHING, [], 10))) == sorted(["kept", *made])


def test_deleted_image_is_hidden(sql_registry):
    sql_registry.create_image(make_image("kept"))
    gone = sql_registry.create_image(make_image("gone", properties={"p": "v"}, tags={"t"}))
    deleted = delete(sql_registry, gone.id)
    assert deleted.status is Status.DELETED and deleted.deleted_at is not None
    with pytest.raises(ImageNotFound):
        sql_registry.get_image(gone.id)
    assert sql_registry.get_image(gone.id, include_deleted=True) == deleted
    assert list_names(sql_registry) == {"kept"}
    assert list_names(sql_registry, ImageFilters(os_hidden=None, values={"status": ["deleted"]})) == set()
    assert sql_registry.images_in_status("deleted") == []


def test_killed_image_is_readable_but_never_listed(sql_registry):
    killed = sql_registry.create_image(make_image("killed", status=Status.KILLED))
    sql_registry.create_image(make_image("alive"))
    assert sql_registry.get_image(killed.id) == killed
    assert list_names(sql_registry) == {"alive"}
    assert list_names(sql_registry, ImageFilters(os_hidden=None, values={"status": ["killed"]})) == set()


# -- save_image / update_image ----------------------------------------------------------

LOC_A = Location("file", "file:///a", 1, "active", {"a": 1})
LOC_B = Location("s3", "s3://b", 2, "active", {"b": [2]})
LOC_C = Location("rbd", "rbd://c", None, "pending", {})


CHILD_CHANGES = {
    "add property": lambda i: i.properties.update(new="ünï"),
    "remove property": lambda i: i.properties.pop("a"),
    "change property": lambda i: i.properties.update(a="changed"),
    "property case only": lambda i: i.properties.update(A="upper"),
    "remove every property": lambda i: i.properties.clear(),
    "add tag": lambda i: i.tags.add("z"),
    "add tag differing in case": lambda i: i.tags.add("X"),
    "remove tag": lambda i: i.tags.discard("x"),
    "replace tags": lambda i: setattr(i, "tags", {"p", "q"}),
    "add location": lambda i: i.locations.append(LOC_C),
    "remove location": lambda i: i.locations.pop(0),
    "reorder locations": lambda i: i.locations.reverse(),
    "change location metadata": lambda i: i.locations[1].metadata.update(new=True),
    "change location status": lambda i: setattr(i.locations[0], "status", "deleted"),
    "everything": lambda i: [
        i.properties.pop("b"),
        i.properties.update(a="2", c="3"),
        i.tags.symmetric_difference_update({"x", "w"}),
        i.locations.insert(1, LOC_C),
    ],
    "scalars only": lambda i: [setattr(i, "name", "renamed"), setattr(i, "size", 7), setattr(i, "min_ram", 512)],
}


def _with_children(name: str) -> Image:
    return make_image(name, properties={"a": "1", "b": "2"}, tags={"x", "y"}, locations=[LOC_A, LOC_B])


@pytest.mark.parametrize("change", CHILD_CHANGES.values(), ids=CHILD_CHANGES.keys())
def test_save_writes_children_difference(sql_registry, change):
    image = sql_registry.create_image(_with_children("target"))
    bystander = sql_registry.create_image(_with_children("bystander"))
    expected = image.copy()
    change(expected)
    assert expected != image
    saved = sql_registry.save_image(expected)
    assert saved.version == image.version + 1
    assert saved.updated_at >= image.updated_at
    expected.version, expected.updated_at = saved.version, saved.updated_at
    assert saved == expected
    assert sql_registry.get_image(image.id) == expected
    assert sql_registry.get_image(bystander.id) == bystander


def test_save_twice_in_a_row(sql_registry):
    image = sql_registry.create_image(_with_children("x"))
    for n in range(3):
        image.properties[f"p{n}"] = str(n)
        image = sql_registry.save_image(image)
    assert sql_registry.get_image(image.id) == image
    assert image.version == 4


def test_save_stale_version(sql_registry):
    created = sql_registry.create_image(_with_children("x"))
    first, second = sql_registry.get_image(created.id), sql_registry.get_image(created.id)
    first.tags.add("first")
    stored = sql_registry.save_image(first)
    second.tags.add("second")
    second.properties["a"] = "second"
    with pytest.raises(ConcurrentUpdate) as info:
        sql_registry.save_image(second)
    assert info.value.image_id == created.id
    assert sql_registry.get_image(created.id) == stored


@pytest.mark.parametrize("missing", ["never created", "deleted"])
def test_save_missing_image(sql_registry, missing):
    image = make_image("x")
    if missing == "deleted":
        image = sql_registry.create_image(image)
        delete(sql_registry, image.id)
        image = sql_registry.get_image(image.id, include_deleted=True)
    image.name = "resurrected"
    with pytest.raises(ImageNotFound):
        sql_registry.save_image(image)


def test_save_status_as_plain_string(sql_registry):
    image = sql_registry.create_image(make_image("x"))
    image.status = "deleted"
    saved = sql_registry.save_image(image)
    assert saved.status is Status.DELETED and saved.deleted_at is not None
    with pytest.raises(ImageNotFound):
        sql_registry.get_image(image.id)


def test_generic_update_retries_on_conflict(sql_registry):
    """The base class's optimistic loop over ``save_image`` (for registries that cannot
    lock): a conflict makes it run *change* again on the fresh image."""
    image = sql_registry.create_image(make_image("x"))
    seen = []

    def change(current: Image) -> None:
        seen.append(current.version)
        if len(seen) == 1:  # someone else writes between our read and our write
            sql_registry.update_image(image.id, lambda other: other.tags.add("other"))
        current.tags.add("mine")

    result = Registry.update_image(sql_registry, image.id, change)
    assert seen == [1, 2]
    assert result.tags == {"other", "mine"} and result.version == 3
    assert sql_registry.get_image(image.id) == result


def test_generic_update_gives_up(sql_registry):
    image = sql_registry.create_image(make_image("x"))
    calls = []

    def always_conflicting(current: Image) -> None:
        calls.append(current.version)
        sql_registry.update_image(image.id, lambda other: other.tags.add(f"other{len(calls)}"))

    started = time.monotonic()
    with pytest.raises(ConcurrentUpdate):
        # Long enough for a second attempt on a loaded machine (0.3 s once saw one).
        Registry.update_image(sql_registry, image.id, always_conflicting, within=1.0)
    assert time.monotonic() - started >= 1.0
    assert len(calls) >= 2 and calls == sorted(calls) and len(set(calls)) == len(calls)


def test_update_image_runs_change_once_on_latest(sql_registry):
    image = sql_registry.create_image(_with_children("x"))
    stale = image.copy()
    sql_registry.save_image(image)
    seen = []
    result = sql_registry.update_image(image.id, lambda current: [seen.append(current.copy()), current.tags.add("t")])
    assert [i.version for i in seen] == [2]
    assert result.version == 3 and result.tags == stale.tags | {"t"}
    assert sql_registry.get_image(image.id) == result
    with pytest.raises(ConcurrentUpdate):
        sql_registry.save_image(stale)


@pytest.mark.parametrize(
    "write",
    [
        lambda r, i: r.update_image(i, lambda other: None),
        lambda r, i: r.save_image(r.get_image(i)),
        lambda r, i: r.create_image(make_image("other")),
    ],
    ids=["update_image", "save_image", "create_image"],
)
def test_change_must_not_write_through_the_registry(sql_registry, write):
    """It would wait for the lock held by the update around it."""
    image = sql_registry.create_image(make_image("x"))
    with pytest.raises(RuntimeError, match="must not write"):
        sql_registry.update_image(image.id, lambda current: [current.tags.add("t"), write(sql_registry, image.id)])
    assert sql_registry.get_image(image.id) == image
    assert sql_registry.update_image(image.id, lambda current: current.tags.add("t")).tags == {"t"}


def test_update_image_aborts_when_change_raises(sql_registry):
    image = sql_registry.create_image(make_image("x", status=Status.ACTIVE))
    with pytest.raises(InvalidTransition):
        sql_registry.update_image(image.id, lambda i: [i.tags.add("t"), i.transition(Status.IMPORTING)])
    assert sql_registry.get_image(image.id) == image


def test_update_missing_image(sql_registry):
    with pytest.raises(ImageNotFound):
        sql_registry.update_image("no-such-image", lambda i: None)


# -- case and exact matching ------------------------------------------------------------


def test_tags_and_names_are_case_sensitive(sql_registry):
    sql_registry.create_image(make_image("Ubuntu", tags={"Ubuntu", "ubuntu"}, properties={"os": "Ubuntu", "OS": "x"}))
    sql_registry.create_image(make_image("ubuntu", tags={"ubuntu"}, properties={"os": "ubuntu"}))
    assert sql_registry.get_image(image_id("Ubuntu")).tags == {"Ubuntu", "ubuntu"}
    assert sql_registry.get_image(image_id("Ubuntu")).properties == {"os": "Ubuntu", "OS": "x"}
    for value in ("Ubuntu", "ubuntu"):
        assert list_names(sql_registry, ImageFilters(values={"name": [value]})) == {value}
        assert list_names(sql_registry, ImageFilters(properties={"os": value})) == {value}
    assert list_names(sql_registry, ImageFilters(tags=["Ubuntu"])) == {"Ubuntu"}
    assert list_names(sql_registry, ImageFilters(tags=["ubuntu"])) == {"Ubuntu", "ubuntu"}
    assert list_names(sql_registry, ImageFilters(values={"name": ["UBUNTU"]})) == set()


def test_owner_is_case_sensitive(sql_registry):
    sql_registry.create_image(make_image("upper", owner="Project", visibility="private"))
    sql_registry.create_image(make_image("lower", owner="project", visibility="private"))
    assert list_names(sql_registry, ImageFilters(owner="project")) == {"lower"}
    assert list_names(sql_registry, viewer=Viewer("project")) == {"lower"}


# -- list filters -----------------------------------------------------------------------

# name -> fields; created_at/updated_at are set from the position (see ``catalog``).
CATALOG = {
    "alpha": dict(
        status=Status.ACTIVE,
        disk_format="qcow2",
        container_format="bare",
        size=100,
        owner="p1",
        checksum="c1",
        os_hash_value="h1",
        tags={"web", "prod"},
        protected=True,
        properties={"os_distro": "ubuntu", "arch": "x86_64"},
    ),
    "beta": dict(
        status=Status.ACTIVE,
        disk_format="raw",
        container_format="bare",
        size=200,
        owner="p2",
        checksum="c2",
        os_hash_value="h2",
        tags={"web"},
        properties={"os_distro": "Ubuntu"},
    ),
    "gamma": dict(status=Status.QUEUED, owner="p1", tags={"Web"}, properties={"arch": "x86_64"}),
    "delta": dict(
        status=Status.SAVING,
        disk_format="iso",
        container_format="ovf",
        size=300,
        visibility="public",
        properties={"os_distro": "ubuntu", "arch": "aarch64"},
    ),
    "hidden": dict(
        status=Status.ACTIVE,
        disk_format="raw",
        container_format="bare",
        size=200,
        owner="p2",
        os_hidden=True,
        tags={"web"},
    ),
    "epsilon": dict(status=Status.DEACTIVATED, disk_format="vmdk", container_format="bare", size=0, owner="p3"),
    "killed": dict(status=Status.KILLED, owner="p1", tags={"web"}),
}
LISTED = set(CATALOG) - {"killed"}
SHOWN = LISTED - {"hidden"}


def created_time(name: str) -> datetime.datetime:
    return BASE_TIME + datetime.timedelta(hours=list(CATALOG).index(name))


def updated_time(name: str) -> datetime.datetime:
    return BASE_TIME + datetime.timedelta(days=1, minutes=len(CATALOG) - list(CATALOG).index(name))


@pytest.fixture
def catalog(sql_registry):
    for name, fields in CATALOG.items():
        sql_registry.create_image(make_image(name, **fields))
    set_times(sql_registry, {image_id(name): (created_time(name), updated_time(name)) for name in CATALOG})
    gone = sql_registry.create_image(make_image("deleted", tags={"web"}, properties={"os_distro": "ubuntu"}))
    delete(sql_registry, gone.id)
    return sql_registry


FILTER_CASES = {
    "default hides os_hidden": (ImageFilters(), SHOWN),
    "os_hidden None shows all": (ImageFilters(os_hidden=None), LISTED),
    "os_hidden True": (ImageFilters(os_hidden=True), {"hidden"}),
    "name": (ImageFilters(values={"name": ["alpha"]}), {"alpha"}),
    "name in": (ImageFilters(values={"name": ["alpha", "gamma", "nope"]}), {"alpha", "gamma"}),
    "name no match": (ImageFilters(values={"name": ["alph"]}), set()),
    "id in": (ImageFilters(values={"id": [image_id("beta"), image_id("delta")]}), {"beta", "delta"}),
    "status": (ImageFilters(values={"status": ["active"]}), {"alpha", "beta"}),
    "status in": (ImageFilters(values={"status": ["queued", "saving", "killed"]}), {"gamma", "delta"}),
    "container_format": (ImageFilters(values={"container_format": ["ovf"]}), {"delta"}),
    "disk_format in": (ImageFilters(values={"disk_format": ["qcow2", "raw"]}), {"alpha", "beta"}),
    "two columns": (ImageFilters(values={"disk_format": ["qcow2", "raw"], "name": ["beta", "gamma"]}), {"beta"}),
    "owner": (ImageFilters(owner="p1"), {"alpha", "gamma"}),
    "size_min inclusive": (ImageFilters(size_min=200), {"beta", "delta"}),
    "size_max inclusive": (ImageFilters(size_max=200), {"alpha", "beta", "epsilon"}),
    "size range": (ImageFilters(size_min=150, size_max=250), {"beta"}),
    "size_max 0": (ImageFilters(size_max=0), {"epsilon"}),
    "checksum": (ImageFilters(checksum="c2"), {"beta"}),
    "os_hash_value": (ImageFilters(os_hash_value="h1"), {"alpha"}),
    "tag": (ImageFilters(tags=["web"]), {"alpha", "beta"}),
    "tags AND": (ImageFilters(tags=["web", "prod"]), {"alpha"}),
    "tag case": (ImageFilters(tags=["Web"]), {"gamma"}),
    "tags AND none": (ImageFilters(tags=["prod", "Web"]), set()),
    "protected": (ImageFilters(protected=True), {"alpha"}),
    "not protected": (ImageFilters(protected=False), SHOWN - {"alpha"}),
    "property": (ImageFilters(properties={"os_distro": "ubuntu"}), {"alpha", "delta"}),
    "property case": (ImageFilters(properties={"os_distro": "Ubuntu"}), {"beta"}),
    "properties AND": (ImageFilters(properties={"os_distro": "ubuntu", "arch": "x86_64"}), {"alpha"}),
    "property name is not value": (ImageFilters(properties={"arch": "ubuntu"}), set()),
    "visibility public": (ImageFilters(visibility="public"), {"delta"}),
    "visibility shared": (ImageFilters(visibility="shared"), SHOWN - {"delta"}),
    "visibility all": (ImageFilters(visibility="all"), SHOWN),
    "everything at once": (
        ImageFilters(
            values={"status": ["active"]},
            owner="p1",
            size_min=100,
            size_max=100,
            checksum="c1",
            tags=["web"],
            protected=True,
            properties={"arch": "x86_64"},
        ),
        {"alpha"},
    ),
}


@pytest.mark.parametrize("filters,expected", FILTER_CASES.values(), ids=FILTER_CASES.keys())
def test_filter(catalog, filters, expected):
    assert list_names(catalog, filters) == expected


TAG_AND_PROPERTY_CASES = {name: case for name, case in FILTER_CASES.items() if case[0].tags or case[0].properties}


@pytest.mark.parametrize("few", [0, 1, 1000], ids=["each image tested", "the rarest drives", "any could drive"])
@pytest.mark.parametrize("filters,expected", TAG_AND_PROPERTY_CASES.values(), ids=TAG_AND_PROPERTY_CASES.keys())
def test_tag_and_property_filters_whichever_drives(catalog, monkeypatch, few, filters, expected):
    """A tag or property filter that few images match drives the page (its images are
    read first); one that many match is tested on each image read in sort order. Both
    find the same images."""
    monkeypatch.setattr(db_registry, "FEW_TO_DRIVE", few)
    assert list_names(catalog, filters) == expected


def test_a_rare_tag_drives_a_projects_pages_and_keeps_their_order(sql_registry, monkeypatch):
    """A project's parts (public, its own, shared with it) each driven by a rare tag,
    paged by markers: the same pages, in the same order, as when each image is tested."""
    for n in range(12):
        image = make_image(f"img-{n:02d}", tags={"rare"} if n % 3 else {"other"}, owner=("me", "other")[n % 2])
        image.visibility = ("public", "private", "shared")[n % 3] if n % 2 else ("private", "public")[n % 4 // 2]
        sql_registry.create_image(image)
        if image.visibility == "shared":
            sql_registry.add_member(image.id, "me")
            sql_registry.set_member_status(image.id, "me", "accepted")

    def pages() -> list[list[str]]:
        found, marker = [], None
        while True:
            page = sql_registry.list_images(
                ImageFilters(tags=["rare"]), [("name", "asc")], 2, marker=marker, viewer=Viewer("me")
            )
            if not page:
                return found
            found.append(names(page))
            marker = page[-1].id

    monkeypatch.setattr(db_registry, "FEW_TO_DRIVE", 0)
    tested = pages()
    monkeypatch.setattr(db_registry, "FEW_TO_DRIVE", 1000)
    driven = pages()
    assert driven == tested and len(tested) >= 3
    listed = [name for page in tested for name in page]
    assert listed == sorted(listed) and "img-00" not in listed


TIME_OPS = {
    "gt": operator.gt,
    "gte": operator.ge,
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
}


@pytest.mark.parametrize("op", TIME_OPS)
@pytest.mark.parametrize("column,timeof", [("created_at", created_time), ("updated_at", updated_time)])
def test_time_filter(catalog, column, timeof, op):
    pivot = timeof("gamma")
    expected = {name for name in SHOWN if TIME_OPS[op](timeof(name), pivot)}
    assert expected not in (set(), SHOWN)
    assert list_names(catalog, ImageFilters(times=[(column, op, pivot)])) == expected


def test_time_filters_combine(catalog):
    times = [("created_at", "gte", created_time("beta")), ("updated_at", "gt", updated_time("delta"))]
    assert list_names(catalog, ImageFilters(times=times)) == {"beta", "gamma"}


def test_time_filter_with_time_zone(catalog):
    pivot = created_time("gamma").replace(tzinfo=datetime.timezone.utc)
    elsewhere = pivot.astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
    assert list_names(catalog, ImageFilters(times=[("created_at", "eq", elsewhere)])) == {"gamma"}
    assert list_names(catalog, ImageFilters(times=[("created_at", "lt", elsewhere)])) == {"alpha", "beta"}


@pytest.mark.parametrize(
    "filters",
    [
        ImageFilters(values={"tags": ["x"]}),
        ImageFilters(times=[("size", "eq", BASE_TIME)]),
        ImageFilters(times=[("created_at", "like", BASE_TIME)]),
    ],
    ids=["in filter on a non-column", "time filter on a non-time", "unknown time operator"],
)
def test_invalid_filters(catalog, filters):
    with pytest.raises(Invalid):
        catalog.list_images(filters, [], 10)


# -- visibility (GLANCE-API.md 7.4) -------------------------------------------------------

ME = "me"
# name -> (visibility, owner, [(member, status, deleted)])
SCOPED = {
    "public": ("public", "other", []),
    "community other": ("community", "other", []),
    "community mine": ("community", ME, []),
    "shared mine": ("shared", ME, [("other", "pending", False)]),
    "shared accepted": ("shared", "other", [(ME, "accepted", False), ("third", "rejected", False)]),
    "shared pending": ("shared", "other", [(ME, "pending", False)]),
    "shared rejected": ("shared", "other", [(ME, "rejected", False)]),
    "shared member deleted": ("shared", "other", [(ME, "accepted", True)]),
    "shared someone else": ("shared", "other", [("third", "accepted", False)]),
    "shared no members": ("shared", "other", []),
    "private mine": ("private", ME, []),
    "private other": ("private", "other", []),
    "private member row": ("private", "other", [(ME, "accepted", False)]),
    "private no owner": ("private", None, []),
}
MY_DEFAULT = {"public", "community mine", "shared mine", "shared accepted", "private mine", "private no owner"}


@pytest.fixture
def scoped(sql_registry):
    for name, (visibility, owner, _) in SCOPED.items():
        sql_registry.create_image(make_image(name, visibility=visibility, owner=owner))
    write_rows(
        sql_registry,
        [
            MemberRow(
                image_id=image_id(name),
                member=member,
                status=status,
                deleted=deleted,
                created_at=BASE_TIME,
                updated_at=BASE_TIME,
                image_created_at=sql_registry.get_image(image_id(name)).created_at,
            )
            for name, (_, _, members) in SCOPED.items()
            for member, status, deleted in members
        ],
    )
    return sql_registry


VISIBILITY_CASES = {
    "default": (Viewer(ME), {}, MY_DEFAULT),
    "community": (Viewer(ME), dict(visibility="community"), {"community other", "community mine"}),
    "public": (Viewer(ME), dict(visibility="public"), {"public"}),
    "shared": (Viewer(ME), dict(visibility="shared"), {"shared mine", "shared accepted"}),
    "private": (Viewer(ME), dict(visibility="private"), {"private mine", "private no owner"}),
    "all": (Viewer(ME), dict(visibility="all"), MY_DEFAULT | {"community other"}),
    "pending": (Viewer(ME), dict(member_status="pending"), MY_DEFAULT - {"shared accepted"} | {"shared pending"}),
    "rejected shared": (
        Viewer(ME),
        dict(member_status="rejected", visibility="shared"),
        {"shared mine", "shared rejected"},
    ),
    "any member status": (
        Viewer(ME),
        dict(member_status="all", visibility="shared"),
        {"shared mine", "shared accepted", "shared pending", "shared rejected"},
    ),
    "another project": (Viewer("third"), {}, {"public", "shared someone else", "private no owner"}),
    "another project, rejected": (
        Viewer("third"),
        dict(member_status="rejected"),
        {"public", "shared accepted", "private no owner"},
    ),
    "no project": (Viewer(None), {}, {"public", "private no owner"}),
    # Community images stay out of an administrator's default list too (Glance 33),
    # unless they are the administrator's project's own.
    "admin": (Viewer(is_admin=True), {}, set(SCOPED) - {"community other", "community mine"}),
    "admin of a project": (Viewer(ME, is_admin=True), {}, set(SCOPED) - {"community other"}),
    "admin, community": (Viewer(is_admin=True), dict(visibility="community"), {"community other", "community mine"}),
    "admin, all": (Viewer(is_admin=True), dict(visibility="all"), set(SCOPED)),
    "admin filters": (
        Viewer("x", is_admin=True),
        dict(visibility="private"),
        {"private mine", "private other", "private member row", "private no owner"},
    ),
    "no viewer is admin": (None, dict(visibility="all"), set(SCOPED)),
}


@pytest.mark.parametrize("viewer,filters,expected", VISIBILITY_CASES.values(), ids=VISIBILITY_CASES.keys())
def test_visibility(scoped, viewer, filters, expected):
    assert list_names(scoped, ImageFilters(**filters), viewer=viewer) == expected


@pytest.mark.parametrize("owner", [ME, "other", "third"])
@pytest.mark.parametrize("case", ["default", "shared", "private", "all", "any member status", "another project"])
def test_owner_filter_within_each_scope(scoped, case, owner):
    """An owner filter lists those of the images the scope lists that the owner has,
    whether the owner is the viewer (the viewer's own part alone), another project or
    one the viewer shares nothing with (perhaps none)."""
    viewer, filters, _ = VISIBILITY_CASES[case]
    whole = scoped.list_images(ImageFilters(**filters), [], 100, viewer=viewer)
    expected = {image.name for image in whole if image.owner == owner}
    assert list_names(scoped, ImageFilters(**filters, owner=owner), viewer=viewer) == expected


def test_visibility_and_other_filters_combine(scoped):
    filters = ImageFilters(values={"name": ["public", "private other", "shared accepted"]})
    assert list_names(scoped, filters, viewer=Viewer(ME)) == {"public", "shared accepted"}


@pytest.mark.parametrize("few", [0, 1000], ids=["tested on each image", "driving the page"])
def test_tag_and_property_filters_on_each_part(scoped, monkeypatch, few):
    """A project's tag and property filters hold in each of its parts, the images
    shared with it (whose memberships are tested) included, however they are read."""
    monkeypatch.setattr(db_registry, "FEW_TO_DRIVE", few)
    marks = {"golden": {"public", "shared accepted", "shared pending", "private mine", "private no owner"}}
    marks["silver"] = marks["golden"] - {"shared accepted"}

    for tag, marked in marks.items():
        for name in marked:

            def mark(image, tag=tag):
                image.tags.add(tag)
                image.properties[f"os_{tag}"] = "yes"

            scoped.update_image(image_id(name), mark)
    for tag, marked in marks.items():
        expected = marked & MY_DEFAULT
        assert list_names(scoped, ImageFilters(tags=[tag]), viewer=Viewer(ME)) == expected
        assert list_names(scoped, ImageFilters(properties={f"os_{tag}": "yes"}), viewer=Viewer(ME)) == expected
    assert "shared accepted" in marks["golden"] & MY_DEFAULT


@pytest.mark.parametrize("marker", ["private other", "shared no members"])
def test_marker_invisible_to_viewer(scoped, marker):
    with pytest.raises(Invalid):
        scoped.list_images(ImageFilters(), [], 10, marker=image_id(marker), viewer=Viewer(ME))


@pytest.mark.parametrize("marker", ["shared pending", "community other", "private no owner"])
def test_marker_readable_but_not_listed(scoped, marker):
    """Images the viewer may read but not see listed (a pending member's) still work
    as markers: the page continues after their place."""
    page = scoped.list_images(ImageFilters(), [("name", "desc")], 100, marker=image_id(marker), viewer=Viewer(ME))
    after = names(page)
    assert after == sorted((name for name in MY_DEFAULT if name < marker), reverse=True)
    assert after


# -- sorting and paging ---------------------------------------------------------------

PAGED = 57
# Lowercase ASCII words: they sort alike in every collation (PostgreSQL may use a locale).
NAMES = [None, "alpha", "bravo", "charlie", "delta", "echo"]
SIZES = [None, 0, 1, 1024, 2**33]
STATUSES = [Status.QUEUED, Status.SAVING, Status.ACTIVE, Status.DEACTIVATED, Status.IMPORTING, Status.UPLOADING]
FORMATS = [None, "bare", "ovf", "ami"]


def random_row(rnd: random.Random, **fields) -> ImageRow:
    """A public image row of random sort values, many of them equal or NULL across
    rows; *fields* set others."""
    values = dict(
        id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
        name=rnd.choice(NAMES),
        size=rnd.choice(SIZES),
        status=rnd.choice(STATUSES).value,
        container_format=rnd.choice(FORMATS),
        disk_format=rnd.choice([None, "raw", "qcow2"]),
        os_hidden=False,
        visibility="public",
        protected=False,
        min_disk=0,
        min_ram=0,
        deleted=False,
        version=1,
        created_at=BASE_TIME + datetime.timedelta(minutes=rnd.randrange(8)),
        updated_at=BASE_TIME + datetime.timedelta(seconds=rnd.randrange(20)),
    )
    return ImageRow(**{**values, **fields})


@pytest.fixture
def many(sql_registry):
    """57 images with many equal and NULL sort values, returned as stored. Written as
    rows in one transaction: 57 ``create_image`` commits would dominate the suite."""
    rnd = random.Random(57)
    rows = [random_row(rnd, os_hidden=n % 7 == 0) for n in range(PAGED)]
    write_rows(sql_registry, rows)
    return sql_registry.list_images(EVERYTHING, [], 1000)


def expected_order(images, sort) -> list[str]:
    """Ids of *images* in the order the API promises: NULL is the smallest value, and
    ``created_at`` and ``id`` break ties in the first key's direction (``desc`` without keys)."""
    given = {key for key, _ in sort}
    keys = sort + [(key, sort[0][1] if sort else "desc") for key in ("created_at", "id") if key not in given]

    def value(image, key):
        v = getattr(image, key)
        return (0,) if v is None else (1, v.value if isinstance(v, Status) else v)

    def compare(a, b):
        for key, direction in keys:
            va, vb = value(a, key), value(b, key)
            if va != vb:
                return (-1 if va < vb else 1) * (1 if direction == "asc" else -1)
        return 0

    return [image.id for image in sorted(images, key=functools.cmp_to_key(compare))]


def list_ids(registry, sort, limit=1000, marker=None, filters=EVERYTHING) -> list[str]:
    return [image.id for image in registry.list_images(filters, sort, limit, marker=marker)]


def page_through(registry, sort, limit, filters=EVERYTHING) -> list[str]:
    """Every id, page by page, each page's last id the next marker."""
    ids, marker = [], None
    for _ in range(PAGED // limit + 2):  # bounded: a marker that does not advance must fail, not hang
        page = list_ids(registry, sort, limit, marker, filters)
        assert len(page) <= limit
        if not page:
            return ids
        ids += page
        marker = page[-1]
    pytest.fail(f"paging did not end: {len(ids)} ids so far, {len(set(ids))} distinct")


def test_many_has_ties_and_nulls(many):
    assert len(many) == PAGED
    for key in ("name", "size", "container_format", "created_at", "updated_at"):
        values = [getattr(image, key) for image in many]
        assert len(set(values)) < len(values)
        assert key.endswith("_at") or None in values


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("key", SORT_KEYS)
def test_sort(sql_registry, many, key, direction):
    assert list_ids(sql_registry, [(key, direction)]) == expected_order(many, [(key, direction)])


SORT_COMBOS = [
    [],
    [("created_at", "desc")],
    [("name", "asc")],
    [("name", "desc")],
    [("size", "asc"), ("name", "desc")],
    [("size", "desc"), ("created_at", "asc")],
    [("status", "asc"), ("size", "asc"), ("id", "desc")],
    [("container_format", "desc"), ("disk_format", "asc"), ("name", "asc")],
    [("updated_at", "asc"), ("disk_format", "desc")],
    [("id", "asc")],
]


@pytest.mark.parametrize("sort", SORT_COMBOS, ids=lambda sort: ",".join(f"{k}:{d}" for k, d in sort) or "default")
def test_paging(sql_registry, many, sort):
    one_page = list_ids(sql_registry, sort)
    assert one_page == expected_order(many, sort)
    paged = page_through(sql_registry, sort, 10)
    assert len(paged) == len(set(paged)) == PAGED
    assert paged == one_page


def test_paging_with_filters(sql_registry, many):
    filters = ImageFilters(os_hidden=False, values={"status": ["active", "queued", "saving"]})
    sort = [("name", "asc"), ("size", "desc")]
    expected = list_ids(sql_registry, sort, filters=filters)
    assert 10 < len(expected) < PAGED
    assert page_through(sql_registry, sort, 7, filters) == expected


def test_paging_as_a_project(sql_registry):
    """A project's pages, read from its parts (public, its own, nobody's, shared with
    it), page by page in every order with ties and NULLs, equal its whole list in the
    order the API promises."""
    rnd = random.Random(58)
    rows, members = [], []
    for n in range(PAGED):
        owner = rnd.choice(["me", "me", "other", None])
        visibility = rnd.choice(["public", "private", "shared", "community"])
        row = random_row(rnd, status=Status.ACTIVE.value, visibility=visibility, owner=owner)
        rows.append(row)
        if visibility == "shared" and owner == "other" and n % 3:
            members.append(
                MemberRow(
                    image_id=row.id,
                    member="me",
                    status="accepted",
                    can_share=False,
                    created_at=BASE_TIME,
                    updated_at=BASE_TIME,
                    deleted=False,
                    image_created_at=row.created_at,
                )
            )
    write_rows(sql_registry, rows)
    write_rows(sql_registry, members)
    viewer = Viewer("me")
    visible = sql_registry.list_images(EVERYTHING, [], 1000, viewer=viewer)
    assert {image.owner for image in visible} == {"me", "other", None}
    assert {image.visibility for image in visible} == {"public", "private", "shared", "community"}
    for sort in ([("size", "desc")], [("size", "asc")], [("name", "desc")], [("name", "asc")], []):
        expected = expected_order(visible, sort)
        paged, marker = [], None
        for _ in range(PAGED):
            page = sql_registry.list_images(EVERYTHING, sort, 4, marker=marker, viewer=viewer)
            if not page:
                break
            paged += [image.id for image in page]
            marker = page[-1].id
        assert paged == expected, sort


@pytest.mark.parametrize("few", [0, 1000], ids=["tested on each image", "driving the page"])
def test_filtered_pages_in_created_order(sql_registry, monkeypatch, few):
    """Pages filtered by a tag, a short property value and a long one (longer than
    SHORT_VALUE, which PostgreSQL's ordered index does not hold), a status, names, and
    shared images by member status, in the default order and by created_at ascending,
    with ties: an administrator's and a project's lists hold what they should, and page
    by page the same. On PostgreSQL the tags, properties and memberships are merged
    with the images in that order through their copies of created_at; the shared
    images read from the memberships, or (a filter of names: few images) the other way."""
    monkeypatch.setattr(db_registry, "FEW_TO_DRIVE", few)
    rnd = random.Random(15)
    long_value = "x" * (db_registry.SHORT_VALUE + 1)
    times, images, my_status = {}, [], {}
    for n in range(40):
        owner = rnd.choice(["me", "other", "other", None])
        image = make_image(f"f-{n:02d}", owner=owner, visibility=rnd.choice(["public", "private", "shared"]))
        image.tags = {tag for tag in ("golden", "silver") if rnd.random() < 0.5}
        image.properties = {"os_distro": rnd.choice(["debian", long_value, "fedora"])}
        if n % 5 == 0:
            image.status = Status.ACTIVE
        images.append(sql_registry.create_image(image))
        if image.visibility == "shared" and owner == "other" and n % 4:
            sql_registry.add_member(image.id, "me")
            my_status[image.id] = rnd.choice(["accepted", "accepted", "pending"])
            sql_registry.set_member_status(image.id, "me", my_status[image.id])
        created = BASE_TIME + datetime.timedelta(minutes=n // 3)  # three images a minute
        times[image.id] = (created, created)
    set_times(sql_registry, times)
    some_names = {image.name for image in images[::2]} | {image.name for image in images if image.id in my_status}

    def listed(image, viewer, filters) -> bool:
        shared_with_me = image.visibility == "shared" and image.owner not in ("me", None)
        if filters.visibility == "shared" and image.visibility != "shared":
            return False
        if not viewer.is_admin and image.visibility == "private" and image.owner == "other":
            return False
        if not viewer.is_admin and shared_with_me:
            wanted = my_status.get(image.id)
            if wanted is None or filters.member_status not in ("all", wanted):
                return False
        return (
            set(filters.tags) <= image.tags
            and all(image.properties.get(k) == v for k, v in filters.properties.items())
            and all(getattr(getattr(image, k), "value", getattr(image, k)) in v for k, v in filters.values.items())
        )

    for viewer in (Viewer(is_admin=True), Viewer("me")):
        for filters in (
            ImageFilters(tags=["golden"]),
            ImageFilters(tags=["golden", "silver"]),
            ImageFilters(properties={"os_distro": "debian"}),
            ImageFilters(properties={"os_distro": long_value}),
            ImageFilters(tags=["silver"], properties={"os_distro": "debian"}),
            ImageFilters(values={"status": ["queued"]}),
            ImageFilters(values={"name": sorted(some_names)}),
            ImageFilters(values={"name": sorted(some_names)}, member_status="pending"),
            ImageFilters(visibility="shared", member_status="pending"),
            ImageFilters(visibility="shared", member_status="all", tags=["silver"]),
        ):
            every = sql_registry.list_images(filters, [], 1000, viewer=viewer)
            assert {image.id for image in every} == {image.id for image in images if listed(image, viewer, filters)}
            assert every, filters
            for sort in ([], [("created_at", "asc")]):
                expected = expected_order(every, sort)
                paged, marker = [], None
                while page := sql_registry.list_images(filters, sort, 3, marker=marker, viewer=viewer):
                    paged += [image.id for image in page]
                    marker = page[-1].id
                assert paged == expected, (viewer, filters, sort)


def test_postgresql_pages_are_planned_to_read_in_order(sql_registry):
    """PostgreSQL's planner is kept from the plans that read a list page's every
    candidate: parallel workers, generic plans, hash joins (see make_engine)."""
    if sql_registry.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner settings")
    with sql_registry.engine.connect() as conn:
        settings = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in PLANNER_SETTINGS}
    assert settings == PLANNER_SETTINGS


PLANNER_SETTINGS = {
    "max_parallel_workers_per_gather": "0",
    "plan_cache_mode": "force_custom_plan",
    "enable_hashjoin": "off",
}


def test_children_hold_their_images_created_at(sql_registry):
    """Tags, properties and memberships copy their image's created_at, which never
    changes: not when an image is saved with another, nor when a member is added later."""
    image = sql_registry.create_image(make_image("kept", tags={"a"}, properties={"p": "1"}))

    def change(stored):
        stored.created_at = stored.created_at - datetime.timedelta(days=1)
        stored.tags.add("b")
        stored.properties["q"] = "2"

    sql_registry.update_image(image.id, change)
    sql_registry.add_member(image.id, "b")
    assert sql_registry.get_image(image.id).created_at == image.created_at
    with Session(sql_registry.engine) as session:
        for child in (PropertyRow, TagRow, MemberRow):
            copies = session.scalars(select(child.image_created_at).where(child.image_id == image.id)).all()
            assert copies and set(copies) == {image.created_at}, child
    with pytest.raises(ImageNotFound):
        sql_registry.add_member("9b1c0d2e-0000-4000-8000-00000000dead", "b")


def test_limit(sql_registry, many):
    assert list_ids(sql_registry, [], limit=5) == expected_order(many, [])[:5]
    assert list_ids(sql_registry, [], limit=0) == []


@pytest.mark.parametrize("marker", ["no-such-image", "deleted", "pending_delete"])
def test_unknown_marker(sql_registry, many, marker):
    """A deleted image, or one whose data is being deleted, is no marker (the API's
    400): the registry's own check, as the service asks it no other."""
    if marker == "deleted":
        marker = delete(sql_registry, many[3].id).id
    elif marker == "pending_delete":
        active = next(image for image in many if image.status is Status.ACTIVE)
        marker = sql_registry.update_image(active.id, lambda image: image.transition(Status.PENDING_DELETE)).id
    with pytest.raises(Invalid):
        sql_registry.list_images(EVERYTHING, [], 10, marker=marker)


@pytest.mark.parametrize("sort", [[("owner", "asc")], [("tags", "asc")], [("name", "up")]], ids=str)
def test_invalid_sort(sql_registry, sort):
    with pytest.raises(Invalid):
        sql_registry.list_images(EVERYTHING, sort, 10)


def test_list_returns_children(sql_registry):
    created = sql_registry.create_image(_with_children("x"))
    assert sql_registry.list_images(EVERYTHING, [], 10) == [created]


@pytest.mark.parametrize("document", ["missing", "stale"])
def test_children_are_read_from_their_tables_without_a_document_of_the_images_version(sql_registry, document):
    """An image row whose children document is missing (written before migration 0010)
    or of an older version (saved by a writer that did not keep it, such as a node
    still on an older release in a rolling upgrade) is read with the children of its
    own tables, by id and in lists, beside images whose document is current."""
    changed = sql_registry.create_image(_with_children("changed"))
    kept = sql_registry.create_image(_with_children("kept"))
    with Session(sql_registry.engine) as session, session.begin():
        # What such a writer does: the children's rows change and the version moves on,
        # the document stays as it was (or was never there).
        session.execute(delete_rows(PropertyRow).where(PropertyRow.image_id == changed.id, PropertyRow.name == "a"))
        session.add(TagRow(image_id=changed.id, value="added", image_created_at=changed.created_at))
        session.execute(update(ImageRow).where(ImageRow.id == changed.id).values(version=ImageRow.version + 1))
        if document == "missing":
            session.execute(delete_rows(ChildrenRow).where(ChildrenRow.image_id == changed.id))
    expected = sql_registry.get_image(changed.id)
    assert "a" not in expected.properties and "added" in expected.tags
    assert expected.properties == {k: v for k, v in changed.properties.items() if k != "a"}
    assert expected.tags == changed.tags | {"added"}
    assert expected.locations == changed.locations
    listed = {image.id: image for image in sql_registry.list_images(EVERYTHING, [], 10)}
    assert listed == {changed.id: expected, kept.id: kept}

    # The next save writes the document again.
    saved = sql_registry.update_image(changed.id, lambda image: setattr(image, "name", "saved"))
    with sql_registry.engine.connect() as conn:
        document = conn.scalar(select(ChildrenRow.document).where(ChildrenRow.image_id == changed.id))
    assert json.loads(document)["v"] == saved.version
    assert sql_registry.get_image(changed.id) == saved


# -- images_in_status -----------------------------------------------------------------


def test_images_in_status(sql_registry):
    expected = {
        sql_registry.create_image(make_image(name, status=Status.SAVING, **fields)).id: name
        for name, fields in {
            "a": {},
            "hidden": dict(os_hidden=True),
            "private": dict(visibility="private", owner="x"),
            "children": dict(tags={"t"}, properties={"p": "v"}, locations=[LOC_A]),
        }.items()
    }
    sql_registry.create_image(make_image("active", status=Status.ACTIVE))
    gone = sql_registry.create_image(make_image("gone", status=Status.SAVING))
    delete(sql_registry, gone.id)
    saving = sql_registry.images_in_status("saving")
    assert {image.id: image.name for image in saving} == expected
    assert saving == [sql_registry.get_image(image.id) for image in saving]
    assert names(sql_registry.images_in_status(Status.ACTIVE)) == ["active"]
    assert sql_registry.images_in_status("killed") == []


def test_sqlite_gathers_statistics_of_the_tables_its_lists_read(tmp_path, monkeypatch):
    """Without statistics SQLite reads a project's list pages from the wrong indexes;
    the registry has it analyze the tables it reads, once they exist or have grown."""
    import abbild.db.registry as sql
    from abbild.db import migrate

    monkeypatch.setattr(sql, "SQLITE_OPTIMIZE_EVERY", 0.0)
    registry = SQLRegistry(url=f"sqlite:///{tmp_path / 'stats.db'}")
    try:
        migrate.sync(registry.engine)
        for i in range(20):
            registry.create_image(make_image(f"image-{i}", owner="p", visibility="private"))
        listed = registry.list_images(ImageFilters(), [("name", "asc")], 5, viewer=Viewer(project_id="p"))
        assert [i.name for i in listed] == sorted(f"image-{i}" for i in range(20))[:5]
        with registry.engine.connect() as conn:
            analyzed = dict(conn.exec_driver_sql("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'images'").all())
        assert analyzed["ix_images_list_owner"].startswith("20 20 ")
    finally:
        registry.close()
