"""The write path with an upload's stream: chunks lent from the stream's reused
buffers, aligned ones written by O_DIRECT straight from that memory."""

import fcntl
import hashlib
import io
import mmap
import os

import pytest
from abbild_filesystem import writer as writer_module

from abbild import streams
from abbild.errors import SizeMismatch
from abbild.streams import ImageStream, read_chunks

RING = streams.RING_BUFFER_SIZE


@pytest.fixture
def driver(make_driver):
    return make_driver()[0]


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("size", [0, 1, 4096, RING - 1, RING, 2 * RING + 4097])
def test_an_upload_stream_is_stored_exactly(make_driver, direct_io, size):
    driver, _ = make_driver(direct_io=direct_io)
    data = os.urandom(size)
    stream = ImageStream(read_chunks(io.BytesIO(data), size), declared_size=size)
    stored = driver.put(f"k{size}", stream, size)
    assert stored.size == size == stream.size
    assert b"".join(driver.get(stored.uri)) == data
    assert stream.os_hash_value == hashlib.sha512(data).hexdigest()


def test_aligned_chunks_go_to_the_disk_without_the_gathering_buffer(driver, monkeypatch):
    writes = []
    real_write = writer_module._write_all

    def spy(fd, chunk):
        writes.append((len(chunk), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return real_write(fd, chunk)

    monkeypatch.setattr(writer_module, "_write_all", spy)
    made = []
    real_mmap = writer_module.mmap.mmap
    monkeypatch.setattr(writer_module.mmap, "mmap", lambda *a: made.append(a) or real_mmap(*a))
    data = os.urandom(3 * RING + 100)
    stored = driver.put("aligned", ImageStream(read_chunks(io.BytesIO(data))), None)
    assert b"".join(driver.get(stored.uri)) == data
    # three whole buffers straight from the stream's memory, then the tail through the
    # page cache; the writer needed no buffer of its own for the aligned part
    assert writes[:3] == [(RING, True)] * 3
    assert writes[-1] == (100, False)
    assert made.count((-1, writer_module.Writer.BUFFER)) == 1  # only for the unaligned tail


def test_page_aligned():
    buffer = mmap.mmap(-1, 3 * 4096)
    view = memoryview(buffer)
    assert writer_module.page_aligned(view)
    assert writer_module.page_aligned(view[4096:8192])
    assert not writer_module.page_aligned(view[1:4097])
    assert not writer_module.page_aligned(view[:4095])
    assert not writer_module.page_aligned(bytes(4096))
    view.release()
    buffer.close()


@pytest.mark.parametrize("declared_extra", [1, -1])
def test_an_aborted_upload_leaves_no_file(driver, datadir, declared_extra):
    data = os.urandom(2 * RING + 10)
    stream = ImageStream(read_chunks(io.BytesIO(data)), declared_size=len(data) + declared_extra)
    with pytest.raises(SizeMismatch):
        driver.put("aborted", stream, None)
    assert os.listdir(datadir) == []


def test_a_failing_write_leaves_no_file_and_ends_the_hash_threads(driver, datadir, monkeypatch):
    import threading

    calls = []

    def failing(fd, chunk):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return len(chunk)

    monkeypatch.setattr(writer_module, "_write_all", failing)
    before = threading.active_count()
    with pytest.raises(Exception, match="Input/output error"):
        driver.put("eio", ImageStream(read_chunks(io.BytesIO(os.urandom(4 * RING)))), None)
    assert os.listdir(datadir) == []
    assert threading.active_count() == before
