"""The private registry protocol, shared by the ``http`` driver and ``abbild-registry``:
JSON forms of images, members, cache entries, tasks, metadefs, filters, callers and
errors, and the request signature.

A request is signed with HMAC-SHA256 over its method, path and query, a timestamp, a
nonce, the caller it acts for and the SHA-256 of its body. The server rejects a
signature that does not match, a timestamp outside its window and a nonce it saw
within that window, so a captured request can neither be altered nor replayed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import re
import secrets
import threading
import time

from abbild import errors
from abbild.image import Image, Location, Status
from abbild.metadefs import Association, MetadefObject, MetadefTag, Namespace, NamespaceFilters, ResourceType
from abbild.registry import CacheEntry, ImageFilters, Member, Viewer
from abbild.tasks import Task, TaskFilters, TaskStatus

CALLER_HEADER = "X-Abbild-Caller"
TIMESTAMP_HEADER = "X-Abbild-Timestamp"
NONCE_HEADER = "X-Abbild-Nonce"
SIGNATURE_HEADER = "X-Abbild-Signature"

# -- values -------------------------------------------------------------------------------


def _time_out(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:  # the registry keeps naive UTC
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value.replace(microsecond=0).isoformat()


def _time_in(value: str | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value)


_IMAGE_TIMES = ("created_at", "updated_at", "deleted_at", "upload_lease")


def image_to_json(image: Image) -> dict:
    value = dataclasses.asdict(image)
    value["status"] = Status(image.status).value
    value["tags"] = sorted(image.tags)
    for name in _IMAGE_TIMES:
        value[name] = _time_out(getattr(image, name))
    return value


def image_from_json(value: dict) -> Image:
    value = dict(value)
    value["status"] = Status(value["status"])
    value["tags"] = set(value["tags"])
    value["locations"] = [Location(**loc) for loc in value["locations"]]
    for name in _IMAGE_TIMES:
        value[name] = _time_in(value[name])
    return Image(**value)


def member_to_json(member: Member) -> dict:
    value = dataclasses.asdict(member)
    value["created_at"], value["updated_at"] = _time_out(member.created_at), _time_out(member.updated_at)
    return value


def member_from_json(value: dict) -> Member:
    value = dict(value)
    value["created_at"], value["updated_at"] = _time_in(value["created_at"]), _time_in(value["updated_at"])
    return Member(**value)


_CACHE_TIMES = ("last_accessed", "last_modified")


def cache_entry_to_json(entry: CacheEntry) -> dict:
    value = dataclasses.asdict(entry)
    for name in _CACHE_TIMES:
        value[name] = _time_out(getattr(entry, name))
    return value


def cache_entry_from_json(value: dict) -> CacheEntry:
    """:raises TypeError: not a cache entry (a missing or unknown field)."""
    value = dict(value)
    for name in _CACHE_TIMES:
        value[name] = _time_in(value.get(name))
    return CacheEntry(**value)


_TASK_TIMES = ("created_at", "updated_at", "expires_at")


def task_to_json(task: Task) -> dict:
    value = dataclasses.asdict(task)
    value["status"] = TaskStatus(task.status).value
    for name in _TASK_TIMES:
        value[name] = _time_out(getattr(task, name))
    return value


def task_from_json(value: dict) -> Task:
    """:raises TypeError, ValueError: not a task (a missing or unknown field, a bad status)."""
    value = dict(value)
    value["status"] = TaskStatus(value["status"])
    for name in _TASK_TIMES:
        value[name] = _time_in(value.get(name))
    return Task(**value)


def task_filters_to_params(filters: TaskFilters) -> dict[str, str]:
    return {name: value for name, value in dataclasses.asdict(filters).items() if value is not None}


def task_filters_from_params(params) -> TaskFilters:
    return TaskFilters(**{f.name: params.get(f.name) for f in dataclasses.fields(TaskFilters)})


def purge_to_json(older_than: datetime.datetime, max_rows: int | None) -> dict:
    return {"older_than": _time_out(older_than), "max_rows": max_rows}


def purge_from_json(value: dict) -> tuple[datetime.datetime, int | None]:
    """:raises KeyError, TypeError, ValueError: not the arguments of a purge."""
    return datetime.datetime.fromisoformat(value["older_than"]), value.get("max_rows")


# A metadef's times keep their microseconds: the wire hands on exactly what the
# registry stored, so a child's time shows whether a save touched it.
_METADEF_TIMES = ("created_at", "updated_at")


def _metadef_times_out(value: dict) -> dict:
    for name in _METADEF_TIMES:
        when = value[name]
        if when is not None and when.tzinfo is not None:
            when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        value[name] = None if when is None else when.isoformat()
    return value


def _metadef_times_in(value: dict) -> dict:
    value = dict(value)
    for name in _METADEF_TIMES:
        value[name] = _time_in(value.get(name))
    return value


def namespace_to_json(namespace: Namespace) -> dict:
    """The whole aggregate: the namespace, its children with their times, its version."""
    value = _metadef_times_out(dataclasses.asdict(namespace))
    for kind in ("objects", "tags", "associations"):
        value[kind] = [_metadef_times_out(child) for child in value[kind]]
    return value


def namespace_from_json(value: dict) -> Namespace:
    """:raises TypeError, ValueError: not a namespace (a missing or unknown field, a
    value of the wrong type, a malformed time)."""
    value = _metadef_times_in(value)
    value["objects"] = [MetadefObject(**_metadef_times_in(o)) for o in value.get("objects", [])]
    value["tags"] = [MetadefTag(**_metadef_times_in(t)) for t in value.get("tags", [])]
    value["associations"] = [Association(**_metadef_times_in(a)) for a in value.get("associations", [])]
    namespace = Namespace(**value)
    _check_namespace_types(namespace)
    return namespace


def _check_namespace_types(namespace: Namespace) -> None:
    """What the registry stores is what the types say, so a malformed body is a 400,
    never an error deep in the database layer."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TypeError(f"namespace {namespace.namespace!r}: {what}")

    def text(value, what: str, optional: bool = True) -> None:
        need(isinstance(value, str) or (optional and value is None), f"{what} must be a string")

    def definitions(value, what: str) -> None:
        need(isinstance(value, dict), f"{what} must be an object")
        for name, definition in value.items():
            need(isinstance(definition, dict), f"{what}.{name} must be an object")

    text(namespace.namespace, "'namespace'", optional=False)
    for field in ("display_name", "description", "visibility", "owner"):
        text(getattr(namespace, field), f"'{field}'")
    need(isinstance(namespace.protected, bool), "'protected' must be true or false")
    need(isinstance(namespace.version, int) and not isinstance(namespace.version, bool), "'version': an integer")
    definitions(namespace.properties, "properties")
    for obj in namespace.objects:
        text(obj.name, "an object's name", optional=False)
        text(obj.description, f"object {obj.name}'s description")
        need(isinstance(obj.required, list) and all(isinstance(r, str) for r in obj.required), "'required'")
        definitions(obj.properties, f"object {obj.name}'s properties")
    for tag in namespace.tags:
        text(tag.name, "a tag's name", optional=False)
    for association in namespace.associations:
        text(association.name, "a resource type's name", optional=False)
        text(association.prefix, "'prefix'")
        text(association.properties_target, "'properties_target'")


def resource_type_to_json(resource_type: ResourceType) -> dict:
    return _metadef_times_out(dataclasses.asdict(resource_type))


def resource_type_from_json(value: dict) -> ResourceType:
    return ResourceType(**_metadef_times_in(value))


def namespace_filters_to_params(filters: NamespaceFilters) -> list[tuple[str, str]]:
    """Query parameters; one ``resource_type`` per name, since a name may hold a comma."""
    params = [("resource_type", name) for name in filters.resource_types]
    if filters.visibility is not None:
        params.append(("visibility", filters.visibility))
    return params


def viewer_to_param(viewer: Viewer) -> str:
    """Whose view a list is for (``GET /v1/metadefs/namespaces?viewer=``), where it may
    differ from the caller's (the owner of an image an administrator changes)."""
    return json.dumps({"project_id": viewer.project_id, "is_admin": viewer.is_admin, "anonymous": viewer.anonymous})


def viewer_from_param(text: str) -> Viewer:
    """:raises TypeError, ValueError: not a viewer."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("a viewer is an object")
    viewer = Viewer(**value)
    if not (
        (viewer.project_id is None or isinstance(viewer.project_id, str))
        and isinstance(viewer.is_admin, bool)
        and isinstance(viewer.anonymous, bool)
    ):
        raise TypeError("a viewer has a project id, is_admin and anonymous")
    return viewer


def namespace_filters_from_params(params) -> NamespaceFilters:
    """*params*: a webob MultiDict."""
    return NamespaceFilters(visibility=params.get("visibility"), resource_types=tuple(params.getall("resource_type")))


def filters_to_json(filters: ImageFilters) -> dict:
    value = dataclasses.asdict(filters)
    value["times"] = [[name, op, _time_out(when)] for name, op, when in filters.times]
    return value


def filters_from_json(value: dict) -> ImageFilters:
    value = dict(value)
    value["times"] = [(name, op, _time_in(when)) for name, op, when in value.get("times", [])]
    known = {f.name for f in dataclasses.fields(ImageFilters)}
    return ImageFilters(**{k: v for k, v in value.items() if k in known})


# -- callers ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Caller:
    """Whom a registry request acts for: a user's viewer, or the service itself
    (start-up recovery, periodic jobs), which sees everything, unless *jobs_only*:
    a Keystone service token without a user's token, which may only carry uploads
    in progress on (see :mod:`abbild_registry.app`)."""

    viewer: Viewer | None  # None: the service
    jobs_only: bool = False

    @property
    def is_service(self) -> bool:
        return self.viewer is None

    @property
    def privileged(self) -> bool:
        return not self.jobs_only and (self.viewer is None or self.viewer.is_admin)

    def as_viewer(self) -> Viewer:
        return self.viewer if self.viewer is not None else Viewer(is_admin=True)


def caller_header(viewer: Viewer | None) -> str:
    value = {"service": True} if viewer is None else {"service": False, **dataclasses.asdict(viewer)}
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def caller_from_header(text: str) -> Caller:
    """:raises ValueError: not a caller."""
    value = json.loads(text)
    if not isinstance(value, dict) or not isinstance(value.get("service"), bool):
        raise ValueError("not a caller")
    if value["service"]:
        return Caller(None)
    fields = {f.name for f in dataclasses.fields(Viewer)}
    viewer = Viewer(**{k: v for k, v in value.items() if k in fields})
    viewer.roles = tuple(viewer.roles)
    return Caller(viewer)


# -- errors -------------------------------------------------------------------------------

# The registry errors that cross the wire, with what each constructor takes. Anything
# else the server raises arrives as a RegistryError with its message.
_ERRORS = {
    cls.__name__: (cls, params)
    for cls, params in (
        (errors.ImageNotFound, ("image_id",)),
        (errors.TaskNotFound, ("task_id",)),
        (errors.MetadefNotFound, ("message",)),
        (errors.DuplicateImage, ("image_id",)),
        (errors.MemberNotFound, ("image_id", "member_id")),
        (errors.ConcurrentUpdate, ("image_id",)),
        (errors.InvalidTransition, ("image_id", "current", "target")),
        (errors.RegistryUnavailable, ("reason",)),
        (errors.Invalid, ()),
        (errors.QuotaExceeded, ()),
        (errors.Conflict, ()),
        (errors.Forbidden, ()),
    )
}


def error_to_json(error: errors.AbbildError) -> dict:
    name = type(error).__name__
    cls, params = _ERRORS.get(name, (None, ()))
    if cls is None or type(error) is not cls:
        name = "RegistryError"
    return {"type": name, "message": str(error), "args": {p: getattr(error, p) for p in params}}


def error_from_json(value: dict) -> errors.AbbildError:
    cls, params = _ERRORS.get(value.get("type"), (errors.RegistryError, ()))
    return cls(**value["args"]) if params else cls(value.get("message", ""))


# -- signatures ---------------------------------------------------------------------------


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _signature(secret: str, method: str, path_qs: str, timestamp: str, nonce: str, caller: str, digest: str) -> str:
    message = "\n".join((method.upper(), path_qs, timestamp, nonce, caller, digest)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path_qs: str, caller: str, body: bytes) -> dict[str, str]:
    """The headers that authenticate one request."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    return {
        CALLER_HEADER: caller,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _signature(secret, method, path_qs, timestamp, nonce, caller, body_digest(body)),
    }


# ASCII only: compare_digest refuses other strings, and int() reads other digits.
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{16,128}")
_TIMESTAMP = re.compile(r"-?[0-9]{1,20}")


class Verifier:
    """Checks signatures, and remembers recent nonces so that a request is accepted once.

    The memory is per process: run ``abbild-registry`` with one worker process (its
    threads share it), or replays across workers stay possible within the window.
    """

    def __init__(self, secret: str, max_skew: int = 60) -> None:
        self.secret = secret
        self.max_skew = max_skew
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._lock = threading.Lock()

    def check_headers(self, headers) -> None:
        """What the headers alone decide: present, well formed and fresh. Run before
        reading the body, so an unsigned or stale request costs no read.

        :raises abbild.errors.SignatureError:
        """
        missing = [h for h in (CALLER_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER) if not headers.get(h)]
        if missing:
            raise errors.SignatureError(f"unsigned request: no {', '.join(missing)}")
        if not _SIGNATURE.fullmatch(headers[SIGNATURE_HEADER]):
            raise errors.SignatureError(f"malformed {SIGNATURE_HEADER}: 64 hex digits expected")
        if not _NONCE.fullmatch(headers[NONCE_HEADER]):
            raise errors.SignatureError(f"malformed {NONCE_HEADER}: 16 to 128 hex digits expected")
        if not _TIMESTAMP.fullmatch(headers[TIMESTAMP_HEADER]):
            raise errors.SignatureError(f"malformed {TIMESTAMP_HEADER}: seconds since the epoch expected")
        age = time.time() - int(headers[TIMESTAMP_HEADER])
        if abs(age) > self.max_skew:
            raise errors.SignatureError(
                f"stale request: its timestamp is {age:.0f}s off (the limit is {self.max_skew}s)"
            )

    def verify(self, method: str, path_qs: str, headers, body: bytes) -> None:
        """:raises abbild.errors.SignatureError:"""
        self.check_headers(headers)
        caller, timestamp, nonce, signature = (
            headers[h] for h in (CALLER_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
        )
        expected = _signature(self.secret, method, path_qs, timestamp, nonce, caller, body_digest(body))
        # compare_digest: the time taken must not tell how much of a guess was right.
        if not hmac.compare_digest(expected, signature):
            raise errors.SignatureError("bad signature")
        now = time.monotonic()
        with self._lock:
            if nonce in self._seen:
                raise errors.SignatureError("replayed request")
            if len(self._seen) > 1000:
                # A nonce older than twice the window fails the timestamp check anyway.
                self._seen = {n: t for n, t in self._seen.items() if t > now}
            self._seen[nonce] = now + 2 * self.max_skew
