"""The reference in-memory store driver, for tests and for trying abbild out.

Every object lives in the driver instance: two stores never share data and nothing
outlives the process.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterable, Iterator

from abbild.driver import Capability, Driver, StoredObject
from abbild.errors import AlreadyExists, NotFound
from abbild.streams import CHUNK_SIZE


class MemoryDriver(Driver):
    """Keeps objects as ``bytes`` in a dict owned by the instance.

    URIs are ``memory://<store_name>/<key>``; a URI naming another store is not found.
    """

    schemes = ("memory",)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ

    def __init__(self, store_name: str, conf=None) -> None:
        """:param conf: ignored; the driver has no options (``None`` is fine)."""
        super().__init__(store_name, conf)
        self._objects: dict[str, bytes] = {}
        # put checks and inserts in two steps; concurrent requests must not both win.
        self._lock = threading.Lock()
        self._prefix = f"memory://{urllib.parse.quote(store_name, safe='')}/"

    def _uri(self, key: str) -> str:
        return self._prefix + urllib.parse.quote(key, safe="")

    def _lookup(self, uri: str) -> tuple[str, bytes]:
        """:returns: the key and the data at *uri*.
        :raises NotFound: *uri* names no object of this store."""
        if uri.startswith(self._prefix):
            key = urllib.parse.unquote(uri[len(self._prefix) :])
            data = self._objects.get(key)
            if data is not None:
                return key, data
        raise NotFound(uri)

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        # Look the object up now, not in the generator: NotFound must come before
        # the API sends its response headers.
        _, data = self._lookup(uri)
        end = len(data) if length is None else min(len(data), offset + length)
        return self._chunks(data, offset, end)

    @staticmethod
    def _chunks(data: bytes, start: int, end: int) -> Iterator[bytes]:
        for pos in range(start, end, CHUNK_SIZE):
            yield data[pos : min(pos + CHUNK_SIZE, end)]

    def size(self, uri: str) -> int:
        return len(self._lookup(uri)[1])

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        if key in self._objects:  # fail before reading a whole upload only to reject it
            raise AlreadyExists(key)
        # Consume everything first: an iterator that raises leaves nothing behind.
        data = b"".join(bytes(chunk) for chunk in chunks)
        with self._lock:
            if key in self._objects:
                raise AlreadyExists(key)
            self._objects[key] = data
        return StoredObject(uri=self._uri(key), size=len(data))

    def delete(self, uri: str) -> None:
        if uri.startswith(self._prefix):  # any other URI names nothing to delete here
            with self._lock:
                self._objects.pop(urllib.parse.unquote(uri[len(self._prefix) :]), None)

    def discard(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def properties(self) -> dict[str, object]:
        return {"objects": len(self._objects)}
