"""Concurrent writers lose nothing: every ``update_image`` lands exactly once.

Four workers, as threads sharing one registry and as processes with one registry each,
interleave ``create_image`` with ``update_image`` calls on one shared image. Each update
increments the integer property "counter" and adds a tag of its own.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
import uuid

import pytest

from abbild.db.registry import SQLRegistry
from abbild.image import Image

WORKERS = 4
OPS = 50


def increment(tag: str):
    def change(image: Image) -> None:
        image.properties["counter"] = str(int(image.properties["counter"]) + 1)
        image.tags.add(tag)

    return change


def work(registry: SQLRegistry, shared_id: str, worker: int) -> None:
    for op in range(OPS):
        name = f"w{worker}-op{op}"
        registry.create_image(Image(id=str(uuid.uuid4()), name=name, tags={name}, properties={"worker": str(worker)}))
        registry.update_image(shared_id, increment(name))


def in_threads(url: str, registry: SQLRegistry, shared_id: str, tmp_path) -> list[str]:
    errors: list[str] = []
    start = threading.Barrier(WORKERS)

    def run(worker: int) -> None:
        try:
            start.wait()
            work(registry, shared_id, worker)
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def in_processes(url: str, registry: SQLRegistry, shared_id: str, tmp_path) -> list[str]:
    # fork: the test module is not importable by name in a spawned child (importlib
    # mode). The parent's pooled connections must not be shared with the children.
    registry.engine.dispose()
    context = multiprocessing.get_context("fork")
    start = context.Barrier(WORKERS)

    def run(worker: int) -> None:
        try:
            child = SQLRegistry(url=url)
            start.wait()
            work(child, shared_id, worker)
            child.close()
        except BaseException:
            (tmp_path / f"worker{worker}.err").write_text(traceback.format_exc())
            raise

    processes = [context.Process(target=run, args=(w,)) for w in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    errors = [path.read_text() for path in sorted(tmp_path.glob("worker*.err"))]
    errors += [f"worker {w} exit code {p.exitcode}" for w, p in enumerate(processes) if p.exitcode != 0]
    return errors


@pytest.mark.parametrize("runner", [in_threads, in_processes], ids=["threads", "processes"])
def test_no_lost_updates(sql_url, sql_registry, runner, tmp_path):
    shared = sql_registry.create_image(Image(id=str(uuid.uuid4()), name="shared", properties={"counter": "0"}))

    errors = runner(sql_url, sql_registry, shared.id, tmp_path)

    assert errors == []
    final = sql_registry.get_image(shared.id)
    expected_tags = {f"w{w}-op{op}" for w in range(WORKERS) for op in range(OPS)}
    assert final.properties["counter"] == str(WORKERS * OPS)
    assert final.tags == expected_tags
    assert final.version == 1 + WORKERS * OPS
    created = sql_registry.images_in_status("queued")
    assert sorted(image.name for image in created) == sorted(expected_tags | {"shared"})
    assert all(image.tags == {image.name} for image in created if image.id != shared.id)


# -- quotas: the check and the write are one step --------------------------------------------


def _side_by_side(calls) -> tuple[int, list[BaseException]]:
    """Run *calls* at the same moment, one thread each; returns how many returned and
    what the others raised."""
    from abbild.errors import QuotaExceeded

    start = threading.Barrier(len(calls))
    done, refused, unexpected = [], [], []

    def run(call) -> None:
        start.wait()
        try:
            call()
            done.append(call)
        except QuotaExceeded as exc:
            refused.append(exc)
        except Exception:
            unexpected.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not unexpected, unexpected[0]
    return len(done), refused


@pytest.mark.backend("sql")
def test_uploads_finishing_together_stay_within_the_storage_limit(sql_registry):
    """Four 600-byte images activated at once against a 1,024-byte limit: one fits."""
    from abbild.image import Status

    owner = f"p-{uuid.uuid4().hex[:8]}"
    images = [
        sql_registry.create_image(Image(id=str(uuid.uuid4()), owner=owner, disk_format="raw", container_format="bare"))
        for _ in range(WORKERS)
    ]

    def activate(image_id):
        def change(image: Image) -> None:
            image.size = 600
            image.transition(Status.ACTIVE)

        return lambda: sql_registry.update_image(image_id, change, storage_limit=1024)

    done, refused = _side_by_side([activate(i.id) for i in images])
    assert (done, len(refused)) == (1, WORKERS - 1)
    assert "user_storage_quota allows 1024" in str(refused[0])
    assert sql_registry.usage(owner).size == 600


@pytest.mark.backend("sql")
def test_members_added_together_stay_within_the_member_limit(sql_registry):
    image = sql_registry.create_image(Image(id=str(uuid.uuid4()), owner="owner"))
    done, refused = _side_by_side(
        [lambda m=m: sql_registry.add_member(image.id, m, limit=2) for m in ("a", "b", "c", "d", "e")]
    )
    assert (done, len(refused)) == (2, 3)
    assert len(sql_registry.list_members(image.id)) == 2


def test_a_write_kept_waiting_too_long_on_sqlite_is_unavailable(tmp_path, monkeypatch):
    """A process's writes to a SQLite file take turns on one connection: one that
    waits longer than SQLite's busy timeout gets the same error as a lock held by
    another process, and the writes behind it go on once the connection is free."""
    from abbild.db import migrate
    from abbild.db import registry as registry_module
    from abbild.errors import RegistryUnavailable

    monkeypatch.setattr(registry_module, "SQLITE_BUSY_SECONDS", 0.3)
    registry = SQLRegistry(url=f"sqlite:///{tmp_path / 'busy.db'}")
    try:
        migrate.sync(registry.engine)
        image = registry.create_image(Image(id=str(uuid.uuid4()), name="held"))
        holding, release = threading.Event(), threading.Event()

        def hold(img: Image) -> None:
            holding.set()
            release.wait(10)
            img.name = "renamed"

        holder = threading.Thread(target=registry.update_image, args=(image.id, hold))
        holder.start()
        try:
            assert holding.wait(10)
            with pytest.raises(RegistryUnavailable, match="writes are busy"):
                registry.create_image(Image(id=str(uuid.uuid4()), name="kept waiting"))
        finally:
            release.set()
            holder.join()
        assert registry.get_image(image.id).name == "renamed"
        assert registry.create_image(Image(id=str(uuid.uuid4()), name="next")).name == "next"
    finally:
        registry.close()
