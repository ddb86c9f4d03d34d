"""The ``http`` registry: image metadata kept by an ``abbild-registry`` service.

Every request acts for the caller bound by :mod:`abbild.caller` (the service itself
when none is), so the registry applies the user's visibility rules, not the API
node's. With ``auth_strategy = hmac`` each request is signed with the shared secret
and names the caller; with ``keystone`` it carries the user's token (``X-Auth-Token``)
and this node's service token (``X-Service-Token``), and the registry reads the
caller from the user's token itself. Reads, conditional writes and deletes are
retried on transport errors with backoff; a POST is retried only when it never reached
the server, or when a repeat is recognised (creating a namespace). A registry that
cannot be reached raises :class:`~abbild.errors.RegistryUnavailable` (HTTP 503 at the
API).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse

import requests
import urllib3.exceptions
from oslo_config import cfg

from abbild import caller
from abbild import registry_wire as wire
from abbild.errors import (
    ConcurrentUpdate,
    ConfigError,
    ImageNotFound,
    MemberNotFound,
    MetadefNotFound,
    QuotaExceeded,
    RegistryError,
    RegistryUnavailable,
    TaskNotFound,
)
from abbild.image import Image
from abbild.metadefs import Namespace, NamespaceFilters, ResourceType, namespace_document
from abbild.registry import CacheEntry, ImageFilters, Member, Registry, Viewer
from abbild.tasks import Task, TaskFilters

LOG = logging.getLogger(__name__)
GROUP = "registry_client"

client_opts = [
    cfg.URIOpt(
        "url", default="http://127.0.0.1:9191", schemes=["http", "https"], help="Where abbild-registry listens."
    ),
    cfg.StrOpt(
        "auth_strategy",
        default="hmac",
        choices=[
            ("hmac", "sign every request with shared_secret"),
            ("keystone", "send the user's token and a service token of the user below"),
        ],
        help="How to authenticate to the registry: the same as its [registry_server] "
        "auth_strategy.\n\n"
        "Related options: shared_secret; auth_url, username, password, project_name, "
        "user_domain_name, project_domain_name",
    ),
    cfg.StrOpt(
        "shared_secret",
        secret=True,
        help="Key that signs every request; the same value as the registry's "
        "[registry_server] shared_secret. Unset: requests go unsigned, which only a "
        "registry with auth_strategy = noauth accepts.",
    ),
    cfg.FloatOpt("timeout", default=30.0, min=0.1, help="Seconds to wait for the registry to connect or answer."),
    cfg.IntOpt(
        "retries",
        default=3,
        min=0,
        help="Further attempts after a transport error, with exponential backoff. Reads, "
        "conditional writes and deletes are retried; creating an image or a member only "
        "when the request never reached the registry.",
    ),
    cfg.FloatOpt("retry_backoff", default=0.2, min=0, help="Seconds before the first retry; doubles after each."),
    cfg.StrOpt("ca_file", help="CA bundle to verify an https registry with; default: the system's."),
    # The service user of auth_strategy = keystone: its token proves that a request
    # comes from an API node; it needs the role ``service``.
    cfg.StrOpt("auth_url", help="Keystone's identity endpoint, e.g. http://keystone:5000/v3 (keystone only)."),
    cfg.StrOpt("username", help="The API nodes' service user (keystone only); it needs the role service."),
    cfg.StrOpt("password", secret=True, help="Password of username (keystone only)."),
    cfg.StrOpt("project_name", default="service", help="Project of the service user's token (keystone only)."),
    cfg.StrOpt("user_domain_name", default="Default", help="Domain of username (keystone only)."),
    cfg.StrOpt("project_domain_name", default="Default", help="Domain of project_name (keystone only)."),
]

_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})


def list_opts():
    return [(GROUP, client_opts)]


def _never_sent(error: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (no connection)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError):
        reason = getattr(error.args[0], "reason", None) if error.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _describe(error: requests.RequestException, timeout: float) -> str:
    """What went wrong, in words an operator reading a 503 acts on."""
    if isinstance(error, requests.Timeout):
        return f"did not answer within {timeout:g}s"
    if _never_sent(error):
        return "refused the connection (is abbild-registry running?)"
    if isinstance(error, requests.ConnectionError):
        return "closed the connection before answering"
    return f"failed: {error}"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _no_segment(segment: str) -> bool:
    """An empty or dots-only id cannot be a path segment: HTTP clients resolve "."
    and ".." away, so the registry would see another path."""
    return not segment.strip(".")


def _image_path(image_id: str) -> str:
    """:raises abbild.errors.ImageNotFound: an id that names no image (and no path)."""
    if _no_segment(image_id):
        raise ImageNotFound(image_id)
    return f"/v1/images/{_q(image_id)}"


def _member_path(image_id: str, member_id: str) -> str:
    """:raises abbild.errors.MemberNotFound: a member id that names no member (and no path)."""
    if _no_segment(member_id):
        raise MemberNotFound(image_id, member_id)
    return f"{_image_path(image_id)}/members/{_q(member_id)}"


def _namespace_path(name: str) -> str:
    """:raises abbild.errors.MetadefNotFound: a name that cannot be a path segment
    (the registry stores none: it refuses them)."""
    if _no_segment(name):
        raise MetadefNotFound(f"Namespace {name!r} not found.")
    return f"/v1/metadefs/namespaces/{_q(name)}"


def _task_path(task_id: str) -> str:
    """:raises abbild.errors.TaskNotFound: an id that names no task (and no path)."""
    if _no_segment(task_id):
        raise TaskNotFound(task_id)
    return f"/v1/tasks/{_q(task_id)}"


def service_session(group):
    """A keystoneauth1 session of the service user in *group* (``[registry_client]``);
    it caches the token and gets a new one before it expires.

    :raises abbild.errors.ConfigError: keystoneauth1 missing, or the user not set.
    """
    try:
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
    except ImportError:
        raise ConfigError(
            "[registry_client] auth_strategy = keystone needs keystoneauth1: pip install 'abbild[keystone]'"
        ) from None
    missing = [name for name in ("auth_url", "username", "password") if not group[name]]
    if missing:
        raise ConfigError(
            f"[registry_client] auth_strategy = keystone needs {', '.join(missing)}: "
            f"the service user whose token goes with every registry request"
        )
    auth = v3.Password(
        auth_url=group.auth_url,
        username=group.username,
        password=group.password,
        project_name=group.project_name,
        user_domain_name=group.user_domain_name,
        project_domain_name=group.project_domain_name,
    )
    return session.Session(auth=auth)


class HTTPRegistry(Registry):
    """:param keystone: a keystoneauth1 session whose token goes with every request as
    ``X-Service-Token``, with the user's as ``X-Auth-Token`` (keystone mode);
    ``None``: sign with *shared_secret* (hmac mode)."""

    def __init__(
        self,
        conf=None,
        *,
        url: str | None = None,
        shared_secret: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        retry_backoff: float = 0.2,
        ca_file: str | None = None,
        keystone=None,
    ) -> None:
        if conf is not None:
            conf.register_opts(client_opts, group=GROUP)
            group = conf[GROUP]
            url, shared_secret, timeout = group.url, group.shared_secret, group.timeout
            retries, retry_backoff, ca_file = group.retries, group.retry_backoff, group.ca_file
            if group.auth_strategy == "keystone":
                keystone = service_session(group)
        self.url = url.rstrip("/")
        self.secret = shared_secret
        self.keystone = keystone
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        # One session: its pool keeps connections to the registry open between calls.
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if ca_file:
            self.session.verify = ca_file

    def close(self) -> None:
        self.session.close()

    # -- transport ----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body=None,
        params: dict | None = None,
        viewer: Viewer | None = None,
        as_service: bool = False,
        ok=(200,),
        ok_after_retry=(),
        resend: bool = False,
    ):
        """Send one call; returns ``(status, decoded JSON or None)``.

        :param viewer: whom the call acts for; default: the bound caller, or the
            service itself outside any request.
        :param as_service: act for the service, whoever is bound.
        :param ok_after_retry: statuses returned rather than raised when an attempt
            before the last may have reached the registry (its answer was lost).
        :param resend: retry a POST that may have arrived too: the caller tells a
            repeat from a failure (with *ok_after_retry*).
        :raises abbild.errors.RegistryUnavailable: unreachable after the retries.
        :raises abbild.errors.RegistryError: (a subclass of) what the registry raised.
        """
        if params:
            path += "?" + urllib.parse.urlencode(params)
        data = b"" if body is None else json.dumps(body).encode()
        who = wire.caller_header(None if as_service else viewer or caller.current())
        user_token = None if as_service else caller.auth_token()
        maybe_arrived = False  # an earlier attempt may have been carried out
        for attempt in range(self.retries + 1):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if self.keystone is not None:
                # The registry takes the caller from the user's token, never from us.
                headers["X-Service-Token"] = self._service_token()
                if user_token:
                    headers["X-Auth-Token"] = user_token
            elif self.secret:
                headers.update(wire.sign(self.secret, method, path, who, data))  # fresh nonce per attempt
            else:
                headers[wire.CALLER_HEADER] = who
            try:
                resp = self.session.request(
                    method, self.url + path, data=data or None, headers=headers, timeout=self.timeout
                )
                break
            except requests.RequestException as error:
                # A POST that may have arrived must not run twice: only the caller knows
                # whether doing it again is safe.
                if attempt == self.retries or not (resend or method in _IDEMPOTENT or _never_sent(error)):
                    raise RegistryUnavailable(f"{self.url} {_describe(error, self.timeout)}") from error
                LOG.warning("registry %s %s: %s; retrying", method, path.split("?")[0], _describe(error, self.timeout))
                time.sleep(self.retry_backoff * 2**attempt)
                maybe_arrived = maybe_arrived or not _never_sent(error)
        if resp.status_code in ok or (maybe_arrived and resp.status_code in ok_after_retry):
            return resp.status_code, (resp.json() if resp.content else None)
        try:
            error = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        refused = resp.status_code in (401, 403) and error is not None and error.get("type") == "Unauthorized"
        if self.keystone is not None and refused:
            # The user's token was valid a moment ago at our own auth_token filter, so
            # this is most likely about ours: get a fresh one next time.
            self.keystone.invalidate()
            raise RegistryUnavailable(
                f"{self.url} refused our tokens ({error.get('message')}): check the [registry_client] "
                f"service user (it needs the role service) and the registry's [keystone_authtoken]"
            )
        if resp.status_code == 413:
            raise QuotaExceeded(
                f"The image registry refused a request of {len(data)} bytes: the image's metadata is "
                f"larger than its [registry_server] max_request_body_size allows"
            )
        if resp.status_code == 401:
            raise RegistryUnavailable(
                f"{self.url} refused our requests ({error and error.get('message')}): check that "
                f"[registry_client] shared_secret matches the registry's and that the clocks agree"
            )
        if error is None:
            if resp.status_code >= 500:
                raise RegistryUnavailable(f"{self.url} answered {resp.status_code}")
            raise RegistryError(f"registry answered {resp.status_code} to {method} {path}: {resp.text[:200]}")
        raise wire.error_from_json(error)

    def _service_token(self) -> str:
        """This node's token, from the session's cache or a fresh one.

        :raises abbild.errors.RegistryUnavailable: Keystone would not give one.
        """
        from keystoneauth1 import exceptions

        try:
            return self.keystone.get_auth_headers()["X-Auth-Token"]
        except exceptions.ClientException as error:
            raise RegistryUnavailable(f"no service token for the registry from Keystone: {error}") from error

    def _call(self, method: str, path: str, **kwargs):
        return self._request(method, path, **kwargs)[1]

    # -- images -------------------------------------------------------------------------

    def create_image(self, image: Image) -> Image:
        return wire.image_from_json(self._call("POST", "/v1/images", body=wire.image_to_json(image), ok=(201,)))

    def get_image(self, image_id: str, *, include_deleted: bool = False) -> Image:
        params = {"include_deleted": "1"} if include_deleted else None
        return wire.image_from_json(self._call("GET", _image_path(image_id), params=params))

    def list_images(self, filters: ImageFilters, sort, limit, marker=None, viewer: Viewer | None = None):
        params = {
            "filters": json.dumps(wire.filters_to_json(filters)),
            "limit": str(limit),
            "sort": ",".join(f"{key}:{direction}" for key, direction in sort),
        }
        if marker is not None:
            params["marker"] = marker
        result = self._call("GET", "/v1/images", params=params, viewer=viewer)
        return [wire.image_from_json(i) for i in result["images"]]

    def images_in_status(self, status: str) -> list[Image]:
        # Recovery and periodic jobs: the service's question, whoever is bound.
        result = self._call("GET", "/v1/images", params={"in_status": status}, as_service=True)
        return [wire.image_from_json(i) for i in result["images"]]

    def usage(self, owner: str):
        from abbild.registry import Usage

        return Usage(**self._call("GET", f"/v1/projects/{_q(owner)}/usage"))

    def save_image(self, image: Image, *, storage_limit: int | None = None) -> Image:
        """A conditional PUT: the registry writes only if ``image.version`` is current.

        If the answer to a PUT was lost and the retry finds the version moved on, the
        image is read back: when it holds exactly what we wrote, the lost write was
        ours, and it succeeded.
        """
        sent = wire.image_to_json(image)
        params = None if storage_limit is None else {"storage_limit": str(storage_limit)}
        status, result = self._request("PUT", _image_path(image.id), body=sent, params=params, ok_after_retry=(409,))
        if status == 409:
            current = self.get_image(image.id)
            if current.version == image.version + 1 and _same_content(wire.image_to_json(current), sent):
                LOG.info("image %s: a lost answer hid our successful write", image.id)
                return current
            raise ConcurrentUpdate(image.id)
        return wire.image_from_json(result)

    # -- the cache index ----------------------------------------------------------------
    #
    # The node's own bookkeeping, not a user's: always asked as the service (in keystone
    # mode with the service token alone), whoever is bound, since a hit is counted
    # during a user's download.

    def cache_entries(self, node: str | None = None, image_id: str | None = None) -> list[CacheEntry]:
        params = {name: value for name, value in (("node", node), ("image_id", image_id)) if value is not None}
        result = self._call("GET", "/v1/cache", params=params, as_service=True)
        return [wire.cache_entry_from_json(e) for e in result["entries"]]

    def cache_put(self, entry: CacheEntry) -> CacheEntry:
        body = wire.cache_entry_to_json(entry)
        return wire.cache_entry_from_json(self._call("PUT", "/v1/cache", body=body, as_service=True))

    def cache_hit(self, node: str, image_id: str) -> None:
        # A POST: a hit whose answer was lost is not sent again, so none counts twice.
        body = {"node": node, "image_id": image_id}
        self._call("POST", "/v1/cache/hits", body=body, as_service=True, ok=(204,))

    def cache_remove(self, node: str, image_id: str) -> bool:
        # After a lost answer the retry finds nothing and says False: the first removed it.
        params = {"node": node, "image_id": image_id}
        return self._call("DELETE", "/v1/cache", params=params, as_service=True)["removed"]

    # -- leases -------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        body = {"holder": holder, "seconds": seconds}
        path = f"/v1/leases/{urllib.parse.quote(name, safe='')}"
        return self._call("PUT", path, body=body, as_service=True)["acquired"]

    def release_lease(self, name: str, holder: str) -> None:
        path = f"/v1/leases/{urllib.parse.quote(name, safe='')}"
        self._call("DELETE", path, params={"holder": holder}, as_service=True, ok=(204,))

    # -- purge --------------------------------------------------------------------------

    def purge(self, older_than, max_rows=None) -> dict[str, int]:
        # A POST: sent again after a lost answer, it would purge the next rows too.
        body = wire.purge_to_json(older_than, max_rows)
        return self._call("POST", "/v1/purge", body=body, as_service=True)["removed"]

    # -- tasks --------------------------------------------------------------------------

    def create_task(self, task: Task) -> Task:
        # A POST: not sent again once it may have arrived (a second would be a 409).
        return wire.task_from_json(self._call("POST", "/v1/tasks", body=wire.task_to_json(task), ok=(201,)))

    def get_task(self, task_id: str) -> Task:
        return wire.task_from_json(self._call("GET", _task_path(task_id)))

    def list_tasks(
        self,
        filters: TaskFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
    ) -> list[Task]:
        params = {**wire.task_filters_to_params(filters), "sort_key": sort_key, "sort_dir": sort_dir}
        if limit is not None:
            params["limit"] = str(limit)
        if marker is not None:
            params["marker"] = marker
        result = self._call("GET", "/v1/tasks", params=params)
        return [wire.task_from_json(t) for t in result["tasks"]]

    def save_task(self, task: Task) -> Task:
        """A conditional PUT, as :meth:`save_image`: after a lost answer, a task that
        holds exactly what we wrote was our write."""
        sent = wire.task_to_json(task)
        status, result = self._request("PUT", _task_path(task.id), body=sent, ok_after_retry=(409,))
        if status == 409:
            current = self.get_task(task.id)
            stored = wire.task_to_json(current)
            if current.version == task.version + 1 and _same_content(stored, sent, ignored=("expires_at",)):
                LOG.info("task %s: a lost answer hid our successful write", task.id)
                return current
            raise ConcurrentUpdate(task.id)
        return wire.task_from_json(result)

    def tasks_of_image(self, image_id: str) -> list[Task]:
        result = self._call("GET", _image_path(image_id) + "/tasks")
        return [wire.task_from_json(t) for t in result["tasks"]]

    # -- metadata definitions -----------------------------------------------------------
    #
    # A namespace name may hold any character but "/" (``OS::Compute::Hypervisor``,
    # spaces, "%", "?", "#", ...): each is %-encoded into one path segment.

    def create_namespace(self, namespace: Namespace) -> Namespace:
        """A POST that is sent again after a lost answer: when the retry finds the name
        taken by a namespace holding exactly what we sent, at its first version, the
        lost create was ours, and it succeeded."""
        status, result = self._request(
            "POST",
            "/v1/metadefs/namespaces",
            body=wire.namespace_to_json(namespace),
            ok=(201,),
            ok_after_retry=(409,),
            resend=True,
        )
        if status == 409:
            current = self._namespace_or_none(namespace.namespace)
            if current is not None and current.version == 1 and _same_namespace(current, namespace):
                LOG.info("namespace %s: a lost answer hid our successful create", namespace.namespace)
                return current
            raise wire.error_from_json(result["error"])
        return wire.namespace_from_json(result)

    def get_namespace(self, name: str) -> Namespace:
        return wire.namespace_from_json(self._call("GET", _namespace_path(name)))

    def list_namespaces(
        self,
        filters: NamespaceFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
        viewer: Viewer | None = None,
    ) -> list[Namespace]:
        """*viewer* ``None`` lists every namespace, as the interface says: asked as the
        service (in keystone mode with the service token alone, which reads metadefs).
        Another viewer goes along as ``?viewer=``: the registry lists what both it and
        the caller see (in keystone mode the caller is the token's user, whom the
        viewer cannot widen)."""
        params = [*wire.namespace_filters_to_params(filters), ("sort_key", sort_key), ("sort_dir", sort_dir)]
        if viewer is not None:
            params.append(("viewer", wire.viewer_to_param(viewer)))
        if limit is not None:
            params.append(("limit", str(limit)))
        if marker is not None:
            params.append(("marker", marker))
        result = self._call("GET", "/v1/metadefs/namespaces", params=params, viewer=viewer, as_service=viewer is None)
        return [wire.namespace_from_json(n) for n in result["namespaces"]]

    def save_namespace(self, name: str, namespace: Namespace) -> Namespace:
        """A conditional PUT, as :meth:`save_image`. After a lost answer the retry finds
        the version moved on (409) or, after a rename, no namespace *name* (404); when
        the namespace now called ``namespace.namespace`` holds exactly what we wrote, at
        the next version, the lost write was ours, and it succeeded."""
        status, result = self._request(
            "PUT", _namespace_path(name), body=wire.namespace_to_json(namespace), ok_after_retry=(404, 409)
        )
        if status in (404, 409):
            current = self._namespace_or_none(namespace.namespace)
            if current is not None and current.version == namespace.version + 1 and _same_namespace(current, namespace):
                LOG.info("namespace %s: a lost answer hid our successful write", namespace.namespace)
                return current
            raise wire.error_from_json(result["error"])
        return wire.namespace_from_json(result)

    def delete_namespace(self, name: str) -> None:
        # After a lost answer the retry finds no namespace: the first attempt removed it.
        self._request("DELETE", _namespace_path(name), ok=(204,), ok_after_retry=(404,))

    def list_resource_types(self) -> list[ResourceType]:
        result = self._call("GET", "/v1/metadefs/resource_types")
        return [wire.resource_type_from_json(r) for r in result["resource_types"]]

    def delete_resource_type(self, name: str) -> None:
        if _no_segment(name):
            raise MetadefNotFound(f"Resource type {name!r} not found.")
        # After a lost answer the retry finds no resource type: the first attempt removed it.
        path = f"/v1/metadefs/resource_types/{_q(name)}"
        self._request("DELETE", path, ok=(204,), ok_after_retry=(404,))

    def _namespace_or_none(self, name: str) -> Namespace | None:
        try:
            return self.get_namespace(name)
        except MetadefNotFound:
            return None

    # -- members ------------------------------------------------------------------------

    def list_members(self, image_id: str) -> list[Member]:
        result = self._call("GET", _image_path(image_id) + "/members")
        return [wire.member_from_json(m) for m in result["members"]]

    def get_member(self, image_id: str, member_id: str) -> Member | None:
        try:
            return wire.member_from_json(self._call("GET", _member_path(image_id, member_id)))
        except MemberNotFound:
            return None

    def add_member(self, image_id: str, member_id: str, *, limit: int | None = None) -> Member:
        body = {"member_id": member_id, "limit": limit}
        result = self._call("POST", _image_path(image_id) + "/members", body=body, ok=(201,))
        return wire.member_from_json(result)

    def set_member_status(self, image_id: str, member_id: str, status: str) -> Member:
        result = self._call("PUT", _member_path(image_id, member_id), body={"status": status})
        return wire.member_from_json(result)

    def delete_member(self, image_id: str, member_id: str) -> None:
        # After a lost answer the retry finds no member: the first attempt removed it.
        self._request("DELETE", _member_path(image_id, member_id), ok=(204,), ok_after_retry=(404,))


def _same_namespace(stored: Namespace, sent: Namespace) -> bool:
    """*stored* holds what *sent* said (the registry took it: it is well formed), times
    and version aside, children in any order."""

    def by_name(doc: dict) -> dict:
        doc = dict(doc)
        for kind in ("resource_type_associations", "objects", "tags"):
            if kind in doc:
                doc[kind] = sorted(doc[kind], key=lambda child: child["name"])
        return doc

    return by_name(namespace_document(stored)) == by_name(namespace_document(sent))


def _same_content(stored: dict, sent: dict, ignored: tuple[str, ...] = ()) -> bool:
    """Equal but for what the registry sets on every write (and *ignored*)."""
    ignored = ("version", "updated_at", "deleted_at", *ignored)
    return {k: v for k, v in stored.items() if k not in ignored} == {k: v for k, v in sent.items() if k not in ignored}
