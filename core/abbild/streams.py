"""Byte-stream wrappers: the upload path is hashed, counted and limited here, once,
so that no driver ever does it; and every driver's download stream releases its
backend here (:class:`ChunkReader`)."""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol

from abbild.errors import SizeLimitExceeded, SizeMismatch

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough for hashlib to release the GIL, small enough to stay flat in memory

_DONE = object()


def read_chunks(fileobj: IO[bytes], limit: int | None = None, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield up to *limit* bytes (all, if ``None``) of *fileobj* in chunks."""
    remaining = limit
    while remaining is None or remaining > 0:
        want = chunk_size if remaining is None else min(chunk_size, remaining)
        chunk = fileobj.read(want)
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


class ChunkReader:
    """The closeable iterator of byte chunks that a driver's ``get`` returns.

    Calls *read* for up to *chunk_size* bytes at a time and yields what it returns,
    after dropping the first *skip* bytes, until *read* returns ``b""`` or *length*
    bytes (all, if ``None``) went out. *close* releases the backend (a file, a
    connection, an image handle) and runs exactly once: when the data ends, when the
    caller closes the reader, or when *read* raises, whose exception then propagates.
    A closed reader yields nothing more.

    Not a generator: ``close()`` must release the backend even before the first chunk,
    and a generator that never started does not run its ``finally``.

    :param read: ``size -> bytes``, at most *size* of them, ``b""`` at the end; it
        raises :class:`~abbild.errors.StoreError` for the backend's failures itself.
        ``None`` is an empty stream.
    :param skip: bytes to read and drop first (a server that answered a range request
        with the whole object).
    """

    def __init__(
        self,
        read: Callable[[int], bytes] | None,
        close: Callable[[], object] | None = None,
        *,
        length: int | None = None,
        skip: int = 0,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._read, self._close = read, close
        self._left, self._skip, self._chunk_size = length, skip, chunk_size

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._read is None:
            raise StopIteration
        try:
            chunk = self._next_chunk(self._read)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()  # release the backend as soon as the data is out
            raise StopIteration
        return chunk

    def _next_chunk(self, read: Callable[[int], bytes]) -> bytes:
        while self._skip > 0:
            dropped = read(min(self._skip, self._chunk_size))
            if not dropped:
                return b""
            self._skip -= len(dropped)
        want = self._chunk_size if self._left is None else min(self._chunk_size, self._left)
        if want <= 0:
            return b""
        chunk = read(want)
        if self._left is not None:
            self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        close, self._close, self._read = self._close, None, None
        if close is not None:
            close()


class _HashThread(threading.Thread):
    """Feeds one hash object from a bounded queue. hashlib releases the GIL for large
    buffers, so md5 and sha512 run on two cores instead of one after the other."""

    def __init__(self, algorithm: str) -> None:
        super().__init__(name=f"abbild-{algorithm}", daemon=True)
        self.hash = hashlib.new(algorithm)
        self.queue: queue.Queue = queue.Queue(maxsize=4)

    def run(self) -> None:
        update, get = self.hash.update, self.queue.get
        while (chunk := get()) is not _DONE:
            update(chunk)

    def finish(self) -> str:
        self.queue.put(_DONE)
        self.join()
        return self.hash.hexdigest()


class DataCheck(Protocol):
    """One check of an image's data as it streams past, in the same pass as the hashing
    (a plugin's answer to the ``abbild_data_checks`` hook): format inspection, signature
    verification. Never reads the data a second time."""

    def feed(self, chunk: bytes) -> None:
        """The next chunk. May raise to refuse the data early
        (:class:`~abbild.errors.InvalidImageData`, :class:`~abbild.errors.ImageSignatureInvalid`)."""

    def finish(self) -> dict:
        """All data was fed. Raises to refuse it; else returns the image attributes the
        data decides (``{"virtual_size": ...}``), applied when the image is activated."""


class ImageStream:
    """Wraps the incoming chunks of an image upload.

    Iterating yields the same chunks, unchanged, while it counts bytes, stops at
    *max_size* (:class:`SizeLimitExceeded`) and at *declared_size*
    (:class:`SizeMismatch`), and hashes md5 (the legacy ``checksum``; unless *md5* is
    false) and *hash_algo* (``os_hash_value``; unless it is ``None``) on background
    threads. After the iterator is exhausted, ``size``, ``checksum`` and
    ``os_hash_value`` hold the results (``None`` for a hash not computed).

    :param on_progress: called with the byte count every *progress_every* bytes
        (the upload heartbeat); its exceptions propagate and abort the upload.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        hash_algo: str | None = "sha512",
        md5: bool = True,
        max_size: int | None = None,
        limit_name: str = "image_size_cap",
        declared_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        progress_every: int = 256 * CHUNK_SIZE,
        checks: Iterable[DataCheck] = (),
    ) -> None:
        if hash_algo is not None:
            hashlib.new(hash_algo)  # unknown algorithms fail before any byte moves
        self._md5 = md5
        self._algorithms = (["md5"] if md5 else []) + ([hash_algo] if hash_algo else [])
        self._chunks = chunks
        self.hash_algo = hash_algo
        self.max_size = max_size
        self.limit_name = limit_name
        self.declared_size = declared_size
        self._on_progress = on_progress
        self._progress_every = progress_every
        self.size = 0
        self.checksum: str | None = None
        self.os_hash_value: str | None = None
        self.checks = list(checks)
        self.findings: dict = {}

    def __iter__(self) -> Iterator[bytes]:
        threads = [_HashThread(algorithm) for algorithm in self._algorithms]
        for t in threads:
            t.start()
        next_progress = self._progress_every
        try:
            for chunk in self._chunks:
                if not chunk:
                    continue
                self.size += len(chunk)
                if self.max_size is not None and self.size > self.max_size:
                    raise SizeLimitExceeded(self.max_size, self.limit_name)
                if self.declared_size is not None and self.size > self.declared_size:
                    raise SizeMismatch(self.declared_size, self.size)
                for t in threads:
                    t.queue.put(chunk)
                for check in self.checks:
                    check.feed(chunk)
                if self._on_progress and self.size >= next_progress:
                    next_progress = self.size + self._progress_every
                    self._on_progress(self.size)
                yield chunk
            if self.declared_size is not None and self.size != self.declared_size:
                raise SizeMismatch(self.declared_size, self.size)
            for check in self.checks:
                self.findings.update(check.finish() or {})
        finally:
            digests = [t.finish() for t in threads]
        self.checksum = digests[0] if self._md5 else None
        self.os_hash_value = digests[-1] if self.hash_algo else None


class IterStream(io.RawIOBase):
    """A read-only file object over an iterator of chunks, for SDKs that want a file
    (boto3's ``upload_fileobj``). Nothing is buffered beyond the current chunk."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._rest:
            chunk = next(self._it, None)
            if chunk is None:
                return 0
            self._rest = memoryview(chunk)
        n = min(len(buf), len(self._rest))
        buf[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n
