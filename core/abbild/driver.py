"""The store driver interface. One driver instance serves one configured store."""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Iterable, Iterator
from typing import IO, ClassVar

from oslo_config import cfg


class Capability(enum.Flag):
    """What a store can do. The class attribute is the upper bound; ``configure()``
    returns the effective set (a datadir that is not writable drops WRITE and DELETE)."""

    NONE = 0
    READ = enum.auto()
    WRITE = enum.auto()
    DELETE = enum.auto()
    RANGE_READ = enum.auto()
    #: Users (not only services) may register locations in this store: its locations
    #: point at data the user chose and could read anyway (a public URL), never at
    #: the store's own objects, which hold other images' data. Only drivers that
    #: mean it opt in; being read-only does not make a store safe for this.
    USER_LOCATIONS = enum.auto()
    #: The driver can say which objects its own place (datadir, bucket, pool,
    #: containers) holds: ``list_objects`` and ``key_of``. The auditor needs it to find
    #: data no image points at.
    LIST = enum.auto()


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """What ``put`` returns. Checksums are the core's business, not the driver's."""

    uri: str
    size: int
    extra: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ListedObject:
    """One complete object a store holds, as ``list_objects`` yields it."""

    key: str  # the key it was ``put`` under
    uri: str  # the URI ``put`` returned for it
    size: int
    modified: float  # its last write, in seconds since the epoch


class Driver(abc.ABC):
    """Base class for storage drivers.

    A driver sees keys, bytes and URIs; never image metadata, the registry, hooks or
    the request. Its options live in the config group named after the store.
    """

    #: URI schemes this driver writes and accepts.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Upper bound of what the driver can do.
    capabilities: ClassVar[Capability] = Capability.READ
    #: Options registered into the store's own config group.
    options: ClassVar[list[cfg.Opt]] = []

    def __init__(self, store_name: str, conf) -> None:
        """:param conf: the store's option group (``conf[store_name]``)."""
        self.store_name = store_name
        self.conf = conf

    def configure(self) -> Capability:
        """Validate the configuration and prepare the backend.

        :returns: the effective capabilities.
        :raises abbild.errors.ConfigError: the store cannot work as configured.
        """
        return type(self).capabilities

    def check(self) -> str:
        """Say whether the backend is reachable (and writable, where it should be).

        :returns: a short human-readable status line.
        :raises abbild.errors.StoreError: it is not.
        """
        return "ok"

    @abc.abstractmethod
    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream the object at *uri*.

        :param offset: first byte to return; non-zero only if the store has RANGE_READ.
        :param length: number of bytes to return, or ``None`` for "to the end".
        :returns: an iterator of non-empty ``bytes`` chunks with a ``close()`` that
            releases any connection or file handle, even before the first chunk (a
            plain generator does not run its ``finally`` then), and that is released
            as well when the data ends or a read fails. Return an
            :class:`abbild.streams.ChunkReader` over the backend's read and release
            calls; it does all of that (``ChunkReader(None)``: no bytes).
        :raises abbild.errors.NotFound: no object at *uri*, raised by the call itself,
            before any chunk, so the API can still answer with an error status.
        """

    @abc.abstractmethod
    def size(self, uri: str) -> int:
        """:raises abbild.errors.NotFound: no object at *uri*."""

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        """Store the bytes of *chunks* under *key*, durably, before returning.

        :param size: the declared size, or ``None`` when unknown (chunked uploads).
            The core enforces it; a driver may use it to choose a strategy.
        :raises abbild.errors.AlreadyExists: *key* is taken.
        :raises abbild.errors.StoreFull: out of space.

        Whatever the iterator raises propagates after the driver removed its partial
        data: a failed put leaves nothing behind.
        """
        raise NotImplementedError

    def delete(self, uri: str) -> None:
        """Remove the object at *uri*.

        No object there (deleted already, never written, or *uri* is not one of this
        store's) is not an error: the call returns, as S3's DELETE does. A delete that
        is retried after a crash succeeds, and no driver needs a look-up first only to
        report what every caller would ignore.

        :raises abbild.errors.InUse: the backend refuses because something depends on it."""
        raise NotImplementedError

    def discard(self, key: str) -> None:
        """Remove whatever a ``put(key, ...)`` may have left behind, complete or partial.

        Called during crash recovery for uploads whose process died, possibly after the
        data was complete but before the image pointed at it; no error when there is
        nothing. Every writable driver implements it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement discard()")

    def list_objects(self) -> Iterator[ListedObject]:
        """Every complete object in this store's own place, in any order; never the
        partial data of a put in progress (``discard`` removes that), nor anything a
        ``put`` would not have written (probe files, segments). Drivers with
        :attr:`Capability.LIST` implement it.

        :raises abbild.errors.StoreError: the backend cannot be listed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement list_objects()")

    def key_of(self, uri: str) -> str | None:
        """The key of the object *uri* names, if that is an object ``list_objects``
        lists (whatever form of the URI: an older short form, other quoting); ``None``
        when *uri* names nothing in this store's own place. Needs no backend call
        where the URI alone tells. Drivers with :attr:`Capability.LIST` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement key_of()")

    def validate_location(self, uri: str) -> None:
        """Check a location a caller asks to register, before it is stored (it is read
        from later). The default: *uri* names an existing object of this store. A
        driver that fetches from places a caller names (http) checks where it points.

        :raises abbild.errors.StoreError: *uri* may not or cannot be used.
        """
        self.size(uri)

    def open_local(self, uri: str) -> IO[bytes] | None:
        """Return a real file opened for reading at *uri*, so the WSGI server can
        ``sendfile`` it, or ``None`` when the store has no local file. Optional.

        The file may have a method ``read_ahead(length)``: the API calls it, with the
        file at the download's first byte, before the server sends *length* bytes, so
        the store can have them read from its disk ahead of ``sendfile``."""
        return None

    def properties(self) -> dict[str, object]:
        """Store properties shown by ``/v2/info/stores/detail``."""
        return {}
