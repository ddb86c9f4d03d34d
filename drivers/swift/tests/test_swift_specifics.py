"""What the conformance suite cannot see: how the objects look inside Swift (manifests,
segments, containers), clean-up after failures, memory, authentication and errors."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import tracemalloc
import uuid

import pytest

from abbild.errors import AccessDenied, AlreadyExists, BackendError, BackendUnavailable, ConfigError, NotFound
from abbild.testing.conformance import Boom, failing_chunks, new_key, read_all

pytestmark = pytest.mark.backend("swift")

MiB = 1 << 20


def segments(raw, container: str, key: str) -> list[str]:
    """Names of every segment of *key* in *container*, of any upload."""
    _, listing = raw.get_container(container, prefix=f"{key}/", full_listing=True)
    return [entry["name"] for entry in listing]


def container_of(uri: str) -> str:
    return uri.split("/")[2]


def streamed(total: int, chunk: int = 64 * 1024):
    """*total* bytes in fresh chunks made on the fly, so that the test holds none of them
    (and a driver that kept them would show in tracemalloc)."""
    for start in range(0, total, chunk):
        yield os.urandom(min(chunk, total - start))


# -- large objects ------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", ["slo", "dlo"])
def test_large_object_is_a_manifest_of_segments(make_driver, raw, manifest):
    driver = make_driver(large_object_manifest=manifest)
    payload = os.urandom(5 * MiB + 3)
    key = new_key()
    stored = driver.put(key, [payload[i : i + MiB // 2] for i in range(0, len(payload), MiB // 2)], len(payload))
    assert stored.extra == {"manifest": manifest, "segments": "6"}
    container = container_of(stored.uri)
    headers = raw.head_object(container, key)
    if manifest == "slo":
        assert headers["x-static-large-object"] == "True"
    else:
        assert headers["x-object-manifest"].startswith(f"{container}/{key}/")
    assert int(headers["content-length"]) == len(payload)
    assert len(segments(raw, container, key)) == 6
    assert read_all(driver, stored.uri) == payload
    # A range across a segment boundary
    assert read_all(driver, stored.uri, offset=MiB - 10, length=MiB + 20) == payload[MiB - 10 : 2 * MiB + 10]


@pytest.mark.parametrize("manifest", ["slo", "dlo"])
def test_delete_removes_manifest_and_segments(make_driver, raw, manifest):
    driver = make_driver(large_object_manifest=manifest)
    key = new_key()
    stored = driver.put(key, streamed(5 * MiB), None)
    container = container_of(stored.uri)
    assert segments(raw, container, key)
    driver.delete(stored.uri)
    assert segments(raw, container, key) == []
    with pytest.raises(NotFound):
        driver.size(stored.uri)


def test_small_known_size_is_one_plain_object(make_driver, raw):
    driver = make_driver()
    key = new_key()
    stored = driver.put(key, streamed(3 * MiB), 3 * MiB)
    assert stored.extra == {}
    headers = raw.head_object(container_of(stored.uri), key)
    assert "x-static-large-object" not in headers and "x-object-manifest" not in headers
    assert segments(raw, container_of(stored.uri), key) == []


def test_unknown_size_is_segmented_even_when_small(make_driver, raw):
    driver = make_driver()
    stored = driver.put(new_key(), [b"tiny"], None)
    assert stored.extra == {"manifest": "slo", "segments": "1"}
    assert read_all(driver, stored.uri) == b"tiny"


def test_known_size_above_the_segment_limit_gets_larger_segments(make_driver):
    driver = make_driver()
    # 1 MiB segments would need 3000 segments for 3000 MiB; the limit is 1000.
    assert driver._segment_size(3000 * MiB, 0) == 3 * MiB
    # Size unknown: the segment size doubles every 100 segments.
    assert [driver._segment_size(None, i) // MiB for i in (0, 99, 100, 250)] == [1, 1, 2, 4]


# -- failures mid-stream --------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 8 * MiB], ids=["unknown-size", "known-size"])
@pytest.mark.parametrize("exc_type", [Boom, BrokenPipeError, ConnectionResetError])
def test_failed_stream_leaves_no_segments(make_driver, raw, exc_type, size):
    # BrokenPipeError and other OSErrors: urllib3 swallows or wraps them, yet the caller
    # gets the very exception the chunks raised.
    driver = make_driver()
    key, exc = new_key(), exc_type("client went away")

    def chunks():
        yield from streamed(3 * MiB + 5)  # three whole segments, then a part of one
        raise exc

    started = time.monotonic()
    with pytest.raises(exc_type) as excinfo:
        driver.put(key, chunks(), size)
    assert excinfo.value is exc
    assert time.monotonic() - started < 10, "the failed upload hung"
    container, _ = driver._locate(key)
    assert segments(raw, container, key) == []
    with pytest.raises(NotFound):
        driver.size(f"swift://{container}/{key}")


def test_failed_manifest_removes_segments(make_driver, raw):
    # Another writer takes the key after our check: the manifest PUT meets If-None-Match.
    driver = make_driver()
    key = new_key()
    container, _ = driver._locate(key)

    def chunks():
        yield from streamed(2 * MiB)
        raw.put_object(container, key, b"the other writer's")

    with pytest.raises(AlreadyExists):
        driver.put(key, chunks(), None)
    assert segments(raw, container, key) == []
    assert raw.get_object(container, key)[1] == b"the other writer's"


def test_discard_removes_segments_of_a_crashed_upload(make_driver, raw):
    driver = make_driver()
    key = new_key()
    container, _ = driver._locate(key)
    raw.put_container(container)
    for n in range(3):  # what a process that died before its manifest leaves behind
        raw.put_object(container, f"{key}/deadbeef/{n:08d}", b"orphan")
    driver.discard(key)
    assert segments(raw, container, key) == []


# -- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, size, segments",
    [(48 * MiB, None, "6"), (48 * MiB, 48 * MiB, "6"), (15 * MiB, 15 * MiB, None)],
    ids=["segmented-unknown-size", "segmented-known-size", "single-put"],
)
def test_streamed_upload_memory_stays_below_one_segment(make_driver, total, size, segments):
    segment = 8 * MiB
    driver = make_driver(large_object_chunk_size=segment // MiB, large_object_size=16)
    driver.check()  # log in before measuring
    tracemalloc.start()
    try:
        stored = driver.put(new_key(), streamed(total), size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    assert stored.extra.get("segments") == segments
    print(
        f"\npeak Python memory while streaming {total // MiB} MiB ({segments or 'no'} segments): {peak / MiB:.2f} MiB"
    )
    assert peak < segment, f"peak {peak / MiB:.1f} MiB: the upload buffered a segment or more"


# -- containers -----------------------------------------------------------------------------


def test_multiple_containers(make_driver, raw, container_base):
    driver = make_driver(multiple_containers_seed=2)
    uris = {prefix: driver.put(f"{prefix}{uuid.uuid4().hex}", [b"x"], 1).uri for prefix in ("ab", "cd")}
    for prefix, uri in uris.items():
        assert container_of(uri) == f"{container_base}_{prefix}"
        raw.head_object(container_of(uri), uri.rsplit("/", 1)[1])
    # A store without the seed still reads them: the URI names the container.
    plain = make_driver()
    assert read_all(plain, uris["ab"]) == b"x"


@pytest.mark.parametrize(
    "uri",
    [
        "swift://somebody-elses/{key}",
        "swift://{base}_zz/{key}",  # the seed's container of another prefix
        "swift://{base}/{key}/0123/00000000",  # a segment
        "swift://user:secret@{base}/{key}",
        "file:///{base}/{key}",
        "swift://{base}/{key}?multipart-manifest=get",
    ],
)
def test_foreign_uris_are_not_found(make_driver, container_base, uri):
    driver = make_driver()
    key = new_key()
    stored = driver.put(key, [b"mine"], 4)
    assert stored.uri == f"swift://{container_base}/{key}"
    other = uri.format(base=container_base, key=key)
    with pytest.raises(NotFound):
        driver.get(other)
    assert driver.delete(other) is None  # nothing of this store there: nothing to delete
    assert read_all(driver, stored.uri) == b"mine"


def test_missing_container_without_create_on_put(make_driver, container_base):
    driver = make_driver(container=f"{container_base}-absent", create_container_on_put=False)
    with pytest.raises(BackendError, match="create_container_on_put"):
        driver.check()
    with pytest.raises(BackendError, match=f"container {container_base}-absent does not exist"):
        driver.put(new_key(), [b"x"], 1)


def test_check(make_driver, container_base):
    assert "created by the first upload" in make_driver(container=f"{container_base}-new").check()
    driver = make_driver()
    driver.put(new_key(), [b"x"], 1)
    assert driver.check().endswith(f"container {container_base}")


# -- authentication -------------------------------------------------------------------------------


def test_keystone_v3(make_driver, keystone_options, keystone_env, keystone_raw):
    driver = make_driver(**keystone_options)
    stored = driver.put(new_key(), streamed(5 * MiB), None)
    # The data is in the Keystone project's account, not in tempauth's.
    assert f"/{keystone_env['SWIFT_KEYSTONE_RESELLER_PREFIX']}" in driver.check()
    assert (
        int(keystone_raw.head_object(container_of(stored.uri), stored.uri.rsplit("/", 1)[1])["content-length"])
        == 5 * MiB
    )
    driver.delete(stored.uri)


def test_keystone_wrong_password(make_driver, keystone_options):
    driver = make_driver(**{**keystone_options, "key": "wrong"})
    with pytest.raises(AccessDenied, match="credentials of user 'abbild-swift' were refused"):
        driver.check()
    with pytest.raises(AccessDenied):
        driver.put(new_key(), [b"x"], 1)


def test_keystone_reader_may_not_write(make_driver, keystone_options, keystone_env):
    reader = {"user": keystone_env["SWIFT_KEYSTONE_READER"], "key": keystone_env["SWIFT_KEYSTONE_READER_PASSWORD"]}
    driver = make_driver(**{**keystone_options, **reader})
    with pytest.raises(AccessDenied, match="operator role"):
        driver.put(new_key(), [b"x"], 1)


def test_keystone_no_endpoint_in_region(make_driver, keystone_options):
    driver = make_driver(**keystone_options, region_name="Atlantis")
    with pytest.raises(BackendError, match="region_name"):
        driver.check()


def test_tempauth_wrong_key(make_driver):
    driver = make_driver(key="wrong")
    with pytest.raises(AccessDenied, match="credentials of user 'test:tester' were refused"):
        driver.check()


def test_expired_token_logs_in_again(make_driver):
    driver = make_driver()
    stored = driver.put(new_key(), [b"x"], 1)
    while not driver._idle.empty():  # new connections start from the (bad) shared token
        driver._idle.get_nowait().close()
    driver._token = "AUTH_tk" + "0" * 32
    assert read_all(driver, stored.uri) == b"x"
    assert driver._token != "AUTH_tk" + "0" * 32


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("auth", ["tempauth", "keystone"])
def test_unreachable(make_driver, closed_port, auth, request):
    options = {"auth_address": f"http://127.0.0.1:{closed_port}/auth/v1.0", "retries": 0}
    if auth == "keystone":
        options = {**request.getfixturevalue("keystone_options"), "auth_address": f"http://127.0.0.1:{closed_port}/v3"}
    driver = make_driver(**options)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        driver.check()
    with pytest.raises(BackendUnavailable):
        driver.put(new_key(), [b"x"], 1)
    assert time.monotonic() - started < 10


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"auth_address": None}, "auth_address not set"),
        ({"user": None, "key": None}, "user, key not set"),
        ({"auth_version": "3", "user": "u"}, "project_name not set"),
        ({"user": "tester"}, "the user is 'account:user'"),
        ({"auth_address": "127.0.0.1:8090"}, "not an http"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ],
)
def test_config_errors(make_driver, overrides, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        make_driver(**overrides)
    assert "[objects]" in str(excinfo.value) or "ca_file" in message


def test_swiftclient_missing(make_driver, monkeypatch):
    monkeypatch.setitem(sys.modules, "swiftclient", None)  # import swiftclient raises ImportError
    with pytest.raises(ConfigError, match="needs python-swiftclient.*pip install abbild-swift"):
        make_driver()


def test_uri_and_options_keep_secrets_out(make_driver, swift_env):
    driver = make_driver()
    stored = driver.put(new_key(), [b"x"], 1)
    assert swift_env["ST_KEY"] not in stored.uri and "tester" not in stored.uri
    assert swift_env["ST_KEY"] not in repr(driver.properties())
    assert next(o for o in driver.options if o.name == "key").secret


def test_content_survives_byte_for_byte(make_driver):
    driver = make_driver()
    sent = hashlib.sha256()
    chunks = []
    for size in (1, 65536, 7, MiB + 1, 3 * MiB):
        chunks.append(os.urandom(size))
        sent.update(chunks[-1])
    stored = driver.put(new_key(), iter(chunks), None)
    assert hashlib.sha256(read_all(driver, stored.uri)).hexdigest() == sent.hexdigest()


def test_put_same_key_as_segmented_upload(make_driver):
    driver = make_driver()
    key = new_key()
    driver.put(key, streamed(5 * MiB), None)
    with pytest.raises(AlreadyExists):
        driver.put(key, failing_chunks(Boom()), None)
