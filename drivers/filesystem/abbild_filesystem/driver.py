"""The filesystem store: one file per object, all in one directory (``datadir``)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
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
    NotFound,
    StoreError,
    StoreFull,
)
from abbild.streams import ChunkReader
from abbild_filesystem import opts
from abbild_filesystem.reader import ReadAheadFile, open_for_reading
from abbild_filesystem.writer import Writer

LOG = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
# The partial file ".<key>.partial" must fit in a file name (255 bytes on every
# common Linux filesystem).
MAX_KEY_LENGTH = 255 - len(".") - len(PARTIAL_SUFFIX)
# A leading dot is reserved for partial and probe files, so no key can name one.
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

READ_ONLY = Capability.READ | Capability.RANGE_READ | Capability.LIST


class FilesystemDriver(Driver):
    """Stores objects as files named after their key in ``datadir``.

    URIs are ``file://`` URLs of those files. ``put`` writes a partial file and links
    it into place, so readers never see half an object and a key is never overwritten.
    """

    schemes = ("file",)
    capabilities = READ_ONLY | Capability.WRITE | Capability.DELETE
    options = opts.OPTS

    def configure(self) -> Capability:
        """Create ``datadir`` if needed and find out whether it is writable.

        :returns: all capabilities, or only READ, RANGE_READ and LIST when the
            directory is not writable (logged as a warning with the reason).
        :raises abbild.errors.ConfigError: ``datadir`` is unset, cannot be created, or
            is not a directory; or ``file_perm`` is not an octal mode.
        """
        store = self.store_name
        if not self.conf.datadir:
            raise ConfigError(
                f"store {store!r}: option 'datadir' is not set; set it in the [{store}] section "
                "to the directory that holds the image data"
            )
        self._datadir = os.path.abspath(self.conf.datadir)
        try:
            os.makedirs(self._datadir, exist_ok=True)
        except OSError as exc:
            if not os.path.isdir(self._datadir):
                raise ConfigError(
                    f"store {store!r}: datadir {self._datadir!r} is not a directory and cannot be "
                    f"created ({exc.strerror}); set [{store}] datadir to a directory"
                ) from exc
        # Every URI is checked against the real path, so symlinks cannot lead outside it.
        self._root = os.path.realpath(self._datadir)
        digits = str(self.conf.file_perm)
        if not set(digits) <= set("01234567"):
            raise ConfigError(
                f"store {store!r}: file_perm {digits} is not an octal mode; "
                f"set [{store}] file_perm to digits 0-7, for example 640"
            )
        self._file_perm = int(digits, 8)
        try:
            self._probe()
        except OSError as exc:
            LOG.warning(
                "store %r: datadir %s is not writable (%s); serving it read-only",
                store,
                self._datadir,
                exc.strerror,
            )
            self._capabilities = READ_ONLY
        else:
            self._capabilities = type(self).capabilities
        return self._capabilities

    def check(self) -> str:
        if not os.path.isdir(self._root):
            raise BackendUnavailable(self.store_name, f"datadir {self._datadir} does not exist")
        if Capability.WRITE not in self._capabilities:
            return f"ok (read-only): {self._datadir}"
        with self._os_errors(self._datadir, writing=True):
            self._probe()
        return f"ok: {self._datadir}"

    def properties(self) -> dict[str, object]:
        return {"data_dir": self._datadir, "chunk_size": self.conf.chunk_size}

    # -- reading ----------------------------------------------------------------------

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        # Opening here, outside the iterator, raises NotFound on the call: the API
        # must know before it sends the response headers.
        f = self._open(uri)
        try:
            if offset:
                f.seek(offset)
            f.read_ahead(os.fstat(f.fileno()).st_size - offset if length is None else length)
        except BaseException:
            f.close()
            raise
        return ChunkReader(f.read, f.close, length=length, chunk_size=self.conf.chunk_size)

    def validate_location(self, uri: str) -> None:
        """Only files directly in this store's datadir (services register those)."""
        self._resolve(uri)

    def open_local(self, uri: str) -> ReadAheadFile:
        # Its read_ahead() lets the API keep the disk ahead of sendfile (reader.py).
        return self._open(uri)

    def size(self, uri: str) -> int:
        path = self._resolve(uri)
        with self._os_errors(uri):
            st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(uri)
        return st.st_size

    def list_objects(self) -> Iterator[ListedObject]:
        with self._os_errors(self._datadir), os.scandir(self._root) as entries:
            for entry in entries:
                if not _KEY_RE.fullmatch(entry.name):
                    continue  # partial and probe files start with a dot
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted meanwhile
                if stat.S_ISREG(st.st_mode):
                    path = os.path.join(self._datadir, entry.name)
                    yield ListedObject(entry.name, self._uri(path), st.st_size, st.st_mtime)

    def key_of(self, uri: str) -> str | None:
        try:
            return os.path.basename(self._resolve(uri))
        except NotFound:
            return None

    # -- writing ----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        final, partial = self._paths(key)
        if os.path.lexists(final):  # fail before reading a whole upload only to reject it
            raise AlreadyExists(key)
        # O_EXCL: a partial file means a put of this key is running, or crashed and
        # awaits discard(); never write into someone else's file.
        with self._os_errors(key, writing=True):
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        linked = False
        try:
            try:
                if self._file_perm:
                    with self._os_errors(key, writing=True):
                        os.fchmod(fd, self._file_perm)
                written = self._write(key, fd, chunks)
                if self.conf.fsync:
                    with self._os_errors(key, writing=True):
                        os.fsync(fd)
            finally:
                os.close(fd)
            with self._os_errors(key, writing=True):
                os.link(partial, final)  # unlike rename, fails if the key exists meanwhile
                linked = True
                os.unlink(partial)
                if self.conf.fsync:
                    _fsync_dir(self._datadir)
        except BaseException:
            _remove(partial)
            if linked:
                _remove(final)
            raise
        return StoredObject(uri=self._uri(final), size=written)

    def _write(self, key: str, fd: int, chunks: Iterable[bytes]) -> int:
        """Write *chunks* to *fd*; :returns: the bytes written.

        An upload's stream (:class:`abbild.streams.ImageStream`) is read lent: each
        chunk is written before the next is asked for, so the stream can reuse its
        buffers, and an aligned one goes to an O_DIRECT write without a copy.
        """
        lent = getattr(chunks, "lent", None)
        it = lent() if lent is not None else iter(chunks)
        writer = Writer(fd, direct=self.conf.direct_io)
        try:
            for chunk in it:  # what the iterator raises propagates unchanged
                with self._os_errors(key, writing=True):
                    writer.write(chunk)
            with self._os_errors(key, writing=True):
                return writer.finish()
        finally:
            writer.close()
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the stream's hash threads end now, not when it is collected

    def delete(self, uri: str) -> None:
        with contextlib.suppress(NotFound):  # gone already, or never an object of this store
            path = self._resolve(uri)
            with self._os_errors(uri):
                os.unlink(path)

    def discard(self, key: str) -> None:
        for path in self._paths(key):
            with self._os_errors(key, writing=True):
                _remove(path)

    # -- helpers ----------------------------------------------------------------------

    def _paths(self, key: str) -> tuple[str, str]:
        """:returns: the final and the partial path of *key*.
        :raises AccessDenied: *key* is not a valid file name for this store."""
        if not (_KEY_RE.fullmatch(key) and len(key) <= MAX_KEY_LENGTH):
            raise AccessDenied(
                self.store_name,
                f"invalid key {key!r}: use up to {MAX_KEY_LENGTH} letters, digits, '.', '_' "
                "and '-', not starting with '.'",
            )
        return os.path.join(self._datadir, key), os.path.join(self._datadir, f".{key}{PARTIAL_SUFFIX}")

    def _uri(self, path: str) -> str:
        return "file://" + urllib.parse.quote(path)

    def _resolve(self, uri: str) -> str:
        """:returns: the real path of the object file *uri* names.
        :raises NotFound: *uri* is not a ``file:`` URI of an object in this store
            (another host, a partial file, a path that leads outside ``datadir``)."""
        parts = urllib.parse.urlsplit(uri)
        path = urllib.parse.unquote(parts.path)
        if (
            parts.scheme != "file"
            or parts.netloc
            or parts.query
            or parts.fragment
            or not path.startswith("/")
            or "\0" in path
        ):
            raise NotFound(uri)
        real = os.path.realpath(path)
        head, name = os.path.split(real)
        if head != self._root or not _KEY_RE.fullmatch(name):
            raise NotFound(uri)
        return real

    def _open(self, uri: str) -> ReadAheadFile:
        path = self._resolve(uri)
        with self._os_errors(uri):
            # O_NOFOLLOW: a symlink swapped in after _resolve must not be followed.
            f = open_for_reading(path)
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise NotFound(uri)
        return f

    def _probe(self) -> None:
        """Create and remove a file in ``datadir``. :raises OSError: that failed."""
        probe = os.path.join(self._root, f".probe-{uuid.uuid4().hex}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(probe)

    @contextlib.contextmanager
    def _os_errors(self, what: str, *, writing: bool = False):
        """Translate an :class:`OSError` about *what* (a URI, or the key when *writing*)
        into a :class:`StoreError`."""
        try:
            yield
        except OSError as exc:
            raise self._store_error(exc, what, writing) from exc

    def _store_error(self, exc: OSError, what: str, writing: bool) -> StoreError:
        code = exc.errno
        if writing and code == errno.EEXIST:
            return AlreadyExists(what)
        # ELOOP: O_NOFOLLOW met a symlink; EISDIR: a directory where a file should be.
        if not writing and code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
            return NotFound(what)
        if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return StoreFull(self.store_name, exc.strerror)
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return AccessDenied(self.store_name, exc.strerror)
        # Anything else (EIO, a datadir that vanished, ...) is a broken backend.
        return BackendError(self.store_name, f"{what}: {exc.strerror}")


def _fsync_dir(path: str) -> None:
    """Make the directory entries (the new link, the removed partial) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
