"""The swift store: one Swift object per image; large ones as segments joined by an
SLO or DLO manifest."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import queue
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator

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
from abbild_swift import opts

LOG = logging.getLogger(__name__)

MiB = 1 << 20
SCHEME = "swift"
# Keys become object names, and "<key>/" starts the names of their segments; no '/' in a
# key keeps one key's segments apart from every other key's.
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
# Swift's default limit of segments in one SLO manifest (max_manifest_segments).
MAX_SEGMENTS = 1000
# Swift's default max_file_size: no segment may be larger.
MAX_SEGMENT = 5 * 1024 * MiB
# A size-unknown upload doubles its segment size every this many segments, so that
# MAX_SEGMENTS covers terabytes.
SEGMENTS_PER_SIZE = 100
IDLE_CONNECTIONS = 8
# Every object PUT: never overwrite; Swift answers 412 if the name is taken.
_CREATE_ONLY = {"If-None-Match": "*"}


class SwiftDriver(Driver):
    """Stores each object as ``<container>/<key>``, its URI ``swift://<container>/<key>``.

    Objects smaller than ``large_object_size`` go up in one PUT; larger ones, and those
    of unknown size, as segments ``<key>/<upload id>/<number>`` in the same container,
    joined by a manifest at ``<key>``. Credentials and endpoints stay in the config.
    """

    schemes = (SCHEME,)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ | Capability.LIST
    options = opts.OPTS
    # keystoneauth1's, with auth_version = 3: what it raises, and what of that means "unreachable".
    _keystone_errors: tuple[type[Exception], ...] = ()
    _keystone_unreachable: tuple[type[Exception], ...] = ()

    def configure(self) -> Capability:
        """Check the options and that python-swiftclient is there. Swift itself is not
        contacted, so the service starts while it is down; ``check()`` contacts it.

        :raises abbild.errors.ConfigError: an option is missing or wrong, or
            python-swiftclient (with python-keystoneclient for v3) is not installed.
        """
        store, conf = self.store_name, self.conf
        try:
            import requests  # swiftclient's HTTP library
            import swiftclient
        except ImportError as exc:
            raise ConfigError(
                f"store {store!r}: the swift driver needs python-swiftclient ({exc}); "
                "install it: pip install abbild-swift"
            ) from exc
        self._swiftclient = swiftclient
        self._network_errors = (requests.RequestException, OSError)

        missing = [name for name in ("auth_address", "user", "key") if not conf[name]]
        if conf.auth_version == "3" and not conf.project_name:
            missing.append("project_name")
        if missing:
            raise ConfigError(
                f"store {store!r}: {', '.join(missing)} not set; set them in the [{store}] section "
                f"(auth_version = {conf.auth_version})"
            )
        if urllib.parse.urlsplit(conf.auth_address).scheme not in ("http", "https"):
            raise ConfigError(
                f"store {store!r}: auth_address {conf.auth_address!r} is not an http(s) URL; set [{store}] "
                "auth_address to Keystone's v3 URL or Swift's v1 auth URL"
            )
        if conf.auth_version == "1" and ":" not in conf.user:
            raise ConfigError(
                f"store {store!r}: with auth_version = 1 the user is 'account:user', not {conf.user!r}; "
                f"fix [{store}] user"
            )
        if conf.ca_file:
            try:
                with open(conf.ca_file, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"store {store!r}: ca_file {conf.ca_file!r}: {exc.strerror}") from exc

        self._keystone = self._keystone_session() if conf.auth_version == "3" else None
        self._idle: queue.LifoQueue = queue.LifoQueue(IDLE_CONNECTIONS)
        self._auth_lock = threading.Lock()
        self._storage_url: str | None = None
        self._token: str | None = None
        self._containers_known: set[str] = set()
        return type(self).capabilities

    def _keystone_session(self):
        """A keystoneauth1 session: it logs in once, shares the token between all
        connections (and threads), and logs in again when the token expires."""
        store, conf = self.store_name, self.conf
        try:
            from keystoneauth1 import exceptions, session
            from keystoneauth1.identity import v3
        except ImportError as exc:
            raise ConfigError(
                f"store {store!r}: auth_version = 3 needs keystoneauth1 ({exc}); install it: pip install abbild-swift"
            ) from exc
        self._keystone_errors = (exceptions.ClientException,)
        self._keystone_unreachable = (exceptions.ConnectionError,)
        auth = v3.Password(
            auth_url=conf.auth_address,
            username=conf.user,
            password=conf.key,
            project_name=conf.project_name,
            project_domain_name=conf.project_domain_name,
            user_domain_name=conf.user_domain_name,
        )
        verify = False if conf.insecure else (conf.ca_file or True)
        return session.Session(auth=auth, verify=verify, timeout=conf.timeout)

    def _keystone_storage_url(self) -> str:
        """Swift's URL from Keystone's catalog (keystoneauth1 caches the catalog)."""
        conf = self.conf
        why = (
            f"Keystone's catalog has no {conf.service_type} endpoint (interface {conf.endpoint_type}, "
            f"region {conf.region_name or 'any'})"
        )
        try:
            with self._errors(f"log in to Keystone at {conf.auth_address}"):
                url = self._keystone.get_endpoint(
                    service_type=conf.service_type, interface=conf.endpoint_type, region_name=conf.region_name
                )
        except BackendError as exc:  # keystoneauth1's EndpointNotFound
            url, why = None, exc.reason
        if not url:
            raise BackendError(
                self.store_name, f"{why}; check [{self.store_name}] region_name, endpoint_type and service_type"
            )
        return url

    def check(self) -> str:
        """Log in, and HEAD the container (the first one, with multiple containers)."""
        container = self.conf.container
        with self._connection() as conn:
            with self._errors(f"HEAD account {self._storage_url or ''}"):
                conn.head_account()
            if self.conf.multiple_containers_seed:
                return f"ok: {conn.url}, containers {container}_*"
            try:
                with self._errors(f"HEAD container {container}", missing=container):
                    conn.head_container(container)
            except NotFound:
                if self.conf.create_container_on_put:
                    return f"ok: {conn.url}; container {container} will be created by the first upload"
                raise BackendError(
                    self.store_name,
                    f"container {container} does not exist in {conn.url}; create it, or set "
                    f"[{self.store_name}] create_container_on_put = true",
                ) from None
            return f"ok: {conn.url}, container {container}"

    def properties(self) -> dict[str, object]:
        return {
            "container": self.conf.container,
            "multiple_containers_seed": self.conf.multiple_containers_seed,
            "large_object_size": self.conf.large_object_size * MiB,
            "large_object_chunk_size": self.conf.large_object_chunk_size * MiB,
            "large_object_manifest": self.conf.large_object_manifest,
        }

    # -- reading ----------------------------------------------------------------------

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        container, name = self._parse(uri)
        if length == 0:
            self.size(uri)  # still NotFound for a missing object
            return ChunkReader(None)
        headers = {}
        if offset or length is not None:
            last = "" if length is None else offset + length - 1
            headers["Range"] = f"bytes={offset}-{last}"
        conn = self._take()
        try:
            with self._errors(f"GET {uri}", missing=uri):
                _, body = conn.get_object(container, name, resp_chunk_size=self.conf.chunk_size, headers=headers)
        except BaseException as exc:
            if _status(exc.__cause__) == 416:  # offset at or past the end: nothing to send
                self._give_back(conn)
                return ChunkReader(None)
            conn.close()
            raise

        def read(size: int) -> bytes:
            with self._errors(f"GET {uri}"):
                return body.read(size)

        def release() -> None:
            body.close()
            self._give_back(conn)

        return ChunkReader(read, release, chunk_size=self.conf.chunk_size)

    def size(self, uri: str) -> int:
        container, name = self._parse(uri)
        with self._connection() as conn, self._errors(f"HEAD {uri}", missing=uri):
            return int(conn.head_object(container, name)["content-length"])

    def list_objects(self) -> Iterator[ListedObject]:
        """The objects in the store's container and in those of any
        ``multiple_containers_seed`` it had; not segments. A DLO manifest is listed
        with 0 bytes, so an empty-looking object's size is asked for."""
        base = self.conf.container
        with self._connection() as conn, self._errors(f"GET account {conn.url or ''}"):
            _, seeded = conn.get_account(prefix=f"{base}_", full_listing=True)
        for container in [base, *(c["name"] for c in seeded)]:
            try:
                with self._connection() as conn, self._errors(f"GET container {container}", missing=container):
                    _, listing = conn.get_container(container, full_listing=True)
            except NotFound:
                continue
            for entry in listing:
                uri = uri_of(container, entry["name"])
                if self.key_of(uri) is None:
                    continue  # a segment, or a name this store does not write
                size = entry["bytes"]
                if not size:
                    try:
                        size = self.size(uri)
                    except NotFound:
                        continue  # deleted meanwhile
                written = datetime.datetime.fromisoformat(entry["last_modified"])
                if written.tzinfo is None:  # Swift's listings are in UTC
                    written = written.replace(tzinfo=datetime.timezone.utc)
                yield ListedObject(entry["name"], uri, size, written.timestamp())

    def key_of(self, uri: str) -> str | None:
        try:
            return self._parse(uri)[1]
        except NotFound:
            return None

    # -- writing ----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        container, name = self._locate(key)
        uri = uri_of(container, name)
        source = _Source(chunks)
        with self._connection() as conn:
            self._ensure_container(conn, container)
            try:
                # Fail before reading a whole upload only to reject it; the final PUT's
                # If-None-Match still catches a concurrent writer.
                with self._errors(f"HEAD {uri}", missing=uri):
                    conn.head_object(container, name)
                raise AlreadyExists(key)
            except NotFound:
                pass
            if size is not None and size < self.conf.large_object_size * MiB:
                # One PUT, chunked: a stream that fails midway never ends its body, so
                # Swift keeps nothing.
                with source.errors_first(), self._errors(f"PUT {uri}", key=key):
                    conn.put_object(container, name, source.segment(), headers=_CREATE_ONLY)
                return StoredObject(uri=uri, size=source.sent)
            extra = self._put_segmented(conn, container, name, key, source, size)
        return StoredObject(uri=uri, size=source.sent, extra=extra)

    def _put_segmented(self, conn, container: str, name: str, key: str, source: _Source, size: int | None) -> dict:
        """Upload *source* as segments, then the manifest; on any failure remove the
        segments again. :returns: the ``extra`` of the stored object."""
        prefix = f"{name}/{uuid.uuid4().hex}/"
        attempted: list[str] = []  # every segment that Swift may hold, for the clean-up
        entries: list[dict] = []
        try:
            with source.errors_first():
                while source.more():
                    segment = f"{prefix}{len(entries):08d}"
                    attempted.append(segment)
                    start = source.sent
                    with self._errors(f"PUT segment {container}/{segment}", key=key):
                        chunks = source.segment(self._segment_size(size, len(entries)))
                        etag = conn.put_object(container, segment, chunks)
                    entries.append({"path": f"/{container}/{segment}", "etag": etag, "size_bytes": source.sent - start})
            manifest = self.conf.large_object_manifest
            with self._errors(f"PUT {uri_of(container, name)}", key=key):
                if not entries:  # nothing arrived: an empty object needs no manifest
                    conn.put_object(container, name, b"", headers=_CREATE_ONLY)
                    return {}
                if manifest == "slo":
                    body = json.dumps(entries).encode()
                    conn.put_object(container, name, body, query_string="multipart-manifest=put", headers=_CREATE_ONLY)
                else:
                    headers = {**_CREATE_ONLY, "X-Object-Manifest": f"{container}/{prefix}"}
                    conn.put_object(container, name, b"", headers=headers)
            return {"manifest": manifest, "segments": str(len(entries))}
        except BaseException:
            self._delete_quietly(container, attempted)
            raise

    def _segment_size(self, size: int | None, index: int) -> int:
        base = self.conf.large_object_chunk_size * MiB
        if size is not None:  # a known size: as many equal segments as the limit allows
            return min(max(base, math.ceil(size / MAX_SEGMENTS)), MAX_SEGMENT)
        return min(base << (index // SEGMENTS_PER_SIZE), MAX_SEGMENT)

    def delete(self, uri: str) -> None:
        try:
            container, name = self._parse(uri)
            with self._connection() as conn:
                segments = self._segments_of(conn, container, name, uri)
                with contextlib.suppress(NotFound), self._errors(f"DELETE {uri}", missing=uri):
                    # The manifest first: no reader ever sees an object with segments missing.
                    conn.delete_object(container, name)
        except NotFound:
            return  # nothing there (or no object of this store): nothing to delete
        self._delete_quietly(container, segments)

    def discard(self, key: str) -> None:
        container, name = self._locate(key)
        self.delete(uri_of(container, name))
        # Segments of uploads that failed, or whose process died, before their manifest.
        with self._connection() as conn:
            try:
                with self._errors(f"GET container {container}", missing=container):
                    _, listing = conn.get_container(container, prefix=f"{name}/", full_listing=True)
            except NotFound:
                return
        self._delete_quietly(container, [entry["name"] for entry in listing])

    # -- helpers ----------------------------------------------------------------------

    def _locate(self, key: str) -> tuple[str, str]:
        """:returns: the container and object name for *key*.
        :raises AccessDenied: *key* cannot be an object name of this store."""
        if not _KEY_RE.fullmatch(key):
            raise AccessDenied(
                self.store_name,
                f"invalid key {key!r}: use up to 255 letters, digits, '.', '_' and '-', not starting with '.'",
            )
        seed = self.conf.multiple_containers_seed
        container = f"{self.conf.container}_{key[:seed]}" if seed else self.conf.container
        return container, key

    def _parse(self, uri: str) -> tuple[str, str]:
        """:returns: the container and object name *uri* names.
        :raises NotFound: *uri* is no URI of an object this store writes (another
            scheme, a container not its own, a segment)."""
        parts = urllib.parse.urlsplit(uri)
        container, name = parts.netloc, parts.path[1:]
        if parts.scheme != SCHEME or parts.query or parts.fragment or not _KEY_RE.fullmatch(name):
            raise NotFound(uri)
        base = self.conf.container
        # Its own containers only: the configured one, or one of multiple_containers_seed
        # (whatever the seed was when the object was written).
        if container != base and not (container.startswith(base + "_") and name.startswith(container[len(base) + 1 :])):
            raise NotFound(uri)
        return container, name

    def _segments_of(self, conn, container: str, name: str, uri: str) -> list[str]:
        """:returns: the names of the segments the manifest at *name* joins ([] for a
        plain object). Only segments of *name* in *container* count: a manifest cannot
        make the store delete anything else."""
        with self._errors(f"HEAD {uri}", missing=uri):
            headers = conn.head_object(container, name)
        if headers.get("x-static-large-object", "").lower() == "true":
            with self._errors(f"GET manifest {uri}", missing=uri):
                _, body = conn.get_object(container, name, query_string="multipart-manifest=get")
            paths = [entry["name"] for entry in json.loads(body)]
            names = [p.split("/", 2)[2] for p in paths if p.startswith(f"/{container}/{name}/")]
        elif "x-object-manifest" in headers:
            seg_container, _, prefix = urllib.parse.unquote(headers["x-object-manifest"]).partition("/")
            if seg_container != container or not prefix.startswith(f"{name}/"):
                return []
            with self._errors(f"GET container {container}", missing=uri):
                _, listing = conn.get_container(container, prefix=prefix, full_listing=True)
            names = [entry["name"] for entry in listing]
        else:
            return []
        return names

    def _delete_quietly(self, container: str, names: list[str]) -> None:
        """Delete what can be deleted of *names*; log what cannot (``discard`` retries)."""
        if not names:
            return
        try:
            with self._connection() as conn:
                for name in names:
                    try:
                        with self._errors(f"DELETE {container}/{name}", missing=name):
                            conn.delete_object(container, name)
                    except NotFound:
                        pass
        except StoreError as exc:
            LOG.warning(
                "store %r: %d segment(s) under %s/%s left behind (%s); discard() removes them later",
                self.store_name,
                len(names),
                container,
                names[0].rsplit("/", 1)[0],
                exc,
            )

    def _ensure_container(self, conn, container: str) -> None:
        if container in self._containers_known:
            return
        if self.conf.create_container_on_put:
            with self._errors(f"PUT container {container}"):
                conn.put_container(container)
        else:
            try:
                with self._errors(f"HEAD container {container}", missing=container):
                    conn.head_container(container)
            except NotFound:
                raise BackendError(
                    self.store_name,
                    f"container {container} does not exist; create it, or set "
                    f"[{self.store_name}] create_container_on_put = true",
                ) from None
        self._containers_known.add(container)

    # -- connections ----------------------------------------------------------------------

    def _take(self):
        """An idle connection, or a new one. New ones start from the token and storage
        URL last known, so that not every connection logs in."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        conf = self.conf
        common = {
            "cacert": conf.ca_file,
            "insecure": conf.insecure,
            "timeout": conf.timeout,
            "retries": conf.retries,
            "starting_backoff": 0.5,
            "max_backoff": 8,
        }
        if self._keystone is not None:
            # The session does the logging in; swiftclient asks it for the token.
            return self._swiftclient.Connection(
                session=self._keystone, preauthurl=self._keystone_storage_url(), **common
            )
        with self._auth_lock:
            storage_url, token = self._storage_url, self._token
        return self._swiftclient.Connection(
            authurl=conf.auth_address,
            user=conf.user,
            key=conf.key,
            auth_version="1",
            preauthurl=storage_url,
            preauthtoken=token,
            **common,
        )

    def _give_back(self, conn) -> None:
        if conn.url and conn.token:
            with self._auth_lock:
                self._storage_url, self._token = conn.url, conn.token
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    @contextlib.contextmanager
    def _connection(self):
        conn = self._take()
        try:
            yield conn
        except (NotFound, AlreadyExists):
            self._give_back(conn)  # Swift answered: the connection is fine
            raise
        except BaseException:
            conn.close()  # it may be mid-request: never reuse it
            raise
        self._give_back(conn)

    @contextlib.contextmanager
    def _errors(self, doing: str, *, missing: str | None = None, key: str | None = None):
        """Translate swiftclient's and the network's errors while *doing* into a
        :class:`StoreError`: a 404 into ``NotFound(missing)`` when *missing* is given,
        a failed If-None-Match into ``AlreadyExists(key)``."""
        try:
            yield
        except (self._swiftclient.ClientException, *self._keystone_errors) as exc:
            raise self._store_error(exc, doing, missing, key) from exc
        except self._network_errors as exc:
            raise BackendUnavailable(self.store_name, f"{doing}: cannot reach Swift or Keystone: {exc}") from exc

    def _store_error(self, exc, doing: str, missing: str | None, key: str | None) -> StoreError:
        """:param exc: a swiftclient or keystoneauth1 exception."""
        status, message = getattr(exc, "http_status", None), f"{doing}: {exc}"
        if status == 404 and missing is not None:
            return NotFound(missing)
        if status == 412 and key is not None:
            return AlreadyExists(key)
        if status == 401:
            return AccessDenied(
                self.store_name,
                f"{message}; the credentials of user {self.conf.user!r} were refused "
                f"(auth_version {self.conf.auth_version} at {self.conf.auth_address}); check "
                f"[{self.store_name}] user, key and project_name",
            )
        if status == 403:
            return AccessDenied(
                self.store_name,
                f"{message}; user {self.conf.user!r} may not do this: with Keystone it needs an "
                "operator role of the Swift cluster (usually member) on the project",
            )
        if status in (413, 507):
            return StoreFull(self.store_name, message)
        keystone_said_no = isinstance(exc, self._keystone_errors) and not isinstance(exc, self._keystone_unreachable)
        if status is None and keystone_said_no:
            return BackendError(self.store_name, message)  # an answer, but none we can act on
        if status is None or status in (408, 429, 499, 502, 503, 504):
            return BackendUnavailable(self.store_name, message)
        return BackendError(self.store_name, message)


def _status(exc: BaseException | None) -> int | None:
    return getattr(exc, "http_status", None)


def uri_of(container: str, name: str) -> str:
    return f"{SCHEME}://{container}/{name}"


class _SourceFailed(Exception):
    """Stands in, inside the HTTP layer, for an exception of the upload's chunks: urllib3
    swallows some (BrokenPipeError) and wraps others (OSError)."""


class _Source:
    """The upload's chunks, consumed one segment at a time without copying.

    Exceptions raised by the chunks are remembered, so that whatever the HTTP layer
    wraps them in, the caller gets the original (``errors_first``).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._ahead: bytes | None = None
        self._error: BaseException | None = None
        self.sent = 0

    def more(self) -> bool:
        """Read ahead to the next non-empty chunk. :returns: False at the end."""
        if self._ahead is None:
            try:
                for chunk in self._chunks:
                    if chunk:
                        self._ahead = chunk
                        break
            except Exception as exc:
                self._error = exc
                raise _SourceFailed() from exc
            except BaseException as exc:  # KeyboardInterrupt and the like pass through as they are
                self._error = exc
                raise
        return self._ahead is not None

    def segment(self, limit: float = math.inf) -> Iterator[bytes]:
        """Yield whole chunks until at least *limit* bytes went out, or the end.
        Only the chunk in flight is in memory."""
        sent = 0
        while sent < limit and self.more():
            chunk, self._ahead = self._ahead, None
            sent += len(chunk)
            self.sent += len(chunk)
            yield chunk

    @contextlib.contextmanager
    def errors_first(self):
        """Re-raise the chunks' own exception, unchanged, if they raised one."""
        try:
            yield
        except BaseException:
            if self._error is not None:
                raise self._error  # noqa: B904  the original, as the caller gave it
            raise
