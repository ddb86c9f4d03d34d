"""Byte-stream wrappers: the upload path is hashed, counted and limited here, once,
so that no driver ever does it; and every driver's download stream releases its
backend here (:class:`ChunkReader`)."""

from __future__ import annotations

import hashlib
import io
import itertools
import mmap
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol

from abbild.errors import SizeLimitExceeded, SizeMismatch

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough for hashlib to release the GIL, small enough to stay flat in memory

_DONE = object()


# ImageStream.lent(): buffers of the ring, each filled whole before it moves on (a
# multiple of the page size, so an O_DIRECT write takes it as it is).
RING_BUFFERS = 4
RING_BUFFER_SIZE = 2 << 20


def read_chunks(fileobj: IO[bytes], limit: int | None = None, chunk_size: int = CHUNK_SIZE) -> FileChunks:
    """Up to *limit* bytes (all, if ``None``) of *fileobj* in chunks (a :class:`FileChunks`)."""
    return FileChunks(fileobj, limit, chunk_size)


class FileChunks:
    """Iterating yields up to *limit* bytes of *fileobj* in chunks of *chunk_size*.

    When *fileobj* has ``readinto`` (a file, the embedded server's request body),
    :meth:`fill` also reads straight into a caller's buffer: :meth:`ImageStream.lent`
    uses that to read an upload into reused buffers without copying it again.
    """

    def __init__(self, fileobj: IO[bytes], limit: int | None = None, chunk_size: int = CHUNK_SIZE) -> None:
        self._file = fileobj
        self._left = limit
        self._chunk_size = chunk_size
        self.can_fill = callable(getattr(fileobj, "readinto", None))

    def __iter__(self) -> Iterator[bytes]:
        while self._left is None or self._left > 0:
            want = self._chunk_size if self._left is None else min(self._chunk_size, self._left)
            chunk = self._file.read(want)
            if not chunk:
                return
            if self._left is not None:
                self._left -= len(chunk)
            yield chunk

    def fill(self, view: memoryview) -> int:
        """Read into *view* until it is full or the data ends; :returns: the bytes read."""
        if self._left is not None and self._left < len(view):
            view = view[: self._left]
        readinto, got = self._file.readinto, 0
        while got < len(view):
            n = readinto(view[got:])
            if not n:
                break
            got += n
        if self._left is not None:
            self._left -= got
        return got


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
    buffers, so md5 and sha512 run on two cores instead of one after the other.

    With *progress*, ``hashed`` counts the chunks done, under that condition, which is
    notified after each: a buffer that is reused waits for it.
    """

    def __init__(self, algorithm: str, progress: threading.Condition | None = None) -> None:
        super().__init__(name=f"abbild-{algorithm}", daemon=True)
        self.hash = hashlib.new(algorithm)
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.progress = progress
        self.hashed = 0

    def run(self) -> None:
        update, get, progress = self.hash.update, self.queue.get, self.progress
        while (chunk := get()) is not _DONE:
            update(chunk)
            if progress is not None:
                with progress:
                    self.hashed += 1
                    progress.notify_all()

    def finish(self) -> str:
        self.queue.put(_DONE)
        self.join()
        return self.hash.hexdigest()


class DataCheck(Protocol):
    """One check of an image's data as it streams past, in the same pass as the hashing
    (a plugin's answer to the ``abbild_data_checks`` hook): format inspection, signature
    verification. Never reads the data a second time.

    A check whose class sets ``copies_chunks = True`` promises to keep nothing of a
    chunk past :meth:`feed` but copies: it is then fed the upload's own buffers,
    reused afterwards (:meth:`ImageStream.lent`); any other check gets a copy."""

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
        return self._stream(iter(self._chunks), None)

    def lent(self) -> Iterator[bytes | memoryview]:
        """The same chunks as iterating, for a consumer that is done with each chunk
        when it asks for the next one (a driver that writes it before that): every
        chunk is valid only until then.

        When the chunks come from :func:`read_chunks` over a file with ``readinto``,
        they are read into a ring of ``RING_BUFFERS`` reused page-aligned buffers of
        ``RING_BUFFER_SIZE`` bytes, each filled whole (except the last), and the same
        memory goes to the hash threads and to the consumer: the data is copied once,
        from the kernel, and memory stays bounded by the ring. A buffer is refilled
        only after both hash threads and the consumer are done with it.
        """
        if not getattr(self._chunks, "can_fill", False):
            return iter(self)
        return self._lent_from_ring()

    def _lent_from_ring(self) -> Iterator[memoryview]:
        views = [memoryview(mmap.mmap(-1, RING_BUFFER_SIZE)) for _ in range(RING_BUFFERS)]
        progress = threading.Condition()
        threads: list[_HashThread] = []

        def ring() -> Iterator[memoryview]:
            fill = self._chunks.fill
            for seq in itertools.count():
                if seq >= RING_BUFFERS:  # the buffer held chunk seq - RING_BUFFERS: hashed yet?
                    with progress:
                        progress.wait_for(lambda seq=seq: all(t.hashed > seq - RING_BUFFERS for t in threads))
                view = views[seq % RING_BUFFERS]
                n = fill(view)
                if not n:
                    return
                yield view[:n]

        # The ring goes with the last reference to it: the consumer may still hold the
        # last chunk when the stream ends, so the buffers are not closed here.
        yield from self._stream(ring(), progress, threads)

    def _stream(self, chunks: Iterator, progress: threading.Condition | None, threads: list | None = None):
        """Count, limit, hash, check and yield *chunks*; with *progress*, the chunks are
        lent (see :meth:`lent`) and *threads* is filled with the hash threads."""
        threads = threads if threads is not None else []
        threads += [_HashThread(algorithm, progress) for algorithm in self._algorithms]
        for t in threads:
            t.start()
        # A check may keep what it is fed (one hashing on a thread of its own): unless it
        # says it copies what it keeps, it gets bytes of its own.
        copying_checks = [c for c in self.checks if progress is not None and not getattr(c, "copies_chunks", False)]
        lending_checks = [c for c in self.checks if c not in copying_checks]
        next_progress = self._progress_every
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                self.size += len(chunk)
                if self.max_size is not None and self.size > self.max_size:
                    raise SizeLimitExceeded(self.max_size, self.limit_name)
                if self.declared_size is not None and self.size > self.declared_size:
                    raise SizeMismatch(self.declared_size, self.size)
                for t in threads:
                    t.queue.put(chunk)
                for check in lending_checks:
                    check.feed(chunk)
                if copying_checks:
                    copy = bytes(chunk)
                    for check in copying_checks:
                        check.feed(copy)
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
