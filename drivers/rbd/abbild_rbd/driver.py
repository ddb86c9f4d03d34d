"""The rbd store: one Ceph RBD image per object, with a protected snapshot that
compute and volume services can clone copy-on-write."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime
import errno
import logging
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator

from abbild.driver import Capability, Driver, ListedObject, StoredObject
from abbild.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    ConfigError,
    InUse,
    NotFound,
    StoreError,
    StoreFull,
)
from abbild.streams import ChunkReader
from abbild_rbd import opts

LOG = logging.getLogger(__name__)

MiB = 1 << 20
# Reads and writes go in pieces of at most this much, whatever the object size: an
# upload holds each write in flight twice (see _write), and 6 pieces of 4 MiB at a
# time keep up with `rbd import` where 3 of 8 MiB did not.
IO_SIZE = 4 * MiB
GiB = 1 << 30
#: The snapshot every stored image gets, as Glance names it: clones refer to it.
SNAP = "snap"
# check() creates and removes an image named so; no upload's key starts like this.
PROBE_PREFIX = "abbild-check-"
# An image of unknown size doubles while it is written, by at most this much at a time.
MAX_GROWTH = 8 * GiB

_UNAVAILABLE = {errno.ETIMEDOUT, errno.ESHUTDOWN, errno.EINTR, errno.ECONNREFUSED, errno.ENOTCONN}

INSTALL_HINT = (
    "install Ceph's Python bindings: apt-get install python3-rados python3-rbd (Debian, Ubuntu) "
    "or dnf install python3-rados python3-rbd; for a Python other than the system's, link the "
    "two modules into its site-packages (tools/ceph-up.sh shows how)"
)


def grown_size(capacity: int, needed: int, unit: int) -> int:
    """New size of an image that holds *capacity* bytes and must now hold *needed*:
    double it, growing by at most 8 GiB, in whole *unit* s."""
    target = max(needed, capacity + min(max(capacity, unit), MAX_GROWTH))
    return -(-target // unit) * unit


class RBDDriver(Driver):
    """Stores objects as RBD images named after their key in ``pool``.

    ``put`` writes the image, then creates the snapshot ``snap`` and protects it; the
    URI ``rbd://<fsid>/<pool>/<image>/snap`` names that snapshot, which is what Nova and
    Cinder clone. The short form ``rbd://<image>`` (older Glance) reads the image itself
    in ``pool``.
    """

    schemes = ("rbd",)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ | Capability.LIST
    options = opts.OPTS

    def configure(self) -> Capability:
        """Import Ceph's modules and read the Ceph config (no network yet: the
        connection is made on first use, so a cluster that is down at start-up is
        reported by ``check()`` and each request, not by a failed start).

        :raises abbild.errors.ConfigError: rados/rbd missing, no pool, or a config or
            keyring file that cannot be read.
        """
        conf, store = self.conf, self.store_name
        try:
            import rados
            import rbd
        except ImportError as exc:
            raise ConfigError(
                f"store {store!r} (rbd) cannot import Ceph's Python modules ({exc}); {INSTALL_HINT}"
            ) from exc
        self._rados, self._rbd = rados, rbd
        if not conf.pool:
            raise ConfigError(f"store {store!r}: option 'pool' is empty; set [{store}] pool")
        for option in ("ceph_conf", "keyring"):
            path = getattr(conf, option)
            if path and not os.path.isfile(path):
                raise ConfigError(f"store {store!r}: {option} {path!r} does not exist; set [{store}] {option}")
        try:
            # Reads the config file (librados searches the usual places for ""), and
            # lets it go again: the real handle is made after the server forked.
            self._new_cluster().shutdown()
        except rados.Error as exc:
            raise ConfigError(
                f"store {store!r}: cannot read the Ceph config "
                f"{conf.ceph_conf or '(searched $CEPH_CONF, /etc/ceph/ceph.conf, ~/.ceph/config)'}: "
                f"{exc}; set [{store}] ceph_conf"
            ) from exc
        self._connect_lock = threading.Lock()
        self._cluster = None
        self._fsid: str | None = None
        self._chunk_size = conf.chunk_size * MiB
        self._order = self._chunk_size.bit_length() - 1
        self._io_size = min(self._chunk_size, IO_SIZE)
        self._in_flight = conf.ios_in_flight
        return type(self).capabilities

    def check(self) -> str:
        """Connect, and create and remove a probe image in the pool."""
        probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        pool = self.conf.pool
        with self._ioctx(pool, probe, writing=True) as ioctx, self._errors(probe, writing=True):
            self._rbd.RBD().create(ioctx, probe, 0, order=self._order)
            self._rbd.RBD().remove(ioctx, probe)
        return f"ok: pool {pool} in Ceph cluster {self._fsid}"

    def properties(self) -> dict[str, object]:
        return {"pool": self.conf.pool, "chunk_size": self._chunk_size}

    # -- reading ----------------------------------------------------------------------

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        pool, name, snap = self._parse(uri)
        # Opened here, not in the iterator, so a missing image raises on the call.
        ioctx = self._ioctx(pool, uri)
        try:
            with self._errors(uri):
                image = self._rbd.Image(ioctx, name, snapshot=snap, read_only=True)
                try:
                    size = image.size()
                except BaseException:
                    image.close()
                    raise
        except BaseException:
            ioctx.close()
            raise
        end = size if length is None else min(size, offset + length)
        # Reads ahead: up to ios_in_flight pieces requested before they are wanted.
        readers = _Workers(self._in_flight, "rbd-read")
        ahead: collections.deque[concurrent.futures.Future] = collections.deque()
        requested = offset

        def request_more() -> None:
            nonlocal requested
            while len(ahead) < self._in_flight and requested < end:
                n = min(self._io_size, end - requested)
                ahead.append(readers.submit(image.read, requested, n))
                requested += n

        def read(want: int) -> bytes:
            # ChunkReader asks for min(io size, what is left): just what was requested.
            with self._errors(uri):
                request_more()
                if not ahead:
                    return b""
                return ahead.popleft().result()

        def close() -> None:
            try:
                ahead.clear()
                readers.stop()  # the image must not be closed under a read
                image.close()
            finally:
                ioctx.close()

        return ChunkReader(read, close, length=max(0, end - offset), chunk_size=self._io_size)

    def size(self, uri: str) -> int:
        pool, name, snap = self._parse(uri)
        with self._ioctx(pool, uri) as ioctx, self._errors(uri):
            with self._rbd.Image(ioctx, name, snapshot=snap, read_only=True) as image:
                return image.size()

    def list_objects(self) -> Iterator[ListedObject]:
        """The pool's images that carry the snapshot ``snap``, dated by it: an image
        without it is a put in progress (or one that died, for ``discard``)."""
        pool = self.conf.pool
        with self._ioctx(pool, f"pool {pool}", writing=True) as ioctx, self._errors(f"pool {pool}"):
            for name in self._rbd.RBD().list(ioctx):
                if name.startswith(PROBE_PREFIX):
                    continue
                try:
                    with self._rbd.Image(ioctx, name, read_only=True) as image:
                        snap = next((s for s in image.list_snaps() if s["name"] == SNAP), None)
                        if snap is None:
                            continue
                        taken = image.get_snap_timestamp(snap["id"])
                        if taken.tzinfo is None:  # librbd's naive datetimes are UTC
                            taken = taken.replace(tzinfo=datetime.timezone.utc)
                except self._rbd.ImageNotFound:
                    continue  # removed meanwhile
                yield ListedObject(name, self._uri(pool, name, SNAP), snap["size"], taken.timestamp())

    def key_of(self, uri: str) -> str | None:
        try:
            pool, name, _ = self._parse(uri)
        except NotFound:
            return None
        return name if pool == self.conf.pool else None

    # -- writing ----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        self._check_key(key)
        pool = self.conf.pool
        with self._ioctx(pool, key, writing=True) as ioctx:
            with self._errors(key, writing=True):
                try:
                    self._create(ioctx, key, size)
                except self._rbd.ImageExists:
                    if not self._unfinished(ioctx, key):
                        raise
                    # An earlier put of this key that failed and could not remove its
                    # image (the pool was full): only one put of a key runs at a time.
                    self._remove(ioctx, key)
                    self._create(ioctx, key, size)
            try:
                with self._errors(key, writing=True), self._rbd.Image(ioctx, key) as image:
                    written = self._write(image, chunks)
                    image.flush()  # out of librbd's cache and acknowledged by the OSDs
                    image.create_snap(SNAP)
                    image.protect_snap(SNAP)
            except BaseException:
                self._remove_quietly(ioctx, key)
                raise
        return StoredObject(uri=self._uri(pool, key, SNAP), size=written)

    def _create(self, ioctx, key: str, size: int | None) -> None:
        # Features come from the cluster's rbd_default_features (layering, for clones).
        self._rbd.RBD().create(ioctx, key, size or 0, order=self._order, old_format=False)

    def _unfinished(self, ioctx, key: str) -> bool:
        """Whether image *key* lacks the snapshot every finished put creates."""
        try:
            with self._rbd.Image(ioctx, key, read_only=True) as image:
                return all(snap["name"] != SNAP for snap in image.list_snaps())
        except self._rbd.ImageNotFound:
            return True

    def _write(self, image, chunks: Iterable[bytes]) -> int:
        """Write *chunks* in pieces of IO_SIZE (or the object size, if smaller),
        ``ios_in_flight`` at a time, skipping the all-zero ones (a new image reads as
        zeros already), growing the image when they outrun it and trimming it to the
        bytes written at the end. :returns: that number.

        Each piece is gathered in one reused buffer and written from a copy of it
        (librbd's blocking write takes bytes only, and copies them once more).
        """
        unit = self._io_size
        capacity, offset = image.size(), 0
        writers = _Workers(self._in_flight, "rbd-write")
        in_flight: collections.deque[concurrent.futures.Future] = collections.deque()
        buffer = bytearray(unit)
        gathered = memoryview(buffer)

        def write(filled: int) -> None:
            nonlocal capacity, offset
            end = offset + filled
            if end > capacity:
                capacity = grown_size(capacity, end, unit)
                image.resize(capacity)  # growing only: the writes in flight stay inside
            start, offset = offset, end
            if buffer.count(0, 0, filled) == filled:
                return
            data = bytes(gathered[:filled])
            # Wait for a free slot first: that is the memory bound.
            while len(in_flight) >= self._in_flight:
                in_flight.popleft().result()
            in_flight.append(writers.submit(image.write, data, start))

        try:
            filled = 0
            for chunk in chunks:  # what the iterator raises propagates unchanged
                view = memoryview(chunk)
                while view:
                    n = min(unit - filled, len(view))
                    gathered[filled : filled + n] = view[:n]
                    filled, view = filled + n, view[n:]
                    if filled == unit:
                        write(filled)
                        filled = 0
            if filled:
                write(filled)
            while in_flight:
                in_flight.popleft().result()
        finally:
            # On failure too: the image must not be closed (or removed) under a write.
            writers.stop()
        if capacity != offset:
            image.resize(offset)
        return offset

    def delete(self, uri: str) -> None:
        """Unprotect and remove the snapshot, then the image. No pool, image or
        snapshot by that name: there is nothing to delete.

        :raises abbild.errors.InUse: the snapshot has clones, the image has other
            snapshots, or it is open elsewhere; nothing was changed then (Glance: 409).
        """
        with contextlib.suppress(NotFound):
            pool, name, snap = self._parse(uri)
            with self._ioctx(pool, uri) as ioctx, self._errors(uri):
                with self._rbd.Image(ioctx, name) as image:
                    snaps = {s["name"] for s in image.list_snaps()}
                    if snap is not None and snap not in snaps:
                        return
                    others = sorted(snaps - {snap})
                    if others:
                        raise InUse(uri, f"the image has other snapshots ({', '.join(others)})")
                    if snap is not None:
                        if image.is_protected_snap(snap):
                            self._unprotect(image, snap, uri)
                        image.remove_snap(snap)
                self._rbd.RBD().remove(ioctx, name)

    def discard(self, key: str) -> None:
        """Remove the image *key* with all its snapshots, complete or partial."""
        self._check_key(key)
        with self._ioctx(self.conf.pool, key, writing=True) as ioctx, self._errors(key, writing=True):
            self._remove(ioctx, key)

    # -- helpers ----------------------------------------------------------------------

    def _remove(self, ioctx, name: str) -> None:
        """Remove image *name* and its snapshots; nothing if there is no such image."""
        rbd = self._rbd
        try:
            with rbd.Image(ioctx, name) as image:
                for snap in image.list_snaps():
                    if image.is_protected_snap(snap["name"]):
                        self._unprotect(image, snap["name"], name)
                    image.remove_snap(snap["name"])
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound as exc:
            # librbd says so too when it could not move the image to the pool's trash
            # (a full pool): only an image that cannot be opened is gone.
            try:
                rbd.Image(ioctx, name, read_only=True).close()
            except rbd.ImageNotFound:
                return
            raise BackendError(
                self.store_name, f"{name}: librbd could not remove the image; is the pool full?"
            ) from exc

    def _remove_quietly(self, ioctx, key: str) -> None:
        """Remove what a failed put left, keeping the original failure the one raised."""
        try:
            self._remove(ioctx, key)
        except Exception as exc:
            LOG.warning(
                "store %r: could not remove partial image %s: %s; discard() will retry", self.store_name, key, exc
            )

    def _unprotect(self, image, snap: str, what: str) -> None:
        try:
            image.unprotect_snap(snap)
        except self._rbd.ImageBusy as exc:
            children = ", ".join("/".join(child) for child in image.list_children()) or "unknown"
            raise InUse(what, f"snapshot {snap!r} has clones ({children}); flatten or delete them first") from exc

    def _new_cluster(self):
        """:returns: a cluster handle, not yet connected."""
        conf = self.conf
        settings = {"keyring": conf.keyring} if conf.keyring else {}
        # librbd's cache (32 MiB per open image) only adds memory to whole-image streams:
        # every download would fill it with data read once, and uploads hold the writes
        # in flight already.
        settings["rbd_cache"] = "false"
        if conf.connect_timeout:
            # Rados.connect() ignores its timeout argument: librados reads these.
            settings["client_mount_timeout"] = str(conf.connect_timeout)
            settings["rados_mon_op_timeout"] = str(conf.connect_timeout)
        if conf.op_timeout:
            settings["rados_osd_op_timeout"] = str(conf.op_timeout)
        return self._rados.Rados(conffile=conf.ceph_conf, rados_id=conf.user, conf=settings)

    def _connected(self):
        """:returns: the cluster handle, connecting on first use (one per process:
        librados handles do not survive a fork, and are safe to share between threads)."""
        with self._connect_lock:
            if self._cluster is None:
                cluster = self._new_cluster()
                try:
                    cluster.connect()
                    self._fsid = cluster.get_fsid()
                except self._rados.Error as exc:
                    cluster.shutdown()
                    raise self._connect_error(exc) from exc
                self._cluster = cluster
        return self._cluster

    def _connect_error(self, exc) -> StoreError:
        store, user = self.store_name, self.conf.user or "admin"
        code = getattr(exc, "errno", None)
        if code in (errno.EACCES, errno.EPERM):
            return AccessDenied(store, f"Ceph refused client.{user}: check [{store}] user and keyring ({exc})")
        if code == errno.ENOENT:  # librados: no key for the user in any keyring
            return AccessDenied(store, f"no key found for client.{user}: check [{store}] keyring ({exc})")
        return BackendUnavailable(store, f"cannot reach the Ceph monitors ({exc}); check [{store}] ceph_conf")

    def _ioctx(self, pool: str, what: str, *, writing: bool = False):
        """:returns: an I/O context on *pool* (a context manager that closes it). A
        missing pool is NotFound for a URI being read, and a BackendError naming the
        fix for the store's own pool."""
        cluster = self._connected()
        try:
            ioctx = cluster.open_ioctx(pool)
            # Ceph pauses the writes to a full pool (or cluster) until there is room
            # again, which an upload would wait for until the op timeout, if any. Asked
            # to try, the OSDs refuse them at once: ENOSPC, or EDQUOT for a pool quota.
            ioctx.set_osdmap_full_try()
            return ioctx
        except self._rados.ObjectNotFound as exc:
            if not writing:
                raise NotFound(what) from exc
            raise BackendError(
                self.store_name,
                f"pool {pool!r} does not exist; create it with 'ceph osd pool create {pool} && "
                f"rbd pool init {pool}' or set [{self.store_name}] pool",
            ) from exc
        except self._rados.Error as exc:
            raise self._store_error(exc, what, writing) from exc

    @contextlib.contextmanager
    def _errors(self, what: str, *, writing: bool = False):
        """Translate Ceph's exceptions about *what* (a URI, or the key when *writing*)
        into :class:`StoreError`; everything else passes unchanged."""
        try:
            yield
        except (self._rbd.Error, self._rados.Error) as exc:
            raise self._store_error(exc, what, writing) from exc

    def _store_error(self, exc, what: str, writing: bool) -> StoreError:
        code, store = getattr(exc, "errno", None), self.store_name
        if code == errno.ENOENT and not writing:
            return NotFound(what)
        if code == errno.EEXIST and writing:
            return AlreadyExists(what)
        if code in (errno.EBUSY, errno.ENOTEMPTY):
            return InUse(what, str(exc))
        if code == errno.EDQUOT:
            return StoreFull(store, f"pool {self.conf.pool!r} has reached its quota ({exc})")
        if code == errno.ENOSPC:
            return StoreFull(store, f"the Ceph cluster is full ({exc})")
        if code in (errno.EACCES, errno.EPERM):
            return AccessDenied(store, f"{exc}; check the caps of [{store}] user on pool {self.conf.pool!r}")
        if code in _UNAVAILABLE:
            return BackendUnavailable(store, str(exc))
        return BackendError(store, f"{what}: {exc}")

    def _check_key(self, key: str) -> None:
        # RBD names cannot hold '/' or '@' (the snapshot separator).
        if not key or "/" in key or "@" in key or len(key.encode("utf-8", "surrogatepass")) > 4096:
            raise AccessDenied(self.store_name, f"invalid key {key!r}: no '/' or '@', at most 4096 bytes")

    def _uri(self, pool: str, name: str, snap: str) -> str:
        quote = lambda part: urllib.parse.quote(part, safe="")  # noqa: E731
        return f"rbd://{quote(self._fsid)}/{quote(pool)}/{quote(name)}/{quote(snap)}"

    def _parse(self, uri: str) -> tuple[str, str, str | None]:
        """:returns: pool, image and snapshot (``None``: the image itself) of *uri*.
        :raises NotFound: not an rbd URI of this cluster."""
        if not uri.startswith("rbd://") or "?" in uri or "#" in uri:
            raise NotFound(uri)
        pieces = [urllib.parse.unquote(piece) for piece in uri[len("rbd://") :].split("/")]
        if len(pieces) == 1 and pieces[0]:
            return self.conf.pool, pieces[0], None
        if len(pieces) != 4 or not all(pieces):
            raise NotFound(uri)
        fsid, pool, name, snap = pieces
        self._connected()
        if fsid != self._fsid:  # an image of another Ceph cluster
            raise NotFound(uri)
        return pool, name, snap


class _Workers(concurrent.futures.ThreadPoolExecutor):
    """The threads of one transfer's reads or writes in flight, in librbd's blocking
    read and write (which let go of the GIL). Its asynchronous calls with a completion
    callback into Python (aio_read, aio_write) now and then hung or aborted a process
    under load with Ceph 16.2: a librbd thread blocked on a lock in freed memory, or
    aborted, after earlier images had been closed."""

    def __init__(self, count: int, name: str) -> None:
        super().__init__(max_workers=count, thread_name_prefix=name)

    def stop(self) -> None:
        """Drop what has not started; wait for what has."""
        self.shutdown(wait=True, cancel_futures=True)
