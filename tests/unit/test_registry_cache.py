"""The shared cache index of the registry (``cache_entries``, ``cache_put``,
``cache_hit``, ``cache_remove``), on SQLite, MariaDB and PostgreSQL; test_registry_http.py
runs these tests again through the http registry and a registry server."""

from __future__ import annotations

import datetime
import threading
import traceback
import uuid

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from abbild.db.models import CacheEntryRow
from abbild.errors import Invalid
from abbild.image import utcnow
from abbild.registry import CacheEntry

NODE_A = "http://api-a.example:9292"
NODE_B = "http://api-b.example:9292"
MD5 = "0123456789abcdef0123456789abcdef"


def new_id() -> str:
    return str(uuid.uuid4())


def set_last_modified(registry, node: str, image_id: str, when: datetime.datetime) -> None:
    """Age an entry behind the registry's back (it stamps ``last_modified`` itself)."""
    with Session(registry.engine) as session, session.begin():
        session.execute(
            update(CacheEntryRow)
            .where(CacheEntryRow.node == node, CacheEntryRow.image_id == image_id)
            .values(last_modified=when)
        )


def in_threads(count: int, work) -> None:
    """Run ``work(i)`` in *count* threads that start together; fail with their tracebacks."""
    failures: list[str] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait()
            work(i)
        except Exception:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


def test_put_creates_an_entry(sql_registry):
    image_id = new_id()
    before = utcnow()
    stored = sql_registry.cache_put(CacheEntry(NODE_A, image_id))
    assert (stored.node, stored.image_id, stored.state, stored.hits) == (NODE_A, image_id, "queued", 0)
    assert stored.size is stored.checksum is stored.last_accessed is None
    assert before <= stored.last_modified <= utcnow()
    assert stored.last_modified.tzinfo is None  # naive UTC, as every time the registry keeps
    assert sql_registry.cache_entries(NODE_A) == [stored]


def test_put_replaces_the_entry_of_node_and_image(sql_registry):
    image_id = new_id()
    sql_registry.cache_put(CacheEntry(NODE_A, image_id))
    set_last_modified(sql_registry, NODE_A, image_id, datetime.datetime(2024, 1, 1))
    cached = sql_registry.cache_put(CacheEntry(NODE_A, image_id, state="cached", size=5 * 2**40, checksum=MD5))
    assert cached.last_modified > datetime.datetime(2024, 1, 1)  # stamped again
    assert sql_registry.cache_entries() == [cached]
    assert (cached.state, cached.size, cached.checksum) == ("cached", 5 * 2**40, MD5)


def test_put_keeps_what_the_entry_says(sql_registry):
    accessed = datetime.datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    entry = CacheEntry(NODE_A, new_id(), "cached", size=3, checksum=MD5, hits=7, last_accessed=accessed)
    stored = sql_registry.cache_put(entry)
    assert stored.hits == 7
    assert stored.last_accessed == datetime.datetime(2024, 5, 1, 12, 0, 0)  # naive UTC, whole seconds
    assert sql_registry.cache_entries(image_id=entry.image_id) == [stored]
    assert entry.last_modified is None  # the caller's entry is not changed


def test_entries_by_node_and_by_image(sql_registry):
    first, second = new_id(), new_id()
    a1 = sql_registry.cache_put(CacheEntry(NODE_A, first, "cached", size=1, checksum=MD5))
    b1 = sql_registry.cache_put(CacheEntry(NODE_B, first))
    a2 = sql_registry.cache_put(CacheEntry(NODE_A, second))
    assert sql_registry.cache_entries() == [a1, b1, a2]
    assert sql_registry.cache_entries(NODE_A) == [a1, a2]
    assert sql_registry.cache_entries(NODE_B) == [b1]
    assert sql_registry.cache_entries(image_id=first) == [a1, b1]
    assert sql_registry.cache_entries(NODE_B, first) == [b1]
    assert sql_registry.cache_entries(NODE_B, second) == []
    assert sql_registry.cache_entries("http://elsewhere:9292") == []


def test_entries_come_oldest_first(sql_registry):
    ids = [new_id() for _ in range(3)]
    for image_id in ids:
        sql_registry.cache_put(CacheEntry(NODE_A, image_id))
    for age, image_id in enumerate(ids):  # the first put is now the youngest
        set_last_modified(sql_registry, NODE_A, image_id, datetime.datetime(2024, 1, 1) - datetime.timedelta(days=age))
    assert [e.image_id for e in sql_registry.cache_entries(NODE_A)] == ids[::-1]


def test_node_names_are_exact(sql_registry):
    """A node is a URL; MariaDB's default collation would call two of them equal."""
    image_id = new_id()
    sql_registry.cache_put(CacheEntry("http://API:9292", image_id))
    sql_registry.cache_put(CacheEntry("http://api:9292", image_id))
    assert [e.node for e in sql_registry.cache_entries("http://api:9292")] == ["http://api:9292"]
    assert len(sql_registry.cache_entries(image_id=image_id)) == 2


def test_a_hit_counts_and_stamps_the_access(sql_registry):
    image_id = new_id()
    sql_registry.cache_put(CacheEntry(NODE_A, image_id, "cached", size=1, checksum=MD5))
    sql_registry.cache_put(CacheEntry(NODE_B, image_id, "cached", size=1, checksum=MD5))
    before = utcnow()
    sql_registry.cache_hit(NODE_A, image_id)
    sql_registry.cache_hit(NODE_A, image_id)
    [a] = sql_registry.cache_entries(NODE_A)
    assert a.hits == 2 and before <= a.last_accessed <= utcnow()
    [b] = sql_registry.cache_entries(NODE_B)
    assert (b.hits, b.last_accessed) == (0, None)  # another node's entry


def test_a_hit_without_an_entry_does_nothing(sql_registry):
    sql_registry.cache_hit(NODE_A, new_id())
    assert sql_registry.cache_entries() == []


def test_concurrent_hits_add_up(sql_registry):
    image_id = new_id()
    sql_registry.cache_put(CacheEntry(NODE_A, image_id, "cached", size=1, checksum=MD5))
    threads, hits = 4, 25
    in_threads(threads, lambda _: [sql_registry.cache_hit(NODE_A, image_id) for _ in range(hits)])
    assert sql_registry.cache_entries(NODE_A, image_id)[0].hits == threads * hits


def test_concurrent_puts_leave_one_entry(sql_registry):
    image_id = new_id()
    in_threads(4, lambda i: sql_registry.cache_put(CacheEntry(NODE_A, image_id, hits=i)))
    [entry] = sql_registry.cache_entries()
    assert entry.image_id == image_id and entry.hits in range(4)


def test_remove(sql_registry):
    image_id = new_id()
    sql_registry.cache_put(CacheEntry(NODE_A, image_id))
    kept = sql_registry.cache_put(CacheEntry(NODE_B, image_id, "cached", size=1, checksum=MD5))
    assert sql_registry.cache_remove(NODE_A, image_id) is True
    assert sql_registry.cache_remove(NODE_A, image_id) is False
    assert sql_registry.cache_remove(NODE_A, new_id()) is False
    assert sql_registry.cache_entries() == [kept]


@pytest.mark.parametrize(
    "entry, message",
    [
        (CacheEntry(NODE_A, "x", state="caching"), "state"),
        (CacheEntry("", "x"), "node"),
        (CacheEntry("http://" + "n" * 250, "x"), "node"),
        (CacheEntry(NODE_A, ""), "image id"),
        (CacheEntry(NODE_A, "x" * 37), "image id"),
        (CacheEntry(NODE_A, "x", checksum="0" * 33), "checksum"),
        (CacheEntry(NODE_A, "x", size=-1), "size"),
        (CacheEntry(NODE_A, "x", hits=-1), "hits"),
    ],
    ids=["state", "no node", "long node", "no image", "long image id", "checksum", "size", "hits"],
)
def test_put_refuses_what_the_index_cannot_hold(sql_registry, entry, message):
    with pytest.raises(Invalid, match=message):
        sql_registry.cache_put(entry)
    assert sql_registry.cache_entries() == []
