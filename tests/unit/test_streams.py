import hashlib
import io
import os

import pytest

from abbild.errors import BackendUnavailable, SizeLimitExceeded, SizeMismatch
from abbild.streams import ChunkReader, ImageStream, IterStream, read_chunks


def _digests(data: bytes, algo: str = "sha512"):
    return hashlib.md5(data).hexdigest(), hashlib.new(algo, data).hexdigest()


@pytest.mark.parametrize("algo", ["sha512", "sha256"])
@pytest.mark.parametrize("sizes", [[0], [1], [5, 0, 7], [1 << 20] * 3 + [17]])
def test_stream_passes_chunks_and_hashes_them(algo, sizes):
    chunks = [os.urandom(n) for n in sizes]
    stream = ImageStream(chunks, hash_algo=algo)
    assert [c for c in stream] == [c for c in chunks if c]
    data = b"".join(chunks)
    assert stream.size == len(data)
    assert (stream.checksum, stream.os_hash_value) == _digests(data, algo)


@pytest.mark.parametrize(("algo", "md5"), [("sha512", False), (None, True), (None, False)])
def test_stream_computes_only_the_hashes_asked_for(algo, md5):
    data = os.urandom(3 << 20)
    stream = ImageStream([data[: 1 << 20], data[1 << 20 :]], hash_algo=algo, md5=md5)
    assert b"".join(stream) == data and stream.size == len(data)
    assert stream.checksum == (hashlib.md5(data).hexdigest() if md5 else None)
    assert stream.os_hash_value == (hashlib.new(algo, data).hexdigest() if algo else None)


def test_unknown_algorithm_fails_before_reading():
    with pytest.raises(ValueError):
        ImageStream([b"x"], hash_algo="nope")


def test_max_size_stops_the_stream():
    stream = ImageStream([b"a" * 600, b"b" * 600], max_size=1000)
    with pytest.raises(SizeLimitExceeded) as err:
        list(stream)
    assert err.value.limit == 1000


@pytest.mark.parametrize("declared,chunks", [(10, [b"a" * 11]), (10, [b"a" * 9])])
def test_declared_size_must_match(declared, chunks):
    with pytest.raises(SizeMismatch) as err:
        list(ImageStream(chunks, declared_size=declared))
    assert err.value.expected == declared


def test_progress_callback_sees_the_bytes():
    seen = []
    list(ImageStream([b"x" * 100] * 10, on_progress=seen.append, progress_every=250))
    assert seen == [300, 600, 900]


def test_source_errors_propagate_and_threads_finish():
    def source():
        yield b"a" * 10
        raise OSError("client went away")

    with pytest.raises(OSError, match="client went away"):
        list(ImageStream(source()))


def test_read_chunks_honours_limit():
    f = io.BytesIO(b"0123456789")
    assert list(read_chunks(f, 7, chunk_size=3)) == [b"012", b"345", b"6"]
    assert list(read_chunks(io.BytesIO(b"abc"), None, chunk_size=2)) == [b"ab", b"c"]


def test_iterstream_is_a_file():
    chunks = [b"ab", b"", b"cdefg", b"h"]
    f = io.BufferedReader(IterStream(chunks), buffer_size=3)
    assert f.read(4) == b"abcd"
    assert f.read() == b"efgh"
    assert f.read() == b""


class Source:
    """A backend object for ChunkReader: bytes to read, closes counted, and an
    optional failure on the read after *fail_after* reads."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.file = io.BytesIO(data)
        self.reads, self.closes, self.fail_after = [], 0, fail_after

    def read(self, size: int) -> bytes:
        if self.closes:
            raise AssertionError("read after close")
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise BackendUnavailable("cold", "connection reset")
        self.reads.append(size)
        return self.file.read(size)

    def close(self) -> None:
        self.closes += 1


def reader(source: Source, **kwargs) -> ChunkReader:
    return ChunkReader(source.read, source.close, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [b"0123", b"4567", b"89"]),
        ({"length": 6}, [b"0123", b"45"]),
        ({"length": 8}, [b"0123", b"4567"]),
        ({"length": 50}, [b"0123", b"4567", b"89"]),
        ({"length": 0}, []),
        ({"skip": 3}, [b"3456", b"789"]),
        ({"skip": 5, "length": 4}, [b"5678"]),
        ({"skip": 10}, []),
        ({"skip": 12}, []),
    ],
)
def test_chunk_reader_reads_skips_and_limits(kwargs, expected):
    source = Source(b"0123456789")
    assert list(reader(source, chunk_size=4, **kwargs)) == expected
    assert source.closes == 1


def test_chunk_reader_closes_once_on_exhaustion():
    source = Source(b"abc")
    chunks = reader(source, chunk_size=2)
    assert list(chunks) == [b"ab", b"c"]
    assert source.closes == 1  # released by the end of the data, before any close()
    chunks.close()
    chunks.close()
    assert list(chunks) == []
    assert source.closes == 1


def test_chunk_reader_stops_at_length_without_reading_further():
    source = Source(b"0123456789")
    assert list(reader(source, chunk_size=4, length=8)) == [b"0123", b"4567"]
    assert source.reads == [4, 4]


def test_chunk_reader_close_before_first_chunk():
    source = Source(b"abc")
    chunks = reader(source)
    chunks.close()
    assert source.closes == 1
    assert source.reads == []
    assert list(chunks) == []
    assert source.closes == 1


def test_chunk_reader_close_after_first_chunk():
    source = Source(b"0123456789")
    chunks = reader(source, chunk_size=4)
    assert next(chunks) == b"0123"
    chunks.close()
    assert list(chunks) == [], "a closed reader yielded more chunks"
    assert source.closes == 1
    assert source.reads == [4]


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_chunk_reader_error_propagates_and_closes(fail_after):
    source = Source(b"0123456789", fail_after=fail_after)
    chunks = reader(source, chunk_size=2, skip=2)
    with pytest.raises(BackendUnavailable, match="connection reset"):
        list(chunks)
    assert source.closes == 1
    chunks.close()
    assert list(chunks) == []
    assert source.closes == 1


def test_chunk_reader_close_error_propagates_once():
    def close():
        closes.append(1)
        raise OSError("close failed")

    closes = []
    chunks = ChunkReader(io.BytesIO(b"ab").read, close)
    with pytest.raises(OSError, match="close failed"):
        list(chunks)
    chunks.close()
    assert closes == [1]


def test_chunk_reader_without_read_or_close_is_empty():
    assert list(ChunkReader(None)) == []
    ChunkReader(None).close()
    assert list(ChunkReader(io.BytesIO(b"xy").read, chunk_size=1)) == [b"x", b"y"]
