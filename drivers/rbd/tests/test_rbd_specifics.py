"""What the conformance suite cannot see: URIs and snapshots, thin and growing writes,
clones blocking deletes, cleanup, error translation and configuration."""

import builtins
import gc
import json
import os
import time
import tracemalloc
import uuid

import pytest
from abbild_rbd.driver import MAX_GROWTH, grown_size

from abbild.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    ConfigError,
    InUse,
    NotFound,
    StoreFull,
)
from abbild.testing.conformance import Boom, read_all

pytestmark = pytest.mark.backend("ceph")

try:
    import rbd
except ImportError:  # the ceph fixture skips (or, under CI, fails) with the reason
    rbd = None

MiB = 1 << 20


def new_name() -> str:
    return f"rbd-test-{uuid.uuid4().hex}"


def images(ceph) -> list[str]:
    return rbd.RBD().list(ceph["ioctx"])


class Recorder:
    """Stands in for the rbd module inside one driver and records what the driver
    does to its images: ``calls`` lists ``(method, arguments)``; the data of writes
    is replaced by its length."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return getattr(rbd, name)

    def Image(self, *args, **kwargs):  # noqa: N802 (mirrors rbd.Image)
        return _RecordedImage(rbd.Image(*args, **kwargs), self.calls)

    def methods(self, *names):
        return [call for call in self.calls if call[0] in names]


class _RecordedImage:
    def __init__(self, image, calls):
        self._image, self._calls = image, calls

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._image.close()

    def __getattr__(self, name):
        method = getattr(self._image, name)

        def recorded(*args):
            self._calls.append((name, tuple(len(a) if isinstance(a, (bytes, bytearray)) else a for a in args)))
            return method(*args)

        return recorded


@pytest.fixture
def recorded(make_driver, monkeypatch):
    """``(driver, recorder)``: a driver whose image calls are recorded."""
    driver, recorder = make_driver(), Recorder()
    monkeypatch.setattr(driver, "_rbd", recorder)
    return driver, recorder


# -- URIs and snapshots -------------------------------------------------------------------


def test_uri_names_cluster_pool_image_and_protected_snapshot(shared_driver, ceph):
    name = new_name()
    stored = shared_driver.put(name, [b"abc"], 3)
    assert stored.uri == f"rbd://{ceph['cluster'].get_fsid()}/{ceph['pool']}/{name}/snap"
    with rbd.Image(ceph["ioctx"], name, read_only=True) as image:
        assert [s["name"] for s in image.list_snaps()] == ["snap"]
        assert image.is_protected_snap("snap")
        assert image.features() & rbd.RBD_FEATURE_LAYERING  # what clones need


def test_short_uri_reads_the_image_in_the_pool(shared_driver):
    name = new_name()
    payload = os.urandom(3 * MiB + 5)
    shared_driver.put(name, [payload], len(payload))
    assert shared_driver.size(f"rbd://{name}") == len(payload)
    assert read_all(shared_driver, f"rbd://{name}", offset=MiB, length=10) == payload[MiB : MiB + 10]


@pytest.mark.parametrize(
    "template",
    [
        "rbd://00000000-0000-0000-0000-000000000000/{pool}/{name}/snap",  # another cluster
        "rbd://{fsid}/no-such-pool/{name}/snap",
        "rbd://{fsid}/{pool}/{name}/other-snap",
        "rbd://{fsid}/{pool}/{name}",
        "rbd://{fsid}/{pool}/{name}/snap/extra",
        "rbd://{fsid}/{pool}/{name}/snap?x=1",
        "rbd://",
        "rbd:///{pool}/{name}/snap",
        "file://{fsid}/{pool}/{name}/snap",
    ],
)
def test_foreign_or_malformed_uri_is_not_found(shared_driver, ceph, template):
    name = new_name()
    shared_driver.put(name, [b"x"], 1)
    uri = template.format(fsid=ceph["cluster"].get_fsid(), pool=ceph["pool"], name=name)
    for operation in (shared_driver.get, shared_driver.size):
        with pytest.raises(NotFound):
            operation(uri)
    assert shared_driver.delete(uri) is None  # nothing there: nothing to delete
    assert name in images(ceph)


# -- writing ------------------------------------------------------------------------------


def test_zero_chunks_are_not_written(recorded, ceph):
    driver, recorder = recorded
    data = os.urandom(MiB)
    payload = data + bytes(3 * MiB) + data + bytes(MiB // 2)
    name = new_name()
    # Chunks that do not line up with the 1 MiB objects.
    chunks = [payload[i : i + 300_000] for i in range(0, len(payload), 300_000)]
    stored = driver.put(name, chunks, len(payload))
    assert stored.size == len(payload)
    writes = sorted((name, args[:2]) for name, args in recorder.methods("write", "aio_write"))
    assert writes == [("write", (MiB, 0)), ("write", (MiB, 4 * MiB))]
    assert recorder.methods("read", "aio_read") == []  # decided on the incoming bytes, no read-back
    with rbd.Image(ceph["ioctx"], name, read_only=True) as image:
        prefix = image.stat()["block_name_prefix"]
    objects = [o.key for o in ceph["ioctx"].list_objects() if o.key.startswith(prefix)]
    assert len(objects) == 2  # the zeros take no space
    assert read_all(driver, stored.uri) == payload


def test_large_objects_are_written_and_read_in_pieces_of_4_mib(make_driver, monkeypatch, ceph):
    """8 MiB objects: ios_in_flight (and so the memory bound) counts pieces of 4 MiB."""
    driver, recorder = make_driver(chunk_size=8), Recorder()
    monkeypatch.setattr(driver, "_rbd", recorder)
    payload = os.urandom(10 * MiB + 5)
    name = new_name()
    try:
        stored = driver.put(name, [payload], len(payload))
        writes = sorted((args[:2] for _, args in recorder.methods("write")), key=lambda write: write[1])
        assert writes == [(4 * MiB, 0), (4 * MiB, 4 * MiB), (2 * MiB + 5, 8 * MiB)]
        assert [len(chunk) for chunk in driver.get(stored.uri)] == [4 * MiB, 4 * MiB, 2 * MiB + 5]
        assert b"".join(driver.get(stored.uri)) == payload
        with rbd.Image(ceph["ioctx"], name, read_only=True) as image:
            assert image.stat()["obj_size"] == 8 * MiB
    finally:
        driver.discard(name)


def test_unknown_size_grows_the_image_while_writing_then_trims_it(recorded):
    driver, recorder = recorded
    payload = os.urandom(10 * MiB + 5)
    stored = driver.put(new_name(), iter([payload[: 6 * MiB], payload[6 * MiB :]]), None)
    assert stored.size == len(payload)
    sizes = [args[0] for _, args in recorder.methods("resize")]
    assert sizes == [MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, len(payload)]
    assert driver.size(stored.uri) == len(payload)
    assert read_all(driver, stored.uri) == payload


def test_known_size_is_not_resized(recorded):
    driver, recorder = recorded
    payload = os.urandom(3 * MiB + 1)
    driver.put(new_name(), [payload], len(payload))
    assert recorder.methods("resize") == []


def test_growth_doubles_up_to_8_gib_at_a_time():
    unit = 8 * MiB
    assert grown_size(0, 1, unit) == unit
    assert grown_size(unit, unit + 1, unit) == 2 * unit
    assert grown_size(64 << 30, (64 << 30) + 1, unit) == (64 << 30) + MAX_GROWTH
    assert grown_size(unit, 100 * unit + 3, unit) == 101 * unit  # a big chunk: at least what it needs


@pytest.mark.parametrize("size", [None, 8 * MiB])
def test_failed_put_leaves_no_image(shared_driver, ceph, size):
    name = new_name()

    def chunks():
        yield os.urandom(2 * MiB)
        raise Boom("client went away")

    with pytest.raises(Boom):
        shared_driver.put(name, chunks(), size)
    assert name not in images(ceph)


@pytest.mark.parametrize("in_flight", [1, 3, 8])
def test_writes_and_reads_in_flight_keep_the_bytes(make_driver, in_flight):
    """23.5 MiB in 1 MiB objects, several requests at a time: the same bytes come back,
    whole and in ranges that start and end inside objects."""
    driver = make_driver(ios_in_flight=in_flight)
    payload = os.urandom(23 * MiB + MiB // 2)
    name = new_name()
    try:
        stored = driver.put(name, [payload[i : i + 300_000] for i in range(0, len(payload), 300_000)], None)
        assert stored.size == len(payload)
        assert read_all(driver, stored.uri) == payload
        assert read_all(driver, stored.uri, offset=MiB + 7, length=9 * MiB) == payload[MiB + 7 : 10 * MiB + 7]
    finally:
        driver.discard(name)


def test_a_write_failing_in_flight_fails_the_put_and_leaves_no_image(make_driver, ceph):
    """The image shrinks behind the driver's back (a real fault, no mock): the writes in
    flight past its new end fail in librbd, and the put fails with nothing left."""
    driver, name = make_driver(ios_in_flight=4), new_name()

    def chunks():
        for number in range(32):
            if number == 4:
                with rbd.Image(ceph["ioctx"], name) as image:
                    image.resize(0)
            yield os.urandom(MiB)

    with pytest.raises(BackendError, match="error writing to"):
        driver.put(name, chunks(), 32 * MiB)
    assert name not in images(ceph)


def _mon(ceph, **command):
    code, out, err = ceph["cluster"].mon_command(json.dumps(command), b"")
    assert code == 0, f"ceph {command['prefix']}: {err}"
    return json.loads(out) if out else None


def _full(ceph, pool: str) -> bool:
    details = _mon(ceph, prefix="osd pool ls", detail="detail", format="json")
    return any(p["pool_name"] == pool and "full" in p["flags_names"].split(",") for p in details)


def _wait_until(what: str, condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Ceph did not report {what} within {seconds} s")
        time.sleep(0.25)


@pytest.fixture
def small_pool(ceph):
    """A pool of its own with a quota of 8 MiB: Ceph flags it full once its use
    reaches that, as it flags every pool of a cluster whose OSDs are full (the same
    pool flag; a quota keeps it to this pool, where other tests do not write)."""
    pool = f"abbild-small-{uuid.uuid4().hex[:12]}"
    _mon(ceph, prefix="osd pool create", pool=pool, pg_num=1, pgp_num=1)
    try:
        _mon(ceph, prefix="osd pool application enable", pool=pool, app="rbd")
        _mon(ceph, prefix="osd pool set-quota", pool=pool, field="max_bytes", val=str(8 * MiB))
        yield pool
    finally:
        _mon(ceph, prefix="osd pool delete", pool=pool, pool2=pool, yes_i_really_really_mean_it=True)


def _pool_images(ceph, pool: str) -> list[str]:
    with ceph["cluster"].open_ioctx(pool) as ioctx:
        return rbd.RBD().list(ioctx)


def test_a_put_into_a_full_pool_is_store_full_at_once(make_driver, ceph, small_pool):
    """Ceph pauses writes to a full pool until it has room again; the driver's writes
    ask to fail instead, so the upload ends with 'store full' now, not at a timeout."""
    with ceph["cluster"].open_ioctx(small_pool) as ioctx:
        for number in range(3):
            ioctx.write_full(f"filler-{number}", b"x" * (4 * MiB))
    _wait_until(f"pool {small_pool} full", lambda: _full(ceph, small_pool))
    driver = make_driver(pool=small_pool, op_timeout=60)
    started = time.monotonic()
    with pytest.raises(StoreFull, match="quota"):
        driver.put(new_name(), [os.urandom(MiB)] * 2, None)
    assert time.monotonic() - started < 10
    assert _pool_images(ceph, small_pool) == []


def test_a_pool_filling_up_during_a_put_fails_it_and_a_later_put_succeeds(make_driver, ceph, small_pool):
    """The pool reaches its quota halfway: the put fails with 'store full'. Its
    partial image cannot be removed while the pool is full (removing writes too);
    once there is room, a new put of the same key replaces it."""
    driver, name = make_driver(pool=small_pool, op_timeout=60), new_name()

    def chunks():
        for number in range(24):
            if number == 16:  # 10 MiB at least acknowledged, past the quota
                _wait_until(f"pool {small_pool} full", lambda: _full(ceph, small_pool))
            yield os.urandom(MiB)

    with pytest.raises(StoreFull):
        driver.put(name, chunks(), None)
    _mon(ceph, prefix="osd pool set-quota", pool=small_pool, field="max_bytes", val="0")
    _wait_until(f"pool {small_pool} no longer full", lambda: not _full(ceph, small_pool))
    payload = os.urandom(3 * MiB)
    stored = driver.put(name, [payload], None)
    assert read_all(driver, stored.uri) == payload
    driver.discard(name)
    assert _pool_images(ceph, small_pool) == []


def test_a_download_holds_only_the_reads_in_flight(make_driver):
    """Without the garbage collector: chunks must go by reference counting alone (a
    reference cycle through librbd's completions once kept a whole image)."""
    driver, name = make_driver(ios_in_flight=4), new_name()
    try:
        stored = driver.put(name, [os.urandom(48 * MiB)], 48 * MiB)
        gc.disable()
        tracemalloc.start()
        try:
            received = sum(len(chunk) for chunk in driver.get(stored.uri))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            gc.enable()
        assert received == 48 * MiB
        assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for 4 reads of 1 MiB in flight"
    finally:
        driver.discard(name)


def test_a_download_closed_early_waits_for_its_reads(make_driver):
    driver, name = make_driver(ios_in_flight=8), new_name()
    try:
        stored = driver.put(name, [os.urandom(16 * MiB)], 16 * MiB)
        reader = driver.get(stored.uri)
        assert len(next(reader)) == MiB
        reader.close()  # with 7 reads still in flight into their buffers
        assert list(reader) == []
    finally:
        driver.discard(name)


# -- deleting -----------------------------------------------------------------------------


def test_delete_refuses_while_a_clone_exists(shared_driver, ceph):
    name, clone = new_name(), new_name()
    payload = os.urandom(2 * MiB)
    stored = shared_driver.put(name, [payload], len(payload))
    ioctx = ceph["ioctx"]
    rbd.RBD().clone(ioctx, name, "snap", ioctx, clone, features=rbd.RBD_FEATURE_LAYERING)
    try:
        with pytest.raises(InUse, match=f"clones .*{clone}") as excinfo:
            shared_driver.delete(stored.uri)
        assert excinfo.value.uri == stored.uri
        # Nothing changed: the image, its protected snapshot and the clone are intact.
        assert read_all(shared_driver, stored.uri) == payload
        with rbd.Image(ioctx, name, read_only=True) as image:
            assert image.is_protected_snap("snap")
        with rbd.Image(ioctx, clone, read_only=True) as image:
            assert image.read(0, 16) == payload[:16]
    finally:
        rbd.RBD().remove(ioctx, clone)
    shared_driver.delete(stored.uri)
    assert name not in images(ceph)


def test_delete_refuses_when_the_image_has_other_snapshots(shared_driver, ceph):
    name = new_name()
    stored = shared_driver.put(name, [b"data"], 4)
    with rbd.Image(ceph["ioctx"], name) as image:
        image.create_snap("backup")
    with pytest.raises(InUse, match="other snapshots.*backup"):
        shared_driver.delete(stored.uri)
    with rbd.Image(ceph["ioctx"], name, read_only=True) as image:
        assert sorted(s["name"] for s in image.list_snaps()) == ["backup", "snap"]
    shared_driver.discard(name)
    assert name not in images(ceph)


def test_discard_removes_a_partial_image(shared_driver, ceph):
    """What a process killed mid-upload leaves: an image, maybe a snapshot, protected."""
    name = new_name()
    rbd.RBD().create(ceph["ioctx"], name, 4 * MiB)
    with rbd.Image(ceph["ioctx"], name) as image:
        image.write(b"half", 0)
        image.create_snap("snap")
        image.protect_snap("snap")
    shared_driver.discard(name)
    assert name not in images(ceph)
    shared_driver.discard(name)  # nothing left: no error


# -- health, errors, configuration --------------------------------------------------------


def test_check(shared_driver, ceph):
    assert shared_driver.check() == f"ok: pool {ceph['pool']} in Ceph cluster {ceph['cluster'].get_fsid()}"
    assert [name for name in images(ceph) if name.startswith("abbild-check-")] == []  # the probe is gone


def test_missing_pool_is_an_error_naming_the_fix(make_driver):
    driver = make_driver(pool="no-such-pool")
    for call in (driver.check, lambda: driver.put(new_name(), [b"x"], 1)):
        with pytest.raises(BackendError, match="pool 'no-such-pool' does not exist; create it with"):
            call()


def test_unreachable_cluster_is_backend_unavailable(make_driver, tmp_path):
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = 127.0.0.1:9\nauth client required = cephx\n")
    driver = make_driver(ceph_conf=str(conf), connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot reach the Ceph monitors"):
        driver.check()
    assert time.monotonic() - started < 10


def test_unknown_user_is_access_denied(make_driver):
    driver = make_driver(user="nobody")
    with pytest.raises(AccessDenied, match="client.nobody"):
        driver.check()


def test_properties(shared_driver, ceph):
    assert shared_driver.properties() == {"pool": ceph["pool"], "chunk_size": MiB}


def test_missing_rados_module_is_config_error(make_driver, monkeypatch):
    real_import = builtins.__import__

    def without_ceph(name, *args, **kwargs):
        if name in ("rados", "rbd"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ceph)
    with pytest.raises(ConfigError, match="python3-rados python3-rbd"):
        make_driver()


@pytest.mark.parametrize("option", ["ceph_conf", "keyring"])
def test_missing_file_is_config_error(make_driver, tmp_path, option):
    with pytest.raises(ConfigError, match=rf"'fast': {option} .* does not exist"):
        make_driver(**{option: str(tmp_path / "missing")})


def test_empty_pool_is_config_error(make_driver):
    with pytest.raises(ConfigError, match="'pool' is empty"):
        make_driver(pool="")


def test_bad_config_file_is_config_error(make_driver, tmp_path):
    conf = tmp_path / "ceph.conf"
    conf.write_text("this is [not an ini file\n")
    with pytest.raises(ConfigError, match="cannot read the Ceph config"):
        make_driver(ceph_conf=str(conf))
