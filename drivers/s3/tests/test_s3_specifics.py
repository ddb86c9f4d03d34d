"""What the conformance suite cannot see: upload strategy, memory, cleanup of failed
multipart uploads, error translation and configuration."""

import builtins
import hashlib
import os
import time
import tracemalloc

import pytest
from abbild_s3.driver import MAX_PARTS, part_size

from abbild.errors import AccessDenied, AlreadyExists, BackendError, BackendUnavailable, ConfigError, NotFound
from abbild.testing.conformance import Boom, new_key, read_all

pytestmark = pytest.mark.backend("ceph")

MiB = 1 << 20


def _etag(s3_client, bucket, key) -> str:
    return s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def _uploads(s3_client, bucket, key) -> list:
    return s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])


def _stream(total: int, block: bytes):
    """*total* bytes as chunks of *block* (the last one cut), without new allocations."""
    sent = 0
    while sent < total:
        piece = block if total - sent >= len(block) else block[: total - sent]
        sent += len(piece)
        yield piece


# -- URIs ---------------------------------------------------------------------------------


def test_uri_names_bucket_and_key_only(shared_driver, bucket):
    stored = shared_driver.put("img-1", [b"abc"], 3)
    assert stored.uri == f"s3://{bucket}/img-1"
    assert read_all(shared_driver, stored.uri) == b"abc"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://{bucket}/",
        "s3://{bucket}",
        "s3://user:secret@{bucket}/img",
        "s3+https://{bucket}/img",
        "http://{bucket}/img",
        "s3://{bucket}/img?versionId=1",
        "s3://no-such-bucket-{bucket}/img",
    ],
)
def test_foreign_or_malformed_uri_is_not_found(shared_driver, bucket, uri):
    shared_driver.discard("img")
    planted = shared_driver.put("img", [b"x"], 1)  # what a lax parser might find instead
    uri = uri.format(bucket=bucket)
    for operation in (shared_driver.get, shared_driver.size):
        with pytest.raises(NotFound):
            operation(uri)
    assert shared_driver.delete(uri) is None  # nothing there: nothing to delete
    assert read_all(shared_driver, planted.uri) == b"x"


def test_delete_is_one_request_whether_or_not_the_key_exists(make_driver, s3_client, bucket):
    driver = make_driver()
    sent = []
    driver._client.meta.events.register("before-call.s3", lambda model, **_: sent.append(model.name))
    uri = driver.put(new_key(), [b"x"], 1).uri
    sent.clear()
    driver.delete(uri)
    assert sent == ["DeleteObject"]
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=uri.rsplit("/", 1)[1])["KeyCount"] == 0
    sent.clear()
    driver.delete(uri)  # gone already: S3 says 204 as well
    assert sent == ["DeleteObject"]


# -- upload strategy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, declared, multipart",
    [
        (4 * MiB, True, False),  # below large_object_size: one PUT
        (4 * MiB, False, False),  # unknown size, but it ended within large_object_size
        (5 * MiB, True, True),  # at the threshold: multipart
        (11 * MiB + 3, False, True),  # unknown size, longer than the threshold
    ],
)
def test_single_put_or_multipart(shared_driver, s3_client, bucket, size, declared, multipart):
    payload = os.urandom(size)
    key = new_key()
    stored = shared_driver.put(key, _stream(size, payload), size if declared else None)
    assert stored.size == size
    etag = _etag(s3_client, bucket, key)
    parts = -(-size // (5 * MiB))
    assert etag.endswith(f"-{parts}") if multipart else "-" not in etag
    assert read_all(shared_driver, stored.uri) == payload


def test_key_taken_during_upload_is_not_overwritten(shared_driver, s3_client, bucket):
    key = new_key()

    def chunks():
        yield b"late"
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"early")  # a concurrent put that finished first

    with pytest.raises(AlreadyExists):
        shared_driver.put(key, chunks(), 4)
    assert read_all(shared_driver, f"s3://{bucket}/{key}") == b"early"


def test_threshold_zero_sends_even_empty_objects_as_multipart(make_driver, s3_client, bucket):
    driver = make_driver(large_object_size=0)
    key = new_key()
    stored = driver.put(key, [], 0)
    assert stored.size == 0
    assert _etag(s3_client, bucket, key).endswith("-1")
    assert read_all(driver, stored.uri) == b""


def test_part_size_fits_s3_limits():
    base = 16 * MiB
    assert part_size(1, base, 100 * MiB) == base
    huge = 1 << 40  # 1 TiB in 16 MiB parts would be 65 536 parts
    assert part_size(1, base, huge) * MAX_PARTS >= huge
    # Unknown size: 16 MiB for the first 2 000 parts, then doubling every 1 000.
    sizes = [part_size(n, base, None) for n in (1, 2000, 2001, 3000, 3001, MAX_PARTS)]
    assert sizes == [base, base, 2 * base, 2 * base, 4 * base, 256 * base]
    assert sum(part_size(n, base, None) for n in range(1, MAX_PARTS + 1)) > 7 * (1 << 40)
    # 8 MiB parts (the default): beyond 3.5 TiB, above any image_size_cap in use.
    assert sum(part_size(n, 8 * MiB, None) for n in range(1, MAX_PARTS + 1)) > 3.5 * (1 << 40)


def test_large_upload_keeps_memory_bounded(make_driver, s3_client, bucket):
    """A 256 MiB stream of unknown size goes up with (threads + 1) parts in memory."""
    part, threads = 8 * MiB, 4
    driver = make_driver(large_object_size=8, large_object_part_size=8, large_object_upload_threads=threads)
    block, total, key = os.urandom(MiB), 256 * MiB, new_key()
    tracemalloc.start()
    try:
        started = time.monotonic()
        stored = driver.put(key, _stream(total, block), None)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        print(f"\n256 MiB multipart upload: {elapsed:.1f} s, peak traced memory {peak / MiB:.1f} MiB")
        assert stored.size == total
        assert _etag(s3_client, bucket, key).endswith("-32")
        # The parts in flight plus the one being filled (the bound the option's help
        # states), and one part of slack for the incoming chunk and boto3.
        assert peak < (threads + 2) * part, f"peak {peak / MiB:.1f} MiB for {threads} x {part // MiB} MiB parts"
        expected = hashlib.sha256()
        for chunk in _stream(total, block):
            expected.update(chunk)
        received = hashlib.sha256()
        for chunk in driver.get(stored.uri):
            received.update(chunk)
        assert received.hexdigest() == expected.hexdigest()
    finally:
        driver.discard(key)  # memstore keeps it in RAM otherwise


# -- failures leave nothing ---------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False])
def test_failure_mid_multipart_aborts_the_upload(shared_driver, s3_client, bucket, declared):
    key = new_key()
    seen = []

    def chunks():
        for _ in range(12):  # two full 5 MiB parts sent, the third being filled
            yield os.urandom(MiB)
        seen.append(len(_uploads(s3_client, bucket, key)))
        raise Boom("client went away")

    with pytest.raises(Boom):
        shared_driver.put(key, chunks(), 64 * MiB if declared else None)
    assert seen == [1]  # a multipart upload was under way ...
    assert _uploads(s3_client, bucket, key) == []  # ... and was aborted
    with pytest.raises(NotFound):
        shared_driver.size(f"s3://{bucket}/{key}")


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_parts_sent_concurrently_complete_in_order(make_driver, s3_client, bucket, threads):
    """23 parts, sent a few at a time, make the very bytes that went in."""
    driver = make_driver(large_object_upload_threads=threads)
    key, total = new_key(), 23 * 5 * MiB - 12345
    data = os.urandom(total)
    try:
        stored = driver.put(key, (data[i : i + MiB] for i in range(0, total, MiB)), None)
        assert stored.size == total
        assert _etag(s3_client, bucket, key).endswith("-23")
        assert hashlib.sha256(read_all(driver, stored.uri)).digest() == hashlib.sha256(data).digest()
    finally:
        driver.discard(key)


def test_a_failing_part_aborts_the_upload_after_the_parts_in_flight(make_driver, s3_client, bucket, monkeypatch):
    """Part 3 of 10 fails (radosgw fails no part on demand: the one fault mocked here);
    the parts sent beside it end before the abort, and nothing of the upload is left."""
    from botocore.exceptions import ClientError

    driver = make_driver(large_object_upload_threads=4)
    key, real_upload_part, ended = new_key(), driver._client.upload_part, []

    def upload_part(**request):
        if request["PartNumber"] == 3:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "disk on fire"}}, "UploadPart")
        answer = real_upload_part(**request)
        ended.append(request["PartNumber"])
        return answer

    real_abort = driver._client.abort_multipart_upload
    ended_at_abort = []

    def abort_multipart_upload(**request):
        ended_at_abort.append(len(ended))
        return real_abort(**request)

    monkeypatch.setattr(driver._client, "upload_part", upload_part)
    monkeypatch.setattr(driver._client, "abort_multipart_upload", abort_multipart_upload)
    with pytest.raises(BackendError, match="disk on fire"):
        driver.put(key, _stream(50 * MiB, os.urandom(MiB)), None)
    assert ended_at_abort == [len(ended)]  # no part ended after the abort
    assert 3 not in ended and len(ended) < 9  # it stopped soon after part 3 failed
    assert _uploads(s3_client, bucket, key) == []
    with pytest.raises(NotFound):
        driver.size(f"s3://{bucket}/{key}")


def test_discard_aborts_a_dangling_multipart_upload(shared_driver, s3_client, bucket):
    key = new_key()
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)  # as a crashed process left it
    s3_client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * MiB)
    other = s3_client.create_multipart_upload(Bucket=bucket, Key=key + "-other")
    shared_driver.discard(key)
    assert _uploads(s3_client, bucket, key) == [_uploads(s3_client, bucket, key + "-other")[0]]
    s3_client.abort_multipart_upload(Bucket=bucket, Key=key + "-other", UploadId=other["UploadId"])


# -- error translation --------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["secret_key", "access_key"])
def test_bad_credentials_are_access_denied(make_driver, shared_driver, wrong):
    uri = shared_driver.put(new_key(), [b"data"], 4).uri
    driver = make_driver(**{wrong: "WRONG0000000000000000000000000000"})
    with pytest.raises(AccessDenied, match="access_key and secret_key"):
        driver.put(new_key(), [b"data"], 4)
    with pytest.raises(AccessDenied):
        driver.get(uri)
    with pytest.raises(AccessDenied):
        driver.check()


def test_unreachable_endpoint_is_backend_unavailable(make_driver):
    # Port 9 (discard) has no listener on loopback: connection refused at once.
    driver = make_driver(endpoint_url="http://127.0.0.1:9", connect_timeout=1, max_attempts=1)
    started = time.monotonic()
    for call in (driver.check, lambda: driver.put(new_key(), [b"x"], 1), lambda: driver.get("s3://b/k")):
        with pytest.raises(BackendUnavailable, match="127.0.0.1:9"):
            call()
    assert time.monotonic() - started < 10


def test_missing_bucket_is_an_error_naming_the_fix(make_driver):
    driver = make_driver(bucket=f"abbild-missing-{new_key()[-12:]}")
    with pytest.raises(BackendError, match="does not exist.*create_bucket = true"):
        driver.put(new_key(), [b"data"], 4)
    with pytest.raises(BackendError, match="create_bucket"):
        driver.check()


@pytest.mark.parametrize("size", [4, 6 * MiB])  # single PUT and multipart
def test_create_bucket_on_first_upload(make_driver, s3_client, size):
    name = f"abbild-created-{new_key()[-12:]}"
    driver = make_driver(bucket=name, create_bucket=True)
    try:
        stored = driver.put("img", [b"x" * size], size)
        assert read_all(driver, stored.uri) == b"x" * size
    finally:
        s3_client.delete_object(Bucket=name, Key="img")
        s3_client.delete_bucket(Bucket=name)


def test_check_reports_ok_and_leaves_nothing(shared_driver, s3_client, bucket):
    before = s3_client.list_objects_v2(Bucket=bucket).get("KeyCount")
    assert shared_driver.check().startswith(f"ok: bucket {bucket}")
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == before


# -- configuration ------------------------------------------------------------------------


def test_no_bucket_is_config_error(make_driver):
    with pytest.raises(ConfigError, match=r"'cold'.*'bucket' is not set"):
        make_driver(bucket=None)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:7480", "ftp://127.0.0.1", "http://", "http://127.0.0.1:7480/some/path", "http://h:port"]
)
def test_bad_endpoint_is_config_error(make_driver, url):
    with pytest.raises(ConfigError, match=r"endpoint_url .* is not a URL of an S3 service"):
        make_driver(endpoint_url=url)


def test_credentials_in_endpoint_are_config_error(make_driver):
    with pytest.raises(ConfigError, match="must not hold credentials"):
        make_driver(endpoint_url="http://key:secret@127.0.0.1:7480")


def test_access_key_without_secret_is_config_error(make_driver):
    with pytest.raises(ConfigError, match="both .*access_key and secret_key"):
        make_driver(secret_key=None)


def test_missing_ca_file_is_config_error(make_driver, tmp_path):
    with pytest.raises(ConfigError, match="ca_file"):
        make_driver(ca_file=str(tmp_path / "nope.pem"))


def test_missing_boto3_is_config_error(make_driver, monkeypatch):
    real_import = builtins.__import__

    def without_boto3(name, *args, **kwargs):
        if name == "boto3" or name.startswith("botocore"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_boto3)
    with pytest.raises(ConfigError, match="pip install boto3"):
        make_driver()


def test_properties(shared_driver, bucket):
    assert shared_driver.properties() == {"bucket": bucket}
