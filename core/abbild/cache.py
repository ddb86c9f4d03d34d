"""The image cache of one API node: verified copies of image data on local disk, so a
popular image is read from the store once and then served from this node's files.

Layout under ``image_cache_dir`` (one directory per node, never shared)::

    <image_id>             complete, verified copies: the only files ever served
    incomplete/<image_id>  a fill in progress (its O_EXCL create makes it the only one)
    invalid/<image_id>     quarantine: data that failed a check, removed by the cleaner
    .prune.lock ...        one flock per periodic task, so one process per node runs it

What this node holds, or should fetch, is recorded in the registry's cache index
(:class:`~abbild.registry.CacheEntry`, one row per node and image): the queue lives only
there, and any node (and operator) can see every node's cache.

The life of a cache file:

1. A full download of an active image misses (:meth:`ImageCache.open` returns ``None``);
   the service wraps the store's chunks in :meth:`ImageCache.fill`, which writes each
   chunk to ``incomplete/<id>`` as the client receives it, while one hash is computed
   on another thread: the image's ``os_hash_algo`` where it has an ``os_hash_value``
   (equal to it means equal bytes, so md5 would add nothing but CPU), else md5.
2. When the store's data ends, the file is published only if its size and that hash
   equal the image's: it is dated with the image's creation (its seal: any later write
   moves a file's mtime), fsynced, renamed to ``<id>`` (the directory fsynced too) and
   then recorded as ``cached`` with the size and checksum it was verified against. Data
   that does not verify goes to ``invalid/``; a download that ends early (the client went
   away, the store failed) leaves nothing. The client's download never fails because of
   the cache: its faults are logged and the chunks still flow.
3. Later downloads are served from the file by :meth:`ImageCache.open`, which checks the
   entry against the image (a re-uploaded image has another checksum) and the file's
   size and seal on disk first; a file that fails is moved to ``invalid/`` and forgotten.
4. The file leaves through :meth:`ImageCache.evict` (the image was deleted or deactivated
   on this node), :meth:`ImageCache.remove`/:meth:`ImageCache.clear` (an operator),
   :meth:`ImageCache.prune` (least recently used first, down to ``image_cache_max_size``)
   or :meth:`ImageCache.clean`, which also re-hashes every cached file (bit rot,
   tampering), empties ``invalid/``, removes stalled ``incomplete/`` files, the files
   and entries that lost their other half and what it holds of deleted images. A delete
   on any node drops every node's entry at once (:meth:`ImageCache.forget`).

A queued image (:meth:`ImageCache.queue`) goes through the same fill when
:meth:`ImageCache.prefetch` reads it. :meth:`ImageCache.schedule` has prune, clean and
prefetch run periodically inside the API process (:class:`abbild.periodic.Periodic`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from abbild.errors import ConfigError, ImageNotFound, Invalid, RegistryError
from abbild.image import Image, Status
from abbild.periodic import Periodic
from abbild.registry import CacheEntry, Registry
from abbild.streams import ImageStream, read_chunks

LOG = logging.getLogger(__name__)

INCOMPLETE = "incomplete"
INVALID = "invalid"
TASKS = ("prune", "clean", "prefetch")
CLEAR_TARGETS = ("cache", "queue", "")

# Image ids become file names: nothing that could leave the directory or name a
# subdirectory or a lock file.
_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")

# What the cache may meet and survive: the disk (full, permissions) and the registry.
# Anything else is a bug and propagates.
_FAULTS = (OSError, RegistryError)

Reader = Callable[[str], tuple[Image, Iterable[bytes]] | None]


def _checked_id(image_id: str) -> str:
    if not _ID.fullmatch(image_id) or image_id in (INCOMPLETE, INVALID):
        raise Invalid(f"{image_id!r} is not an image id.")
    return image_id


def _seal(image: Image) -> int:
    """The mtime (ns) of a published copy: its image's creation, a whole second. Any
    later write moves it (to a time with a fraction of a second, even within that same
    second), so a copy written to is never served; bit rot, which writes nothing, is for
    the cleaner's re-hash to find."""
    created = image.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.timezone.utc)
    return int(created.timestamp()) * 1_000_000_000


class ImageCache:
    """This node's cache: files under image_cache_dir, entries in the registry's cache index."""

    def __init__(self, conf, registry: Registry, node: str) -> None:
        if not conf.image_cache_dir:
            raise ConfigError("The image cache needs image_cache_dir.")
        self.conf = conf
        self.registry = registry
        self.node = node
        self.directory = os.path.abspath(conf.image_cache_dir)
        for sub in ("", INCOMPLETE, INVALID):
            os.makedirs(os.path.join(self.directory, sub), mode=0o700, exist_ok=True)

    @classmethod
    def from_config(cls, conf, registry: Registry) -> ImageCache | None:
        """This node's cache, or ``None`` when ``image_cache_dir`` is unset."""
        if not conf.image_cache_dir:
            return None
        node = conf.worker_self_reference_url
        if node:
            node = node.rstrip("/")
        else:
            # bind_port is registered only where the embedded server runs; under
            # mod_wsgi the node should be named with worker_self_reference_url.
            port = conf.bind_port if "bind_port" in conf else 9292
            node = f"http://{socket.gethostname()}:{port}"
        return cls(conf, registry, node)

    # -- paths ----------------------------------------------------------------------------

    def _path(self, image_id: str, sub: str = "") -> str:
        return os.path.join(self.directory, sub, _checked_id(image_id))

    def _files(self, sub: str = "") -> list[str]:
        """Image ids with a file in *sub* (the complete files by default)."""
        with os.scandir(os.path.join(self.directory, sub)) as it:
            return [e.name for e in it if _ID.fullmatch(e.name) and e.is_file(follow_symlinks=False)]

    def _entry(self, image_id: str) -> CacheEntry | None:
        entries = self.registry.cache_entries(self.node, image_id)
        return entries[0] if entries else None

    def _quarantine(self, image_id: str, sub: str = "") -> None:
        """Move a file that must never be served to invalid/ (the cleaner removes it)."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._path(image_id, sub), self._path(image_id, INVALID))

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self, task: str, wait: bool = True) -> Iterator[bool]:
        """Hold this node's lock of *task* (one of :data:`TASKS`), shared by every process
        using the directory; yields whether it was acquired (``wait=False`` does not
        wait for a holder)."""
        if task not in TASKS:
            raise ValueError(f"unknown cache task {task!r}")
        fd = os.open(os.path.join(self.directory, f".{task}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    # -- serving and filling ------------------------------------------------------------

    def cacheable(self, image: Image) -> bool:
        return image.status == Status.ACTIVE and image.size is not None and image.checksum is not None

    def open(self, image: Image) -> BinaryIO | None:
        """A verified cached copy of *image*'s data, opened for reading, or ``None``.
        A copy that no longer fits the image is moved to invalid/ and forgotten."""
        if not self.cacheable(image):
            return None
        try:
            entry = self._entry(image.id)
            if entry is None or entry.state != "cached":
                return None
            try:
                file = open(self._path(image.id), "rb")
            except FileNotFoundError:
                LOG.warning("cache: %s is indexed but its file is gone; forgetting it", image.id)
                self.registry.cache_remove(self.node, image.id)
                return None
            stat = os.fstat(file.fileno())
            if (
                entry.checksum != image.checksum
                or entry.size != image.size
                or stat.st_size != image.size
                or stat.st_mtime_ns != _seal(image)
            ):
                file.close()
                LOG.warning(
                    "cache: %s does not match its image (checksum %s, size %s; on disk %s bytes, "
                    "written to at %s; the image has %s, %s); moved to invalid/",
                    image.id,
                    entry.checksum,
                    entry.size,
                    stat.st_size,
                    stat.st_mtime,
                    image.checksum,
                    image.size,
                )
                self._quarantine(image.id)
                self.registry.cache_remove(self.node, image.id)
                return None
            try:
                self.registry.cache_hit(self.node, image.id)
            except BaseException:
                file.close()
                raise
            return file
        except _FAULTS:
            LOG.exception("cache: cannot serve %s from the cache; serving it from its store", image.id)
            return None

    def fill(self, image: Image, chunks: Iterable[bytes]) -> Iterable[bytes]:
        """*chunks*, written to the cache as they pass (see :class:`_Fill`); *chunks*
        itself when the image is not cacheable, already cached or being filled."""
        if not self.cacheable(image):
            return chunks
        try:
            path = self._path(image.id, INCOMPLETE)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return chunks  # another download is filling it
        except (OSError, Invalid):
            LOG.exception("cache: cannot cache %s", image.id)
            return chunks
        file = os.fdopen(fd, "wb")
        try:
            if os.path.exists(self._path(image.id)):
                # A fill that ended while this download was looking for the file.
                file.close()
                os.unlink(path)
                return chunks
            return _Fill(self, image, chunks, file)
        except (OSError, ValueError):
            LOG.exception("cache: cannot cache %s", image.id)
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            return chunks

    def _publish(self, image: Image, inode: int, size: int, checksum: str) -> bool:
        """Move a verified, fsynced incomplete file into place and record it."""
        incomplete, final = self._path(image.id, INCOMPLETE), self._path(image.id)
        try:
            ours = os.stat(incomplete).st_ino == inode
        except FileNotFoundError:
            ours = False
        if not ours:  # evicted (or cleaned as stalled) while it was written
            return False
        os.replace(incomplete, final)
        self._fsync_directory()
        try:
            self.registry.cache_put(CacheEntry(self.node, image.id, "cached", size=size, checksum=checksum))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(final)
            raise
        return True

    # -- the index ------------------------------------------------------------------------

    def cached(self) -> list[CacheEntry]:
        """This node's cached images."""
        return [e for e in self.registry.cache_entries(self.node) if e.state == "cached"]

    def queued(self) -> list[CacheEntry]:
        """The images this node's prefetcher is to fetch."""
        return [e for e in self.registry.cache_entries(self.node) if e.state == "queued"]

    def queue(self, image_id: str) -> None:
        """Queue *image_id* for the prefetcher, unless it is cached already."""
        entry = self._entry(_checked_id(image_id))
        if entry is None or entry.state != "cached":
            self.registry.cache_put(CacheEntry(self.node, image_id, "queued"))

    def remove(self, image_id: str) -> bool:
        """Remove *image_id* from the cache and the queue (and stop a fill in progress);
        whether there was anything to remove."""
        removed = False
        for sub in ("", INCOMPLETE):
            try:
                os.unlink(self._path(image_id, sub))
                removed = True
            except FileNotFoundError:
                pass
        return self.registry.cache_remove(self.node, image_id) or removed

    def evict(self, image_id: str) -> None:
        """:meth:`remove`, for deletes and deactivations: its faults are only logged."""
        try:
            self.remove(image_id)
        except _FAULTS:
            LOG.exception("cache: could not evict %s (the cleaner will)", image_id)

    def forget(self, image_id: str) -> None:
        """For deletes: :meth:`evict`, and drop every other node's entry for the image, so
        no node lists it any more and each node's cleaner removes its file (an entry-less
        file is never served). Faults are only logged: the cleaners also drop the entries
        of deleted images."""
        self.evict(image_id)
        try:
            for entry in self.registry.cache_entries(image_id=image_id):
                self.registry.cache_remove(entry.node, image_id)
        except _FAULTS:
            LOG.exception("cache: could not drop the other nodes' entries of %s (their cleaners will)", image_id)

    def clear(self, target: str = "") -> int:
        """Remove every cached image (``"cache"``), every queued one (``"queue"``) or
        both (``""``); how many were removed."""
        if target not in CLEAR_TARGETS:
            raise Invalid(f"The cache clear target must be 'cache', 'queue' or empty, not {target!r}.")
        ids: set[str] = set()
        if target in ("cache", ""):
            ids.update(e.image_id for e in self.cached())
            ids.update(self._files())
        if target in ("queue", ""):
            ids.update(e.image_id for e in self.queued())
        return sum(self.remove(image_id) for image_id in sorted(ids))

    # -- maintenance ----------------------------------------------------------------------

    def clean(self, stopping: threading.Event | None = None) -> dict:
        """Remove stalled incomplete files, everything in invalid/, complete files without
        a ``cached`` entry and entries without a file ("orphans"), the copies and queued
        entries of images deleted meanwhile, perhaps on another node ("deleted"), and cached
        files whose content no longer matches their entry ("corrupt": each is re-hashed).
        Counts of each. *stopping* ends the work early (graceful shutdown)."""
        counts = {"stalled": 0, "invalid": 0, "orphans": 0, "deleted": 0, "corrupt": 0}
        stall_before = time.time() - self.conf.image_cache_stall_time
        for image_id in self._files(INCOMPLETE):
            path = self._path(image_id, INCOMPLETE)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < stall_before:
                    os.unlink(path)
                    counts["stalled"] += 1
        for image_id in self._files(INVALID):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(image_id, INVALID))
                counts["invalid"] += 1

        for entry in self.registry.cache_entries(self.node):
            if self._deleted(entry.image_id) and self.remove(entry.image_id):
                counts["deleted"] += 1

        # The entries are read before the files are listed, so a fill published in
        # between (renamed, not yet recorded) is asked about again before it goes.
        entries = {e.image_id: e for e in self.cached()}
        for image_id in self._files():
            if image_id not in entries and self._orphan(image_id):
                counts["orphans"] += 1
        for entry in entries.values():
            if stopping is not None and stopping.is_set():
                break
            verdict = self._check(entry, stopping)
            if verdict in counts:
                counts[verdict] += 1
        return counts

    def _deleted(self, image_id: str) -> bool:
        try:
            return self.registry.get_image(image_id, include_deleted=True).status is Status.DELETED
        except ImageNotFound:
            return True

    def _orphan(self, image_id: str) -> bool:
        entry = self._entry(image_id)
        if entry is not None and entry.state == "cached":
            return False
        try:
            os.unlink(self._path(image_id))
        except FileNotFoundError:
            return False
        LOG.warning("cache: %s had no cache entry; removed", image_id)
        return True

    def verify(self, stopping: threading.Event | None = None, remove: bool = False) -> dict[str, str]:
        """The cleaner's re-hash of every cached file, for the auditor: image id ->
        ``"orphans"`` (the file is gone) or ``"corrupt"`` (its bytes changed), for each
        that fails; removed with its entry only when *remove*."""
        failed = {}
        for entry in self.cached():
            if stopping is not None and stopping.is_set():
                break
            verdict = self._check(entry, stopping, remove)
            if verdict is not None:
                failed[entry.image_id] = verdict
        return failed

    def _check(self, entry: CacheEntry, stopping: threading.Event | None, remove: bool = True) -> str | None:
        """Re-hash one cached file: ``"orphans"`` if it is gone (its entry is removed),
        ``"corrupt"`` if its bytes changed (file and entry removed), else ``None``.
        Without *remove* it only says so."""
        path = self._path(entry.image_id)
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            if not remove:
                return "orphans" if self._entry(entry.image_id) is not None else None
            return "orphans" if self.registry.cache_remove(self.node, entry.image_id) else None
        with file:
            inode = os.fstat(file.fileno()).st_ino
            md5, size = hashlib.md5(usedforsecurity=False), 0
            for chunk in read_chunks(file):
                if stopping is not None and stopping.is_set():
                    return None
                md5.update(chunk)
                size += len(chunk)
        if size == entry.size and md5.hexdigest() == entry.checksum:
            return None
        # Gone or replaced meanwhile (evicted, filled again): not this file's fault.
        fresh = self._entry(entry.image_id)
        try:
            replaced = os.stat(path).st_ino != inode
        except FileNotFoundError:
            replaced = True
        if replaced or fresh is None or fresh.checksum != entry.checksum:
            return None
        if not remove:
            return "corrupt"
        LOG.warning(
            "cache: %s changed on disk (%s bytes, md5 %s; its entry says %s bytes, md5 %s); removed",
            entry.image_id,
            size,
            md5.hexdigest(),
            entry.size,
            entry.checksum,
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.registry.cache_remove(self.node, entry.image_id)
        return "corrupt"

    def prune(self) -> dict:
        """Remove cached images, least recently used first, until they hold no more than
        ``image_cache_max_size`` bytes together."""
        entries = self.cached()
        total = sum(e.size or 0 for e in entries)
        oldest = datetime.datetime.min

        def last_used(entry: CacheEntry) -> datetime.datetime:
            return entry.last_accessed or entry.last_modified or oldest

        files = pruned = 0
        for entry in sorted(entries, key=last_used):
            if total <= self.conf.image_cache_max_size:
                break
            if self.remove(entry.image_id):
                files += 1
                pruned += entry.size or 0
            total -= entry.size or 0
        return {"total_files_pruned": files, "total_bytes_pruned": pruned}

    def run_task(self, task: str, read: Reader, stopping: threading.Event) -> object:
        """One run of *task* (one of :data:`TASKS`) now, for the periodic runner: its
        result, or ``None`` when another process of this node is running it (holds its
        lock)."""
        with self.lock(task, wait=False) as locked:
            if not locked:
                LOG.debug("cache: %s is running in another process; skipped", task)
                return None
            if task == "prune":
                return self.prune()
            if task == "clean":
                return self.clean(stopping)
            return self.prefetch(read, stopping=stopping)

    def schedule(self, periodic: Periodic, read: Reader) -> None:
        """Add this node's prune, clean and prefetch to *periodic*, each every
        ``image_cache_<task>_interval`` seconds (0: never). Every worker process of the
        node may run them: the task's lock lets one at a time do each."""
        for task in TASKS:
            interval = getattr(self.conf, f"image_cache_{task}_interval")
            run = functools.partial(self.run_task, task, read)
            periodic.add(f"cache {task}", interval, run, deployment_wide=False)

    def prefetch(
        self,
        read: Reader,
        progress: Callable[[str, int, int], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> list[str]:
        """Fetch every queued image into the cache: ``read(image_id)`` gives the image and
        its data chunks, or ``None`` when it is gone or not active (its queue entry is
        dropped); ``progress(image_id, bytes_done, total)`` after each chunk. Returns the
        ids cached now. A read or a fill that fails leaves the image queued, but data that
        does not match its image is dropped from the queue (it would fail again).
        *stopping* ends the work early, the image in progress is not cached."""
        done: list[str] = []
        for entry in self.queued():
            if stopping is not None and stopping.is_set():
                break
            image_id = entry.image_id
            try:
                got = read(image_id)
            except Exception:
                LOG.exception("cache: cannot read queued image %s; it stays queued", image_id)
                continue
            if got is None or not self.cacheable(got[0]):
                LOG.info("cache: queued image %s is gone or not active; dropped from the queue", image_id)
                if got is not None:
                    _close(got[1])
                self.registry.cache_remove(self.node, image_id)
                continue
            image, chunks = got
            fill = self.fill(image, chunks)
            if not isinstance(fill, _Fill):
                _close(chunks)  # being filled by a download right now, or failed to start
                continue
            fetched = 0
            try:
                for chunk in fill:
                    fetched += len(chunk)
                    if progress is not None:
                        progress(image_id, fetched, image.size)
                    if stopping is not None and stopping.is_set():
                        break
            except Exception:
                LOG.exception("cache: prefetching %s failed; it stays queued", image_id)
            finally:
                fill.close()
            if fill.result == "cached":
                done.append(image_id)
            elif fill.result == "invalid":
                self.registry.cache_remove(self.node, image_id)
        return done


def _close(chunks: Iterable[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


class _Fill:
    """What :meth:`ImageCache.fill` returns: the store's chunks, the same objects, while
    they are written to ``incomplete/<id>`` and hashed on another thread (hashlib
    releases the GIL for chunks this big, so the download does not wait for it). Not a generator:
    ``close()`` must discard the file even when iteration never began.

    ``result`` is ``"cached"`` once published, ``"invalid"`` when the data did not match
    the image, ``None`` otherwise.
    """

    def __init__(self, cache: ImageCache, image: Image, chunks: Iterable[bytes], file: BinaryIO) -> None:
        self._cache, self._image, self._source, self._file = cache, image, chunks, file
        self._inode = os.fstat(file.fileno()).st_ino
        self._plain = iter(chunks)
        # One hash verifies the copy: os_hash_value where the image has one (the same
        # bytes as the stronger hash means the same bytes), else the md5 checksum.
        strong = bool(image.os_hash_algo and image.os_hash_value)
        self._stream = ImageStream(self._plain, hash_algo=image.os_hash_algo if strong else None, md5=not strong)
        self._hashing = iter(self._stream)
        self._it: Iterator[bytes] = self._hashing
        self.result: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._it)
        except StopIteration:
            if self._file is not None:
                self._finish()
            raise
        except BaseException:
            self._discard()
            raise
        if self._file is not None:
            try:
                self._file.write(chunk)
            except OSError:
                LOG.exception("cache: cannot write %s; serving it uncached", self._image.id)
                self._discard()
        return chunk

    def close(self) -> None:
        """The download ended early: discard the partial file, release the store."""
        self._discard()
        _close(self._source)

    def _discard(self) -> None:
        """Stop caching; the chunks still flow, unhashed."""
        file, self._file = self._file, None
        if file is None:
            return
        self._hashing.close()  # ends the hash threads
        self._it = self._plain
        with contextlib.suppress(OSError):
            file.close()
        path = self._cache._path(self._image.id, INCOMPLETE)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self._inode:
                os.unlink(path)

    def _finish(self) -> None:
        image, stream = self._image, self._stream
        wrong = []
        if stream.size != image.size:
            wrong.append(f"{stream.size} bytes instead of {image.size}")
        if stream.checksum is not None and stream.checksum != image.checksum:
            wrong.append(f"md5 {stream.checksum} instead of {image.checksum}")
        if stream.os_hash_value is not None and stream.os_hash_value != image.os_hash_value:
            wrong.append(f"{image.os_hash_algo} {stream.os_hash_value} instead of {image.os_hash_value}")
        file, self._file = self._file, None
        try:
            if wrong:
                file.close()
                LOG.error("cache: the store's data of %s has %s; moved to invalid/", image.id, ", ".join(wrong))
                self._cache._quarantine(image.id, INCOMPLETE)
                self.result = "invalid"
                return
            file.flush()
            os.utime(file.fileno(), ns=(_seal(image), _seal(image)))
            os.fsync(file.fileno())
            file.close()
            if self._cache._publish(image, self._inode, stream.size, image.checksum):
                self.result = "cached"
        except _FAULTS:
            LOG.exception("cache: cannot publish %s; not cached", image.id)
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(OSError):
                if os.stat(self._cache._path(image.id, INCOMPLETE)).st_ino == self._inode:
                    os.unlink(self._cache._path(image.id, INCOMPLETE))
