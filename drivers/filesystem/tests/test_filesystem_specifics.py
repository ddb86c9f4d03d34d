"""What the conformance suite cannot see: paths, permissions, file handles, config."""

import fcntl
import logging
import os
import resource
import shutil
import signal
import stat
import tempfile
import urllib.parse

import pytest
from abbild_filesystem.driver import MAX_KEY_LENGTH

from abbild.driver import Capability
from abbild.errors import AccessDenied, AlreadyExists, BackendUnavailable, ConfigError, NotFound, StoreFull
from abbild.testing.conformance import Boom, read_all

MiB = 1 << 20


@pytest.fixture
def driver(make_driver):
    return make_driver()[0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- URIs and path traversal --------------------------------------------------------------


@pytest.fixture
def planted(driver, datadir, tmp_path):
    """An object ``obj`` in the store, a file outside it, and traps pointing out of it."""
    stored = driver.put("obj", [b"inside"], 6)
    (tmp_path / "outside").write_bytes(b"secret")
    (datadir / "link").symlink_to(tmp_path / "outside")
    (datadir / ".obj2.partial").write_bytes(b"half")
    (datadir / "subdir").mkdir()
    return stored


@pytest.mark.parametrize(
    "template",
    [
        "file:///etc/passwd",
        "file://{datadir}/../outside",
        "file://{datadir}/%2e%2e/outside",
        "file://{datadir}/%2E%2E%2Foutside",
        "file://{datadir}/link",
        "file://otherhost{datadir}/obj",
        "http://localhost{datadir}/obj",
        "{datadir}/obj",
        "file://{datadir}/obj?x=1",
        "file://{datadir}/obj%00",
        "file://{datadir}/.obj2.partial",
        "file://{datadir}",
        "file://{datadir}/subdir",
        "file://{datadir}/missing",
    ],
)
def test_uri_outside_store_is_not_found(driver, planted, datadir, tmp_path, template):
    uri = template.format(datadir=urllib.parse.quote(str(datadir)))
    for operation in (driver.get, driver.size, driver.open_local):
        with pytest.raises(NotFound):
            operation(uri)
    assert driver.delete(uri) is None  # nothing of this store there: nothing to delete
    assert (tmp_path / "outside").read_bytes() == b"secret"
    assert sorted(os.listdir(datadir)) == [".obj2.partial", "link", "obj", "subdir"]
    assert read_all(driver, planted.uri) == b"inside"


def test_uri_is_percent_encoded_file_url(make_driver, tmp_path):
    datadir = tmp_path / "my data 100%"
    driver, _ = make_driver(datadir=str(datadir))
    stored = driver.put("img-1", [b"abc"], 3)
    assert stored.uri == "file://" + str(tmp_path).replace(" ", "%20") + "/my%20data%20100%25/img-1"
    assert read_all(driver, stored.uri) == b"abc"
    assert os.listdir(datadir) == ["img-1"]


def test_symlink_to_object_inside_store_is_followed(driver, datadir):
    stored = driver.put("target", [b"shared"], 6)
    (datadir / "alias").symlink_to(datadir / "target")
    alias = stored.uri.replace("/target", "/alias")
    assert read_all(driver, alias) == b"shared"


# -- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["", ".hidden", "a/b", "../x", "..", "a b", "ümlaut", "a\0b", "key\n", "x" * (MAX_KEY_LENGTH + 1)]
)
def test_bad_key_is_rejected(driver, datadir, key):
    with pytest.raises(AccessDenied):
        driver.put(key, [b"data"], 4)
    with pytest.raises(AccessDenied):
        driver.discard(key)
    assert os.listdir(datadir) == []


def test_longest_key_is_accepted(driver):
    key = "x" * MAX_KEY_LENGTH
    stored = driver.put(key, [b"long"], 4)
    assert read_all(driver, stored.uri) == b"long"


# -- put: atomicity and cleanup -----------------------------------------------------------


@pytest.mark.parametrize("exc_type", [Boom, KeyboardInterrupt, GeneratorExit])
def test_failing_iterator_removes_partial_file(driver, datadir, exc_type):
    seen = []

    def chunks():
        yield b"x" * 1000
        seen.append(sorted(os.listdir(datadir)))
        raise exc_type()

    with pytest.raises(exc_type):
        driver.put("img", chunks(), None)
    assert seen == [[".img.partial"]]  # the data went to the partial file ...
    assert os.listdir(datadir) == []  # ... which is gone


def test_put_leaves_only_the_final_file(driver, datadir):
    driver.put("img", [b"a", b"b"], 2)
    assert os.listdir(datadir) == ["img"]
    assert (datadir / "img").read_bytes() == b"ab"


def test_partial_file_of_another_put_is_not_touched(driver, datadir):
    (datadir / ".img.partial").write_bytes(b"someone else's")
    with pytest.raises(AlreadyExists):
        driver.put("img", [b"mine"], 4)
    assert (datadir / ".img.partial").read_bytes() == b"someone else's"
    driver.discard("img")  # crash recovery clears the way
    stored = driver.put("img", [b"mine"], 4)
    assert read_all(driver, stored.uri) == b"mine"


def test_key_taken_during_upload_is_not_overwritten(driver, datadir):
    def chunks():
        yield b"late"
        (datadir / "img").write_bytes(b"early")  # a concurrent put that finished first

    with pytest.raises(AlreadyExists):
        driver.put("img", chunks(), None)
    assert os.listdir(datadir) == ["img"]
    assert (datadir / "img").read_bytes() == b"early"


def test_full_disk_raises_store_full(driver, datadir):
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored; exceeding RLIMIT_FSIZE would kill the test run")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A file size limit fails writes with EFBIG, as a full disk fails them with ENOSPC;
    # the write that crosses it is cut short first, exercising the partial-write loop.
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB + MiB // 2, hard))
    try:
        with pytest.raises(StoreFull):
            driver.put("img", [b"x" * MiB, b"y" * MiB], None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert os.listdir(datadir) == []


def test_fsync_off_still_stores(make_driver):
    driver, _ = make_driver(fsync=False)
    stored = driver.put("img", [b"quick"], 5)
    assert read_all(driver, stored.uri) == b"quick"


# -- permissions --------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_file_perm_applied(make_driver, datadir, umask_022):
    driver, _ = make_driver(file_perm=640)
    driver.put("img", [b"data"], 4)
    assert stat.S_IMODE(os.stat(datadir / "img").st_mode) == 0o640


def test_file_perm_zero_leaves_umask(driver, datadir, umask_022):
    driver.put("img", [b"data"], 4)
    assert stat.S_IMODE(os.stat(datadir / "img").st_mode) == 0o644


def test_file_perm_not_octal_is_config_error(make_driver):
    with pytest.raises(ConfigError, match=r"'local'.*file_perm"):
        make_driver(file_perm=689)


def test_read_only_datadir(make_driver, datadir, caplog):
    datadir.mkdir()
    datadir.chmod(0o555)
    try:
        try:
            (datadir / "probe").write_bytes(b"")
        except PermissionError:
            pass
        else:
            pytest.skip("a mode 0555 directory does not stop this user writing (root, or CAP_DAC_OVERRIDE)")
        with caplog.at_level(logging.WARNING):
            driver, capabilities = make_driver()
        assert capabilities == Capability.READ | Capability.RANGE_READ | Capability.LIST
        [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "'local'" in record.getMessage() and "not writable" in record.getMessage()
        assert "read-only" in driver.check()
        with pytest.raises(AccessDenied):
            driver.put("img", [b"data"], 4)
    finally:
        datadir.chmod(0o755)


# -- reading ------------------------------------------------------------------------------


def test_get_yields_chunk_size_blocks(make_driver):
    driver, _ = make_driver(chunk_size=4096)
    payload = os.urandom(10_000)
    uri = driver.put("img", [payload], len(payload)).uri
    assert [len(c) for c in driver.get(uri)] == [4096, 4096, 1808]
    assert read_all(driver, uri, offset=4000, length=200) == payload[4000:4200]


@pytest.mark.parametrize("consumed", ["nothing", "first chunk", "everything"])
def test_get_releases_file_handle(driver, consumed):
    uri = driver.put("img", [os.urandom(3 * MiB)], 3 * MiB).uri
    before = _open_fds()
    chunks = driver.get(uri)
    # The file, and the read-ahead's own descriptor and /dev/null while it runs.
    assert before + 1 <= _open_fds() <= before + 3
    if consumed == "everything":
        list(chunks)  # no close(): the end of the data releases the file
    else:
        if consumed == "first chunk":
            next(chunks)
        chunks.close()
    assert _open_fds() == before


def test_open_local_returns_real_file(driver):
    uri = driver.put("img", [b"sendfile me"], 11).uri
    with driver.open_local(uri) as f:
        assert os.fstat(f.fileno()).st_size == 11
        assert f.read() == b"sendfile me"


# -- configuration and health -------------------------------------------------------------


def test_missing_datadir_option_is_config_error(make_driver):
    with pytest.raises(ConfigError, match=r"'local'.*'datadir' is not set"):
        make_driver(datadir=None)


def test_datadir_that_is_a_file_is_config_error(make_driver, tmp_path):
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'local'.*plain.*not a directory"):
        make_driver(datadir=str(tmp_path / "plain"))


def test_datadir_is_created(make_driver, tmp_path):
    datadir = tmp_path / "a" / "b"
    driver, capabilities = make_driver(datadir=str(datadir))
    assert datadir.is_dir()
    assert capabilities == type(driver).capabilities


def test_properties(driver, datadir):
    assert driver.properties() == {"data_dir": str(datadir), "chunk_size": MiB}


def test_check(driver, datadir):
    assert driver.check().startswith("ok")
    assert os.listdir(datadir) == []  # the probe file is gone
    datadir.rmdir()
    with pytest.raises(BackendUnavailable):
        driver.check()


_SIZES = [0, 1, 4095, 4096, 4097, (4 << 20) - 1, 4 << 20, (4 << 20) + 4097, (9 << 20) + 123]


def _odd_chunks(data: bytes):
    """Chunks of awkward sizes, so the aligned buffer fills and drains unevenly."""
    pos, step = 0, 1
    while pos < len(data):
        yield data[pos : pos + step]
        pos += step
        step = step * 7 % 3_000_001 + 1


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("size", _SIZES)
def test_direct_and_buffered_writes_store_the_exact_bytes(make_driver, direct_io, size):
    driver, _ = make_driver(direct_io=direct_io)
    data = os.urandom(size)
    stored = driver.put(f"k{size}", _odd_chunks(data), None)
    assert stored.size == size
    assert b"".join(driver.get(stored.uri)) == data


def test_direct_io_is_really_used(make_driver, monkeypatch):
    """O_DIRECT is on while the aligned blocks are written (checked on the fd itself)."""
    from abbild_filesystem import writer as module

    seen = []
    real_write = module._write_all

    def spy(fd, chunk):
        seen.append(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT))
        return real_write(fd, chunk)

    monkeypatch.setattr(module, "_write_all", spy)
    driver, _ = make_driver()
    driver.put("direct", [b"x" * ((8 << 20) + 10)], None)
    assert seen == [True, True, False]  # two full buffers, then the unaligned tail


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_filesystems_without_o_direct_fall_back_to_buffered_writes(make_driver):
    datadir = tempfile.mkdtemp(dir="/dev/shm")
    try:
        driver, _ = make_driver(datadir=datadir)
        data = os.urandom((5 << 20) + 7)
        stored = driver.put("tmpfs", [data], len(data))
        assert b"".join(driver.get(stored.uri)) == data
    finally:
        shutil.rmtree(datadir)
