"""ImageStream.lent(): an upload read into a ring of reused buffers. Whatever the
pace of the hash threads and the sizes the file hands out, the hashes, the bytes the
consumer sees and the limits are those of the plain stream."""

import hashlib
import io
import os
import threading
import time

import pytest

from abbild import streams
from abbild.errors import SizeLimitExceeded, SizeMismatch
from abbild.streams import ImageStream, read_chunks

RING = 8192  # small buffers, so that a few hundred KiB go round the ring many times


@pytest.fixture(autouse=True)
def small_ring(monkeypatch):
    monkeypatch.setattr(streams, "RING_BUFFERS", 3)
    monkeypatch.setattr(streams, "RING_BUFFER_SIZE", RING)


class OddReads(io.RawIOBase):
    """A file whose readinto hands out pieces of awkward sizes, some larger than a
    ring buffer (the buffer takes what fits), some a single byte."""

    def __init__(self, data: bytes, sizes=(1, 4095, 3 * RING + 5, 777, RING, 65536)) -> None:
        self.data, self.pos, self.sizes, self.turn = data, 0, sizes, 0

    def readable(self):
        return True

    def readinto(self, buf) -> int:
        want = min(len(buf), self.sizes[self.turn % len(self.sizes)])
        self.turn += 1
        piece = self.data[self.pos : self.pos + want]
        buf[: len(piece)] = piece
        self.pos += len(piece)
        return len(piece)


class SlowHash:
    """A hash whose update waits first: the hash threads lag far behind the reader,
    so a buffer refilled too early would change what they hash."""

    def __init__(self, real_hash) -> None:
        self._hash = real_hash

    def update(self, data) -> None:
        time.sleep(0.0005)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _lent_bytes(stream: ImageStream) -> bytes:
    """Consume *stream* as a driver does, copying each chunk before asking for the next."""
    return b"".join(bytes(chunk) for chunk in stream.lent())


@pytest.mark.parametrize("size", [0, 1, RING - 1, RING, RING + 1, 7 * RING + 4095, 300_001])
@pytest.mark.parametrize("slow", [False, True], ids=["fast-hash", "slow-hash"])
def test_lent_chunks_and_hashes_are_the_data(monkeypatch, size, slow):
    if slow:
        real_new = hashlib.new
        monkeypatch.setattr(streams.hashlib, "new", lambda name, *a: SlowHash(real_new(name, *a)))
    data = os.urandom(size)
    stream = ImageStream(read_chunks(OddReads(data), size))
    assert _lent_bytes(stream) == data
    assert stream.size == size
    assert stream.checksum == hashlib.md5(data).hexdigest()
    assert stream.os_hash_value == hashlib.sha512(data).hexdigest()


def test_lent_chunks_fill_whole_page_aligned_buffers():
    data = os.urandom(5 * RING + 100)
    sizes = [len(chunk) for chunk in ImageStream(read_chunks(OddReads(data))).lent()]
    assert sizes == [RING] * 5 + [100]


def test_a_slow_consumer_sees_its_chunk_unchanged_until_it_asks_for_the_next():
    data = os.urandom(20 * RING)
    stream = ImageStream(read_chunks(io.BytesIO(data)))
    seen = b""
    for chunk in stream.lent():
        before = bytes(chunk)
        time.sleep(0.002)  # the hash threads run meanwhile; nothing may refill this buffer
        assert bytes(chunk) == before
        seen += before
    assert seen == data


def test_without_readinto_lent_is_the_plain_stream():
    chunks = [os.urandom(1000), os.urandom(5)]
    stream = ImageStream(chunks)
    assert list(stream.lent()) == chunks
    assert stream.os_hash_value == hashlib.sha512(b"".join(chunks)).hexdigest()


class Keeper:
    """A check that keeps what it is fed (as one hashing on a thread of its own would)."""

    def __init__(self, copies: bool) -> None:
        self.copies_chunks = copies
        self.kept = []

    def feed(self, chunk) -> None:
        self.kept.append(bytes(chunk) if self.copies_chunks else chunk)

    def finish(self) -> dict:
        return {}


def test_a_check_that_keeps_chunks_gets_its_own_copies():
    data = os.urandom(10 * RING + 3)
    keeper, copier = Keeper(copies=False), Keeper(copies=True)
    stream = ImageStream(read_chunks(io.BytesIO(data)), checks=[keeper, copier])
    assert _lent_bytes(stream) == data
    assert all(isinstance(chunk, bytes) for chunk in keeper.kept)
    assert b"".join(keeper.kept) == data == b"".join(copier.kept)


@pytest.mark.parametrize("size", [10 * RING, 10 * RING + 1])
def test_lent_stream_enforces_max_size(size):
    stream = ImageStream(read_chunks(io.BytesIO(os.urandom(size))), max_size=10 * RING)
    if size > 10 * RING:
        with pytest.raises(SizeLimitExceeded):
            _lent_bytes(stream)
    else:
        assert len(_lent_bytes(stream)) == size


@pytest.mark.parametrize("declared", [5 * RING - 1, 5 * RING + 1])
def test_lent_stream_checks_the_declared_size(declared):
    stream = ImageStream(read_chunks(io.BytesIO(os.urandom(5 * RING))), declared_size=declared)
    with pytest.raises(SizeMismatch):
        _lent_bytes(stream)


def test_read_chunks_stops_at_the_limit_for_lent_and_plain_reads():
    data = os.urandom(3 * RING)
    assert _lent_bytes(ImageStream(read_chunks(io.BytesIO(data), RING + 7))) == data[: RING + 7]
    assert b"".join(read_chunks(io.BytesIO(data), RING + 7, chunk_size=1000)) == data[: RING + 7]


def test_progress_heartbeat_runs_on_the_lent_path():
    seen = []
    stream = ImageStream(
        read_chunks(io.BytesIO(os.urandom(6 * RING))), on_progress=seen.append, progress_every=2 * RING
    )
    _lent_bytes(stream)
    assert seen == [2 * RING, 4 * RING, 6 * RING]


def test_an_abandoned_lent_stream_ends_its_hash_threads():
    before = threading.active_count()
    it = ImageStream(read_chunks(io.BytesIO(os.urandom(10 * RING)))).lent()
    next(it)
    it.close()
    assert threading.active_count() == before
