"""The node's image cache (abbild.cache): its files on a real disk, its index in a real
SQL registry (SQLite), its periodic runner in a real thread, its locks against a real
second process."""

from __future__ import annotations

import datetime
import hashlib
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from oslo_config import cfg

from abbild import opts
from abbild.cache import ImageCache
from abbild.db.models import Base
from abbild.db.registry import SQLRegistry
from abbild.errors import ImageNotFound, Invalid
from abbild.image import Image, Status
from abbild.periodic import Periodic
from abbild.registry import CacheEntry
from abbild.streams import CHUNK_SIZE, ChunkReader

NODE = "http://node-a:9292"


@pytest.fixture(scope="module")
def session_registry(tmp_path_factory):
    registry = SQLRegistry(url=f"sqlite:///{tmp_path_factory.mktemp('cache-registry')}/registry.db")
    registry.prepare()
    yield registry
    registry.close()


@pytest.fixture
def registry(session_registry):
    with session_registry.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return session_registry


@pytest.fixture
def conf(tmp_path):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("image_cache_dir", str(tmp_path / "cache"))
    return conf


@pytest.fixture
def cache(conf, registry):
    return ImageCache(conf, registry, NODE)


def make_image(registry, data: bytes, status: Status = Status.ACTIVE) -> Image:
    return registry.create_image(
        Image(
            id=str(uuid.uuid4()),
            status=status,
            disk_format="raw",
            container_format="bare",
            size=len(data),
            checksum=hashlib.md5(data).hexdigest(),
            os_hash_algo="sha512",
            os_hash_value=hashlib.sha512(data).hexdigest(),
        )
    )


def chunked(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Source:
    """A store's download stream: a closeable iterator that says whether it was closed."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.chunks = chunked(data)
        self.closed = False
        self._fail_after = fail_after
        self._reader = ChunkReader(self._read, self._close)
        self._sent = 0

    def _read(self, _size: int) -> bytes:
        if self._sent == self._fail_after:
            raise OSError("the store went away")
        if self._sent == len(self.chunks):
            return b""
        self._sent += 1
        return self.chunks[self._sent - 1]

    def _close(self) -> None:
        self.closed = True

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._reader)

    def close(self) -> None:
        self._reader.close()


def files(cache: ImageCache, sub: str = "") -> list[str]:
    """Every file (no directory, no lock) in the cache directory or one of its subdirectories."""
    path = os.path.join(cache.directory, sub)
    return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)) and not n.startswith("."))


def leftovers(cache: ImageCache) -> dict:
    return {
        "files": files(cache),
        "incomplete": files(cache, "incomplete"),
        "invalid": files(cache, "invalid"),
        "entries": cache.registry.cache_entries(NODE),
    }


NOTHING = {"files": [], "incomplete": [], "invalid": [], "entries": []}


def fill_cache(cache: ImageCache, image: Image, data: bytes) -> None:
    filling = cache.fill(image, chunked(data))
    assert b"".join(filling) == data
    assert image.id in [e.image_id for e in cache.cached()]


# -- from_config --------------------------------------------------------------------------


def test_from_config_names_the_node_and_creates_the_layout(conf, registry, tmp_path):
    conf.clear_override("image_cache_dir")
    assert ImageCache.from_config(conf, registry) is None

    conf.set_override("image_cache_dir", str(tmp_path / "c"))
    cache = ImageCache.from_config(conf, registry)
    assert cache.node == f"http://{socket.gethostname()}:9292"
    assert cache.directory == str(tmp_path / "c")
    assert sorted(os.listdir(cache.directory)) == ["incomplete", "invalid"]

    conf.register_opt(cfg.PortOpt("bind_port", default=9393))
    assert ImageCache.from_config(conf, registry).node == f"http://{socket.gethostname()}:9393"
    conf.set_override("worker_self_reference_url", "https://api-1.example.org:9292/")
    assert ImageCache.from_config(conf, registry).node == "https://api-1.example.org:9292"


def test_image_ids_never_leave_the_directory(cache):
    for bad in ("../etc", "a/b", ".prune.lock", "incomplete", "", "x" * 37):
        with pytest.raises(Invalid):
            cache.queue(bad)
        with pytest.raises(Invalid):
            cache.remove(bad)


# -- fill ---------------------------------------------------------------------------------


def test_fill_publishes_verified_data_fsynced_and_records_it(cache, registry, monkeypatch):
    data = os.urandom(2 * CHUNK_SIZE + 123)
    image = make_image(registry, data)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    chunks = chunked(data)
    filling = cache.fill(image, iter(chunks))
    assert filling is not chunks
    assert files(cache, "incomplete") == [image.id]

    passed = list(filling)
    assert all(a is b for a, b in zip(passed, chunks, strict=True)), "the chunks are passed on, not copied"
    assert synced == [os.path.join(cache.directory, "incomplete", image.id), cache.directory]
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [image.id]}
    path = os.path.join(cache.directory, image.id)
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.stat(path).st_mtime == image.created_at.replace(tzinfo=datetime.timezone.utc).timestamp()
    [entry] = cache.cached()
    assert (entry.node, entry.image_id, entry.state, entry.size, entry.checksum) == (
        NODE,
        image.id,
        "cached",
        len(data),
        image.checksum,
    )
    with cache.open(image) as f:
        assert f.read() == data


@pytest.mark.parametrize("wrong", ["bytes", "md5", "size", "os_hash"])
def test_a_fill_with_wrong_data_is_never_served(cache, registry, wrong):
    """Each check alone keeps wrong data out: the bytes differ (every hash sees it), the
    md5 alone (an image without os_hash), the size alone (the hashes are of the data the
    store has, the image claims a byte more), the os_hash alone."""
    data = os.urandom(CHUNK_SIZE + 10)
    image = make_image(registry, data)
    sent = data
    if wrong == "bytes":
        sent = os.urandom(len(data))
    elif wrong == "md5":
        sent = os.urandom(len(data))
        image.os_hash_algo = image.os_hash_value = None
    elif wrong == "size":
        image.size += 1
    else:
        image.os_hash_value = hashlib.sha512(b"another upload").hexdigest()

    assert b"".join(cache.fill(image, chunked(sent))) == sent, "the client still gets what the store sent"
    assert leftovers(cache) == NOTHING | {"invalid": [image.id]}
    assert cache.open(image) is None
    with open(os.path.join(cache.directory, "invalid", image.id), "rb") as f:
        assert f.read() == sent


def test_an_image_without_os_hash_is_verified_by_size_and_md5(cache, registry):
    data = os.urandom(1000)
    image = make_image(registry, data)
    image.os_hash_algo = image.os_hash_value = None
    fill_cache(cache, image, data)
    assert cache.open(image).read() == data


@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_fill_closed_early_leaves_nothing_and_releases_the_store(cache, registry, after):
    data = os.urandom(3 * CHUNK_SIZE)
    image = make_image(registry, data)
    source = Source(data)
    filling = cache.fill(image, source)
    for _ in range(after):
        next(filling)
    filling.close()
    assert source.closed
    assert leftovers(cache) == NOTHING
    assert cache.open(image) is None


def test_a_store_failure_mid_fill_reaches_the_client_and_leaves_nothing(cache, registry):
    data = os.urandom(3 * CHUNK_SIZE)
    image = make_image(registry, data)
    filling = cache.fill(image, Source(data, fail_after=2))
    next(filling)
    next(filling)
    with pytest.raises(OSError, match="the store went away"):
        next(filling)
    assert leftovers(cache) == NOTHING


def test_a_full_disk_never_breaks_the_download(cache, registry):
    data = os.urandom(3 * CHUNK_SIZE)
    image = make_image(registry, data)
    filling = cache.fill(image, chunked(data))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Files of this process cannot grow beyond one chunk now: writes fail with EFBIG
    # (Python ignores SIGXFSZ), as they would with ENOSPC on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (CHUNK_SIZE + 100, hard))
    try:
        received = b"".join(filling)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert received == data
    assert leftovers(cache) == NOTHING


def test_two_concurrent_fills_write_the_image_once(cache, registry):
    data = os.urandom(4 * CHUNK_SIZE)
    image = make_image(registry, data)
    sources = [chunked(data), chunked(data)]
    fills, received = [None, None], [None, None]
    both_asked = threading.Barrier(2)

    def download(i):
        fills[i] = cache.fill(image, sources[i])
        both_asked.wait()
        received[i] = b"".join(fills[i])

    threads = [threading.Thread(target=download, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert received == [data, data]
    assert sorted(fills[i] is sources[i] for i in range(2)) == [False, True], "exactly one fill wrote"
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [image.id]}
    assert len(cache.cached()) == 1

    later = chunked(data)
    assert cache.fill(image, later) is later, "a cached image is not written again"


def test_an_image_evicted_while_filling_is_not_published(cache, registry):
    data = os.urandom(3 * CHUNK_SIZE)
    image = make_image(registry, data)
    first = cache.fill(image, chunked(data))
    next(first)
    cache.evict(image.id)  # deleted on this node while a download was running
    second_chunks = chunked(data)
    second = cache.fill(image, second_chunks)
    assert second is not second_chunks
    next(second)
    assert b"".join(first) == data[CHUNK_SIZE:]
    assert leftovers(cache) == NOTHING | {"incomplete": [image.id]}, "the first fill took not the second's file"
    b"".join(second)
    assert files(cache) == [image.id]


def test_images_that_cannot_be_verified_are_not_cached(cache, registry):
    data = b"x" * 10
    for image in (
        make_image(registry, data, status=Status.DEACTIVATED),
        make_image(registry, data, status=Status.QUEUED),
    ):
        chunks = chunked(data)
        assert not cache.cacheable(image)
        assert cache.fill(image, chunks) is chunks
    image = make_image(registry, data)
    image.checksum = None
    assert not cache.cacheable(image)
    assert leftovers(cache) == NOTHING


# -- open ---------------------------------------------------------------------------------


def test_open_counts_hits(cache, registry):
    data = os.urandom(100)
    image = make_image(registry, data)
    assert cache.open(image) is None
    fill_cache(cache, image, data)
    for _ in range(2):
        with cache.open(image) as f:
            assert f.read() == data
    [entry] = cache.cached()
    assert entry.hits == 2 and entry.last_accessed is not None


def test_open_refuses_and_evicts_a_file_whose_size_changed(cache, registry):
    data = os.urandom(CHUNK_SIZE)
    image = make_image(registry, data)
    fill_cache(cache, image, data)
    path = os.path.join(cache.directory, image.id)
    sealed = os.stat(path).st_mtime_ns
    with open(path, "ab") as f:
        f.write(b"!")
    os.utime(path, ns=(sealed, sealed))  # a copy with its times kept (cp -p): only the size tells
    assert cache.open(image) is None
    assert leftovers(cache) == NOTHING | {"invalid": [image.id]}


def test_open_refuses_and_evicts_a_file_written_to(cache, registry):
    data = os.urandom(CHUNK_SIZE)
    image = make_image(registry, data)
    fill_cache(cache, image, data)
    with open(os.path.join(cache.directory, image.id), "r+b") as f:
        f.seek(1000)
        f.write(b"\0")  # same size: only the file's mtime tells
    assert cache.open(image) is None
    assert leftovers(cache) == NOTHING | {"invalid": [image.id]}


def test_open_refuses_and_evicts_a_copy_of_other_data(cache, registry):
    """The entry was verified against another checksum than the image has now (an image
    of that id was uploaded again): the copy is not this image's data."""
    data = os.urandom(CHUNK_SIZE)
    image = make_image(registry, data)
    fill_cache(cache, image, data)
    image.checksum = hashlib.md5(b"other data").hexdigest()
    assert cache.open(image) is None
    assert leftovers(cache) == NOTHING | {"invalid": [image.id]}


def test_open_forgets_an_entry_whose_file_is_gone(cache, registry):
    data = os.urandom(10)
    image = make_image(registry, data)
    fill_cache(cache, image, data)
    os.unlink(os.path.join(cache.directory, image.id))
    assert cache.open(image) is None
    assert leftovers(cache) == NOTHING


def test_open_serves_no_deactivated_image_and_keeps_its_copy(cache, registry):
    data = os.urandom(10)
    image = make_image(registry, data)
    fill_cache(cache, image, data)
    image.status = Status.DEACTIVATED
    assert cache.open(image) is None
    assert files(cache) == [image.id] and len(cache.cached()) == 1


# -- queue, remove, clear -----------------------------------------------------------------


def test_queue_remove_and_clear(cache, registry):
    data = os.urandom(10)
    cached_images = [make_image(registry, data) for _ in range(2)]
    for image in cached_images:
        fill_cache(cache, image, data)
    queued = [str(uuid.uuid4()) for _ in range(3)]
    for image_id in queued:
        cache.queue(image_id)
    cache.queue(cached_images[0].id)  # cached already: not queued again
    assert sorted(e.image_id for e in cache.queued()) == sorted(queued)
    assert sorted(e.image_id for e in cache.cached()) == sorted(i.id for i in cached_images)

    assert cache.remove(queued[0]) is True
    assert cache.remove(queued[0]) is False
    assert cache.remove(cached_images[0].id) is True
    assert files(cache) == [cached_images[1].id]

    with pytest.raises(Invalid):
        cache.clear("everything")
    assert cache.clear("queue") == 2
    assert cache.queued() == [] and len(cache.cached()) == 1
    cache.queue(queued[0])
    with open(os.path.join(cache.directory, queued[1]), "wb") as f:
        f.write(b"a file the index does not know of")
    assert cache.clear("cache") == 2
    assert files(cache) == [] and [e.image_id for e in cache.queued()] == [queued[0]]
    fill_cache(cache, cached_images[0], data)
    assert cache.clear("") == 2
    assert leftovers(cache) == NOTHING


def test_entries_of_other_nodes_are_not_this_nodes(cache, registry):
    registry.cache_put(CacheEntry("http://node-b:9292", str(uuid.uuid4()), "queued"))
    registry.cache_put(CacheEntry("http://node-b:9292", str(uuid.uuid4()), "cached", size=1, checksum="0" * 32))
    assert cache.cached() == [] and cache.queued() == []
    assert cache.clear() == 0 and cache.clean()["orphans"] == 0
    assert len(registry.cache_entries()) == 2


# -- clean --------------------------------------------------------------------------------


def test_clean_finds_a_tampered_file(cache, registry):
    data = os.urandom(CHUNK_SIZE + 5)
    image, intact = make_image(registry, data), make_image(registry, data)
    fill_cache(cache, image, data)
    fill_cache(cache, intact, data)
    path = os.path.join(cache.directory, image.id)
    sealed = os.stat(path).st_mtime
    with open(path, "r+b") as f:
        f.seek(CHUNK_SIZE)
        f.write(b"\0")
    os.utime(path, (sealed, sealed))  # bit rot changes bytes, not metadata: no serve-time check sees it
    with cache.open(image) as f:
        assert f.read() != data
    assert cache.clean() == {"stalled": 0, "invalid": 0, "orphans": 0, "deleted": 0, "corrupt": 1}
    assert cache.open(image) is None
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [intact.id]}
    assert [e.image_id for e in cache.cached()] == [intact.id]


def test_clean_removes_stalled_and_invalid_files_and_orphans_both_ways(cache, registry, conf):
    data = os.urandom(10)
    kept = make_image(registry, data)
    fill_cache(cache, kept, data)
    stalled, fresh, invalid, orphan_file = (str(uuid.uuid4()) for _ in range(4))
    orphan_entry, queued = (make_image(registry, data).id for _ in range(2))
    for sub, image_id in (("incomplete", stalled), ("incomplete", fresh), ("invalid", invalid), ("", orphan_file)):
        with open(os.path.join(cache.directory, sub, image_id), "wb") as f:
            f.write(b"data")
    an_hour_ago = time.time() - 3600
    os.utime(os.path.join(cache.directory, "incomplete", stalled), (an_hour_ago, an_hour_ago))
    registry.cache_put(CacheEntry(NODE, orphan_entry, "cached", size=4, checksum="0" * 32))
    cache.queue(queued)
    conf.set_override("image_cache_stall_time", 1800)

    assert cache.clean() == {"stalled": 1, "invalid": 1, "orphans": 2, "deleted": 0, "corrupt": 0}
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [kept.id], "incomplete": [fresh]}
    assert sorted((e.image_id, e.state) for e in registry.cache_entries(NODE)) == sorted(
        [(kept.id, "cached"), (queued, "queued")]
    )
    assert cache.open(kept).read() == data


def test_clean_drops_what_it_holds_of_images_deleted_elsewhere(cache, registry):
    data = os.urandom(10)
    kept, deleted, vanished, queued = (make_image(registry, data) for _ in range(4))
    for image in (kept, deleted, vanished):
        fill_cache(cache, image, data)
    cache.queue(queued.id)
    # Deleted through another node (or the registry): nothing told this node.
    registry.update_image(deleted.id, lambda image: image.transition(Status.DELETED))
    registry.update_image(queued.id, lambda image: image.transition(Status.DELETED))
    with registry.engine.begin() as conn:  # purged from the database altogether
        for table in reversed(Base.metadata.sorted_tables):
            if table.name == "images":
                conn.execute(table.delete().where(table.c.id == vanished.id))
            elif table.name != "cache_entries" and "image_id" in table.c:
                conn.execute(table.delete().where(table.c.image_id == vanished.id))

    assert cache.clean() == {"stalled": 0, "invalid": 0, "orphans": 0, "deleted": 3, "corrupt": 0}
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [kept.id]}
    assert [(e.image_id, e.state) for e in registry.cache_entries(NODE)] == [(kept.id, "cached")]


def test_forget_drops_every_nodes_entry_and_this_nodes_file(cache, registry, conf):
    data = os.urandom(10)
    image, other = make_image(registry, data), make_image(registry, data)
    fill_cache(cache, image, data)
    fill_cache(cache, other, data)
    registry.cache_put(CacheEntry("http://node-b:9292", image.id, "cached", size=10, checksum=image.checksum))
    registry.cache_put(CacheEntry("http://node-c:9292", image.id, "queued"))

    cache.forget(image.id)
    assert [(e.node, e.image_id) for e in registry.cache_entries()] == [(NODE, other.id)]
    assert leftovers(cache) | {"entries": []} == NOTHING | {"files": [other.id]}


# -- prune --------------------------------------------------------------------------------


def test_prune_removes_least_recently_used_first(cache, registry, conf):
    data = os.urandom(1000)
    # Cached in an order unlike their last use.
    images = {name: make_image(registry, data) for name in ("recent", "unused", "old", "older")}
    for image in images.values():
        fill_cache(cache, image, data)
    # The index's clock: last access, else when the image was cached (now, for "unused").
    tomorrow = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(days=1)
    accessed = {"old": datetime.datetime(2021, 1, 1), "older": datetime.datetime(2020, 1, 1), "recent": tomorrow}
    for name, when in accessed.items():
        entry = cache.registry.cache_entries(NODE, images[name].id)[0]
        entry.last_accessed = when
        registry.cache_put(entry)

    conf.set_override("image_cache_max_size", 4000)
    assert cache.prune() == {"total_files_pruned": 0, "total_bytes_pruned": 0}
    conf.set_override("image_cache_max_size", 2999)
    assert cache.prune() == {"total_files_pruned": 2, "total_bytes_pruned": 2000}
    assert sorted(files(cache)) == sorted([images["unused"].id, images["recent"].id])
    conf.set_override("image_cache_max_size", 1000)
    assert cache.prune() == {"total_files_pruned": 1, "total_bytes_pruned": 1000}
    assert files(cache) == [images["recent"].id]
    assert [e.image_id for e in cache.cached()] == [images["recent"].id]


# -- prefetch -----------------------------------------------------------------------------


def store_reader(registry, data_of: dict):
    """What the service gives the prefetcher: an active image and its data, else None."""

    def read(image_id):
        try:
            image = registry.get_image(image_id)
        except ImageNotFound:
            return None
        if image.status != Status.ACTIVE:
            return None
        return image, Source(data_of[image_id])

    return read


def test_prefetch_fetches_queued_images_and_drops_gone_ones(cache, registry):
    data = os.urandom(2 * CHUNK_SIZE + 1)
    wanted, gone = make_image(registry, data), make_image(registry, data)
    registry.update_image(gone.id, lambda image: image.transition(Status.DELETED))
    cache.queue(wanted.id)
    cache.queue(gone.id)
    seen = []

    done = cache.prefetch(store_reader(registry, {wanted.id: data}), lambda *p: seen.append(p))
    assert done == [wanted.id]
    assert seen == [
        (wanted.id, CHUNK_SIZE, len(data)),
        (wanted.id, 2 * CHUNK_SIZE, len(data)),
        (wanted.id, len(data), len(data)),
    ]
    assert cache.queued() == []
    assert [e.image_id for e in cache.cached()] == [wanted.id]
    assert cache.open(wanted).read() == data


def test_prefetch_drops_data_that_never_verifies_and_keeps_what_failed_to_read(cache, registry):
    data = os.urandom(100)
    corrupt, unreadable = make_image(registry, data), make_image(registry, data)
    cache.queue(corrupt.id)
    cache.queue(unreadable.id)

    def read(image_id):
        if image_id == unreadable.id:
            raise OSError("the store is down")
        return registry.get_image(image_id), Source(b"y" * 100)

    assert cache.prefetch(read) == []
    assert [e.image_id for e in cache.queued()] == [unreadable.id]
    assert files(cache) == [] and files(cache, "invalid") == [corrupt.id]


def test_prefetch_stops_between_chunks(cache, registry):
    data = os.urandom(3 * CHUNK_SIZE)
    image = make_image(registry, data)
    cache.queue(image.id)
    stopping = threading.Event()
    done = cache.prefetch(store_reader(registry, {image.id: data}), lambda *_: stopping.set(), stopping=stopping)
    assert done == []
    assert leftovers(cache) | {"entries": []} == NOTHING
    assert [e.image_id for e in cache.queued()] == [image.id]


# -- the periodic tasks --------------------------------------------------------------------------


class RecordingCache(ImageCache):
    """The real cache, noting when each task ran."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.runs: dict[str, list[float]] = {"prune": [], "clean": [], "prefetch": []}

    def prune(self):
        self.runs["prune"].append(time.monotonic())
        return super().prune()

    def clean(self, stopping=None):
        self.runs["clean"].append(time.monotonic())
        return super().clean(stopping)

    def prefetch(self, read, progress=None, stopping=None):
        self.runs["prefetch"].append(time.monotonic())
        return super().prefetch(read, progress, stopping)


@pytest.fixture
def recording(conf, registry):
    return RecordingCache(conf, registry, NODE)


def set_intervals(conf, prune=0, clean=0, prefetch=0):
    for task, seconds in (("prune", prune), ("clean", clean), ("prefetch", prefetch)):
        conf.set_override(f"image_cache_{task}_interval", seconds)


def scheduled(cache, read, stopping=None) -> Periodic:
    periodic = Periodic(cache.registry, "node-a:1", stopping or threading.Event())
    cache.schedule(periodic, read)
    return periodic


def test_runner_runs_each_task_at_its_interval(recording, registry, conf):
    data = os.urandom(10)
    image = make_image(registry, data)
    recording.queue(image.id)
    set_intervals(conf, prune=1, clean=2)
    runner = scheduled(recording, store_reader(registry, {image.id: data}))
    started = time.monotonic()
    runner.start()
    time.sleep(3.5)
    runner.stop()
    prune = [round(t - started, 1) for t in recording.runs["prune"]]
    clean = [round(t - started, 1) for t in recording.runs["clean"]]
    assert len(prune) == 3 and all(abs(t - (i + 1)) < 0.45 for i, t in enumerate(prune)), prune
    assert len(clean) == 1 and all(abs(t - 2 * (i + 1)) < 0.45 for i, t in enumerate(clean)), clean
    assert recording.runs["prefetch"] == [], "an interval of 0 is never"
    assert recording.queued() != []

    set_intervals(conf, prefetch=1)
    runner = scheduled(recording, store_reader(registry, {image.id: data})).start()
    deadline = time.monotonic() + 5
    while not recording.cached() and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.stop()
    assert [e.image_id for e in recording.cached()] == [image.id]


LOCK_HOLDER = """
import fcntl, sys
with open(sys.argv[1], "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_runner_skips_a_task_another_process_runs(recording, conf):
    set_intervals(conf, prune=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, os.path.join(recording.directory, ".prune.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        runner = scheduled(recording, lambda _id: None)
        assert recording.run_task("prune", lambda _id: None, threading.Event()) is None
        assert recording.run_task("clean", lambda _id: None, threading.Event()) is not None, "each its own lock"
        runner.start()
        time.sleep(2.5)
        assert recording.runs["prune"] == []
    finally:
        holder.communicate("")  # the holder exits, its lock goes with it
    time.sleep(1.5)
    runner.stop()
    assert len(recording.runs["prune"]) >= 1


def test_runner_stops_promptly(recording, conf):
    set_intervals(conf, prune=3600, clean=3600, prefetch=3600)
    runner = scheduled(recording, lambda _id: None).start()
    time.sleep(0.2)
    stopper = threading.Thread(target=runner.stop, daemon=True)
    stopper.start()
    stopper.join(0.5)
    assert not stopper.is_alive() and not runner._thread.is_alive()

    stopping = threading.Event()  # graceful shutdown sets the jobs' event
    runner = scheduled(recording, lambda _id: None, stopping).start()
    assert runner._thread.is_alive()
    stopping.set()
    runner._thread.join(0.5)
    assert not runner._thread.is_alive()
    assert recording.runs == {"prune": [], "clean": [], "prefetch": []}
