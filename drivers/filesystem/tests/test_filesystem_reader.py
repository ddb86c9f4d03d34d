"""The read side (reader.py): files that read ahead of whoever sends them. Behaviour
only: the bytes, the ranges, what close releases, what a failure does."""

import errno
import os
import threading

import pytest
from abbild_filesystem import reader

from abbild.errors import BackendError

MiB = 1 << 20
SIZE = 3 * MiB + 123  # several read-ahead steps, and a tail that is no whole page


@pytest.fixture
def driver(make_driver, monkeypatch):
    monkeypatch.setattr(reader, "STEP", 256 << 10)  # many steps for a small file
    return make_driver()[0]


@pytest.fixture
def stored(driver):
    data = os.urandom(SIZE)
    return driver.put("img", [data], SIZE).uri, data


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "abbild-read-ahead"]


def _read_all(f) -> bytes:
    return b"".join(iter(lambda: f.read(MiB), b""))


@pytest.mark.parametrize("offset", [0, 1, 4096, SIZE - 1])
def test_a_file_read_ahead_reads_the_same_bytes(driver, stored, offset):
    uri, data = stored
    with driver.open_local(uri) as f:
        f.seek(offset)
        f.read_ahead(SIZE - offset)
        assert _read_all(f) == data[offset:]
    assert not _read_ahead_threads()


@pytest.mark.parametrize(
    ("offset", "length"), [(0, None), (0, SIZE), (10, 20), (MiB - 1, MiB + 2), (SIZE - 5, None), (SIZE - 5, 5)]
)
def test_get_reads_ahead_and_serves_ranges(driver, stored, offset, length):
    uri, data = stored
    chunks = driver.get(uri, offset, length)
    try:
        got = b"".join(chunks)
    finally:
        chunks.close()
    assert got == data[offset : None if length is None else offset + length]
    assert not _read_ahead_threads()


def test_close_ends_the_read_ahead_and_releases_the_descriptor(driver, stored, monkeypatch):
    uri, data = stored
    reading = threading.Event()
    release = threading.Event()
    real_sendfile = os.sendfile

    def slow_sendfile(out_fd, in_fd, offset, count):
        if threading.current_thread().name == "abbild-read-ahead":
            reading.set()
            release.wait(5)  # the disk busy with this step
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", slow_sendfile)
    before = _open_fds()
    f = driver.open_local(uri)
    f.read_ahead(SIZE)
    assert reading.wait(5)
    assert f.read(10) == data[:10]
    [thread] = _read_ahead_threads()
    threading.Timer(0.05, release.set).start()  # close waits for the step in progress only
    f.close()
    assert not thread.is_alive() and not _read_ahead_threads()
    assert _open_fds() == before


def test_many_downloads_leave_no_descriptor_or_thread(driver, stored):
    uri, data = stored
    before = _open_fds()
    for i in range(40):
        if i % 2:
            with driver.open_local(uri) as f:
                f.seek(i)
                f.read_ahead(SIZE - i)
                assert f.read(100) == data[i : i + 100]  # a client that went away early
        else:
            chunks = driver.get(uri, i, 1000)
            assert next(iter(chunks)) == data[i : i + 1000]
            chunks.close()
    assert _open_fds() == before
    assert not _read_ahead_threads()


@pytest.mark.parametrize("refused", ["posix_fadvise", "sendfile"])
def test_refused_read_ahead_still_reads_everything(driver, stored, monkeypatch, refused):
    """Filesystems that refuse posix_fadvise or sendfile (EINVAL): no read-ahead, the
    same bytes."""
    uri, data = stored

    def refuse(*args):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, refused, refuse)
    with driver.open_local(uri) as f:
        f.read_ahead(SIZE)
        assert _read_all(f) == data
    chunks = driver.get(uri, 7, 70000)
    assert b"".join(chunks) == data[7:70007]
    chunks.close()
    assert not _read_ahead_threads()


def test_a_read_error_mid_stream_ends_the_stream(driver, stored, monkeypatch):
    """A disk error after the first chunk fails the stream (the server cuts the
    response) instead of hanging, and leaves no thread and no descriptor behind."""
    uri, _ = stored
    real_read = reader.ReadAheadFile.read
    calls = []

    def failing_read(self, n=-1):
        calls.append(n)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, n)

    monkeypatch.setattr(reader.ReadAheadFile, "read", failing_read)
    before = _open_fds()
    chunks = driver.get(uri)
    it = iter(chunks)
    assert next(it)
    with pytest.raises((OSError, BackendError)):
        next(it)
    chunks.close()
    assert _open_fds() == before
    assert not _read_ahead_threads()


def test_read_ahead_reads_only_the_window(driver, stored, monkeypatch):
    """A range reads that range ahead, in steps, not the rest of the file."""
    uri, _ = stored
    asked = []
    real_sendfile = os.sendfile

    def record(out_fd, in_fd, offset, count):
        asked.append((offset, count))
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", record)
    monkeypatch.setattr(reader, "_cached", lambda fd, probe, offset: False)  # cold
    with driver.open_local(uri) as f:
        f.seek(MiB)
        f.read_ahead(300 << 10)
        for thread in _read_ahead_threads():
            thread.join(5)  # all read, before close could stop it
    assert asked == [(MiB, 256 << 10), (MiB + (256 << 10), 44 << 10)]


def test_read_ahead_fills_the_page_cache(driver, stored):
    """What it is for: the window is in the page cache before the sender gets there
    (a read that may not wait for the disk finds it)."""
    uri, data = stored
    with driver.open_local(uri) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # cold, as after an O_DIRECT upload
        f.read_ahead(SIZE)
        for thread in _read_ahead_threads():
            thread.join(5)
        buf = bytearray(4096)
        assert os.preadv(f.fileno(), [buf], SIZE - 4096, os.RWF_NOWAIT) == 4096
        assert bytes(buf) == data[-4096:]


def test_a_cached_window_is_not_read_again(driver, stored, monkeypatch):
    """A warm file: each step's last byte is in the page cache, nothing is read ahead."""
    uri, data = stored
    with driver.open_local(uri) as f:
        assert _read_all(f) == data  # now in the page cache
    asked = []
    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *a: asked.append(a) or real_sendfile(*a))
    with driver.open_local(uri) as f:
        f.read_ahead(SIZE)
        for thread in _read_ahead_threads():
            thread.join(5)
        assert _read_all(f) == data
    assert asked == []
