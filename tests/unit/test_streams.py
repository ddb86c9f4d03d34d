import hashlib
import io
import os

import pytest

from abbild.errors import SizeLimitExceeded, SizeMismatch
from abbild.streams import ImageStream, IterStream, read_chunks


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
