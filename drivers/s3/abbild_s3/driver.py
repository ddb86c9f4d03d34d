"""The s3 store: one object per image in a bucket of any S3-compatible service."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from abbild.driver import Capability, Driver, ListedObject, StoredObject
from abbild.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    ConfigError,
    NotFound,
    StoreError,
    StoreFull,
)
from abbild.streams import ChunkReader
from abbild_s3 import opts

LOG = logging.getLogger(__name__)

MiB = 1 << 20
MAX_PARTS = 10_000
# Unknown-size uploads keep the base part size for this many parts, then double it
# every PARTS_PER_STEP parts (see part_size).
PARTS_AT_BASE = 2_000
PARTS_PER_STEP = 1_000
MAX_KEY_BYTES = 1024
# check() writes and removes an object named so; no upload's key starts like this.
PROBE_PREFIX = "abbild-check-"
# What botocore itself accepts as a bucket name (S3 proper is stricter; radosgw is not).
_BUCKET_RE = re.compile(r"[a-zA-Z0-9._-]{1,255}")

# S3 error codes, as botocore reports them (HEAD requests have no body: just the status).
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "403"}
_FULL = {"QuotaExceeded", "EntityTooLarge", "InsufficientCapacity"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "503"}


def part_size(number: int, base: int, size: int | None) -> int:
    """Size of part *number* (from 1) of a multipart upload, within S3's 10 000 parts.

    A known *size* gets equal parts, large enough to fit; an unknown one starts at
    *base* for 2 000 parts (16 GiB in 8 MiB parts), so memory stays at *base* for
    ordinary images, then doubles every 1 000 parts (3.9 TiB in all from 8 MiB).
    """
    if size is not None:
        return max(base, -(-size // MAX_PARTS))
    return base << max(0, (number - 1 - PARTS_AT_BASE) // PARTS_PER_STEP + 1)


class S3Driver(Driver):
    """Stores objects in ``bucket``, named after their key.

    URIs are ``s3://<bucket>/<key>``: no endpoint and no credentials, which live in the
    store's config group. Reads and deletes use the bucket the URI names.
    """

    schemes = ("s3",)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ | Capability.LIST
    options = opts.OPTS

    def configure(self) -> Capability:
        """Check the options and build the boto3 client. Does not contact the service:
        a store that is down at start-up is reported by ``check()`` and each request.

        :raises abbild.errors.ConfigError: boto3 is missing, or an option is unset or
            invalid; the message names the option.
        """
        conf, store = self.conf, self.store_name
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError(
                f"store {store!r} (s3) needs boto3, which is not installed ({exc}); install it with: pip install boto3"
            ) from exc
        if not conf.bucket:
            raise ConfigError(f"store {store!r}: option 'bucket' is not set; set [{store}] bucket")
        if not _BUCKET_RE.fullmatch(conf.bucket):
            raise ConfigError(
                f"store {store!r}: bucket {conf.bucket!r} is not a valid bucket name "
                "(letters, digits, '.', '_' and '-')"
            )
        if conf.endpoint_url is not None:
            self._check_endpoint_url(conf.endpoint_url)
        if bool(conf.access_key) != bool(conf.secret_key):
            raise ConfigError(
                f"store {store!r}: set both [{store}] access_key and secret_key, or neither "
                "(to use boto3's own credential sources)"
            )
        if conf.ca_file and not os.path.isfile(conf.ca_file):
            raise ConfigError(f"store {store!r}: ca_file {conf.ca_file!r} does not exist")
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": conf.addressing_style},
            connect_timeout=conf.connect_timeout,
            read_timeout=conf.read_timeout,
            retries={"max_attempts": conf.max_attempts, "mode": "standard"},
            # Room for the parts of a few concurrent uploads, without discarding connections.
            max_pool_connections=max(10, 4 * conf.large_object_upload_threads),
            # The core hashes every upload already; the CRC32 that newer boto3 adds by
            # default costs CPU, and older S3-compatible services reject its encoding.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=conf.endpoint_url,
                region_name=conf.region_name,
                aws_access_key_id=conf.access_key,
                aws_secret_access_key=conf.secret_key,
                verify=conf.ca_file or True,
                config=config,
            )
        except ValueError as exc:  # botocore's own checks of the endpoint and region
            raise ConfigError(f"store {store!r} (s3): {exc}") from exc
        self._bucket = conf.bucket
        self._threshold = conf.large_object_size * MiB
        self._part_size = conf.large_object_part_size * MiB
        self._upload_threads = conf.large_object_upload_threads
        self._where = conf.endpoint_url or f"Amazon S3 ({conf.region_name})"
        return type(self).capabilities

    def _check_endpoint_url(self, url: str) -> None:
        store = self.store_name
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"store {store!r}: endpoint_url {url!r} is not a URL of an S3 service; "
                f"set [{store}] endpoint_url to http(s)://host[:port], for example http://127.0.0.1:7480"
            )
        if parts.username or parts.password:
            raise ConfigError(
                f"store {store!r}: endpoint_url must not hold credentials; use [{store}] access_key and secret_key"
            )

    def check(self) -> str:
        """Check that the bucket exists (creating it if allowed) and takes a write."""
        probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        with self._errors(f"s3://{self._bucket}", writing=True):
            try:
                self._client.head_bucket(Bucket=self._bucket)
            except self._client.exceptions.ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise
                if not self.conf.create_bucket:
                    raise self._missing_bucket() from exc
                self._create_bucket()
            self._client.put_object(Bucket=self._bucket, Key=probe, Body=b"")
            self._client.delete_object(Bucket=self._bucket, Key=probe)
        return f"ok: bucket {self._bucket} at {self._where}"

    def properties(self) -> dict[str, object]:
        return {"bucket": self._bucket}

    # -- reading ----------------------------------------------------------------------

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        bucket, key = self._parse(uri)
        if length == 0:
            self.size(uri)  # still NotFound for a missing object
            return ChunkReader(None)
        request = {"Bucket": bucket, "Key": key}
        if offset or length is not None:
            last = "" if length is None else offset + length - 1
            request["Range"] = f"bytes={offset}-{last}"
        with self._errors(uri):
            try:
                body = self._client.get_object(**request)["Body"]
            except self._client.exceptions.ClientError as exc:
                if _code(exc) != "InvalidRange":  # 416: the offset is at or past the end
                    raise
                return ChunkReader(None)

        def read(size: int) -> bytes:
            with self._errors(uri):
                return body.read(size)

        return ChunkReader(read, body.close)

    def size(self, uri: str) -> int:
        bucket, key = self._parse(uri)
        with self._errors(uri):
            return self._client.head_object(Bucket=bucket, Key=key)["ContentLength"]

    def list_objects(self) -> Iterator[ListedObject]:
        """The bucket's objects (a multipart upload in progress is none until completed)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket)
        with self._errors(f"s3://{self._bucket}"):
            try:
                for page in pages:
                    for item in page.get("Contents", []):
                        if not item["Key"].startswith(PROBE_PREFIX):
                            yield ListedObject(
                                item["Key"], self._uri(item["Key"]), item["Size"], item["LastModified"].timestamp()
                            )
            except self._client.exceptions.NoSuchBucket:
                return  # nothing was ever stored

    def key_of(self, uri: str) -> str | None:
        try:
            bucket, key = self._parse(uri)
        except NotFound:
            return None
        return key if bucket == self._bucket else None

    # -- writing ----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        """Store *chunks* with one PUT when they fit in ``large_object_size``, else as a
        multipart upload, holding at most ``large_object_upload_threads`` + 1 parts
        in memory.

        An upload of unknown size starts like a small one: if it ends within
        ``large_object_size`` it costs one request instead of three.
        """
        self._check_key(key)
        uri = self._uri(key)
        with self._errors(key, writing=True):
            # Fail before reading a whole upload only to reject it. The writes also say
            # IfNoneMatch, for a concurrent upload of the same key, where the service
            # honours it (S3 and MinIO; radosgw 16 for single PUTs only).
            if self._exists(key):
                raise AlreadyExists(key)
            chunks = iter(chunks)
            if size is not None and size >= self._threshold:
                head, ended = bytearray(), False
            else:
                head, ended = _take(chunks, self._threshold)
            if ended:
                self._first_write(
                    self._client.put_object, Bucket=self._bucket, Key=key, Body=bytes(head), IfNoneMatch="*"
                )
                written = len(head)
            else:
                written = self._put_multipart(key, head, chunks, size)
        return StoredObject(uri=uri, size=written)

    def _put_multipart(self, key: str, head: bytearray, chunks: Iterator[bytes], size: int | None) -> int:
        """Upload *head* and then *chunks* in parts, ``large_object_upload_threads`` of
        them at a time, and complete them in order. Any failure, of a part or of
        *chunks*, aborts the upload once the parts in flight have ended, so that nothing
        of it is left (or billed).

        Memory: the parts in flight plus the one being filled, in buffers reused from
        part to part. New buffers for every part would let the allocator keep a few
        parts more than that (glibc's arenas hold on to big blocks freed by threads).
        """
        upload = self._first_write(self._client.create_multipart_upload, Bucket=self._bucket, Key=key)
        upload_id = upload["UploadId"]
        threads = self._upload_threads
        parts: list[dict] = []
        in_flight: collections.deque[tuple[Future, bytearray]] = collections.deque()
        spare: list[bytearray] = []
        pool = ThreadPoolExecutor(threads, thread_name_prefix=f"abbild-s3-{self.store_name}")

        def upload_part(number: int, body: bytearray) -> dict:
            answer = self._client.upload_part(
                Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        def collect_oldest() -> None:  # the oldest first, which keeps the parts in order
            future, buffer = in_flight.popleft()
            parts.append(future.result())
            spare.append(buffer)

        def free_buffer() -> bytearray:
            # Wait for a free thread before taking a buffer: that is the bound.
            while len(in_flight) >= threads:
                collect_oldest()
            n = part_size(len(parts) + len(in_flight) + 1, self._part_size, size)
            while spare:
                buffer = spare.pop()
                if len(buffer) == n:  # else the part size grew: the old buffer goes
                    return buffer
            return bytearray(n)

        def send(buffer: bytearray, filled: int) -> None:
            number = len(parts) + len(in_flight) + 1
            body = buffer if filled == len(buffer) else buffer[:filled]  # the last part only
            in_flight.append((pool.submit(upload_part, number, body), buffer))

        written, current, filled = 0, free_buffer(), 0

        def feed(data) -> None:
            nonlocal written, current, filled
            view, written = memoryview(data), written + len(data)
            while view:
                n = min(len(current) - filled, len(view))
                current[filled : filled + n] = view[:n]
                filled, view = filled + n, view[n:]
                if filled == len(current):
                    send(current, filled)
                    current, filled = free_buffer(), 0

        try:
            feed(head)
            head.clear()  # no second copy of the first part for the whole upload
            for chunk in chunks:  # what the iterator raises propagates unchanged
                feed(chunk)
            if filled or not (parts or in_flight):
                send(current, filled)
            while in_flight:
                collect_oldest()
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            )
        except BaseException:
            # A part still being sent must end first: one that outlived the abort could
            # leave its data behind.
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(key, upload_id)
            raise
        finally:
            pool.shutdown(wait=True)
        return written

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the original failure matters more; discard() retries
            LOG.warning(
                "store %r: could not abort multipart upload %s of %s: %s; discard() will retry",
                self.store_name,
                upload_id,
                key,
                exc,
            )

    def _first_write(self, call, **request):
        """Make the first write request of an upload, creating the bucket when it is
        missing and ``create_bucket`` allows it."""
        try:
            return call(**request)
        except self._client.exceptions.ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise
            if not self.conf.create_bucket:
                raise self._missing_bucket() from exc
        self._create_bucket()
        return call(**request)

    def _create_bucket(self) -> None:
        request = {"Bucket": self._bucket}
        region = self.conf.region_name
        if region and region != "us-east-1":  # S3 rejects the default region spelled out
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**request)
        except self._client.exceptions.BucketAlreadyOwnedByYou:
            pass  # another process was quicker
        LOG.info("store %r: created bucket %s", self.store_name, self._bucket)

    def delete(self, uri: str) -> None:
        # S3 answers the DELETE of a missing key with success, as the contract wants, so
        # no HEAD first; a missing bucket or a URI not of s3 is nothing to delete either.
        with contextlib.suppress(NotFound), self._errors(uri):
            bucket, key = self._parse(uri)
            self._client.delete_object(Bucket=bucket, Key=key)

    def discard(self, key: str) -> None:
        """Delete the object *key* and abort any multipart upload of it."""
        self._check_key(key)
        with self._errors(key, writing=True):
            self._client.delete_object(Bucket=self._bucket, Key=key)
            listing = self._client.list_multipart_uploads(Bucket=self._bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload["Key"] == key:
                    self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload["UploadId"])

    # -- helpers ----------------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self._bucket, Key=key)
        except self._client.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise
        return True

    def _check_key(self, key: str) -> None:
        if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise AccessDenied(self.store_name, f"invalid key {key!r}: use 1 to {MAX_KEY_BYTES} bytes")

    def _uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{urllib.parse.quote(key)}"

    def _parse(self, uri: str) -> tuple[str, str]:
        """:returns: bucket and key of *uri*.
        :raises NotFound: *uri* is not an ``s3://<bucket>/<key>`` URI."""
        parts = urllib.parse.urlsplit(uri)
        key = urllib.parse.unquote(parts.path[1:])
        if parts.scheme != "s3" or not _BUCKET_RE.fullmatch(parts.netloc) or not key or parts.query or parts.fragment:
            raise NotFound(uri)
        return parts.netloc, key

    def _missing_bucket(self) -> BackendError:
        store = self.store_name
        return BackendError(
            store,
            f"bucket {self._bucket!r} does not exist at {self._where}; create it, "
            f"or set [{store}] create_bucket = true",
        )

    @contextlib.contextmanager
    def _errors(self, what: str, *, writing: bool = False):
        """Translate boto3's exceptions about *what* (a URI, or the key when *writing*)
        into :class:`StoreError`; everything else passes unchanged."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, what, writing) from exc
        except BotoCoreError as exc:
            raise self._connection_error(exc) from exc

    def _client_error(self, exc, what: str, writing: bool) -> StoreError:
        code, store = _code(exc), self.store_name
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket" and writing:
            return self._missing_bucket()
        if code == "PreconditionFailed" and writing:  # IfNoneMatch: another upload won the race
            return AlreadyExists(what)
        if code in _NOT_FOUND and not writing:
            return NotFound(what)
        if code in _DENIED:
            return AccessDenied(
                store, f"{message} ({code}) at {self._where}; check [{store}] access_key and secret_key"
            )
        if code in _FULL:
            return StoreFull(store, f"{message} ({code})")
        if code in _UNAVAILABLE:
            return BackendUnavailable(store, f"{message} ({code}) at {self._where}")
        return BackendError(store, f"{what}: {message} ({code})")

    def _connection_error(self, exc) -> StoreError:
        from botocore.exceptions import ConnectionError, HTTPClientError, NoCredentialsError

        store = self.store_name
        if isinstance(exc, NoCredentialsError):
            return AccessDenied(store, f"no credentials; set [{store}] access_key and secret_key")
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return BackendUnavailable(store, f"{self._where}: {exc}")
        return BackendError(store, str(exc))


def _code(exc) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _take(chunks: Iterator[bytes], limit: int) -> tuple[bytearray, bool]:
    """Read *chunks* until more than *limit* bytes arrived or they ended.

    :returns: the bytes read, and whether the chunks ended.
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > limit:
            return buffer, False
    return buffer, True
