"""The WSGI application: routes, and the ``paste.app_factory`` that builds it."""

from __future__ import annotations

import dataclasses
import logging
import re

import webob
import webob.exc as exc

from abbild import config
from abbild.audit import Auditor
from abbild.caller import acting_as
from abbild.context import ENVIRON_KEY, RequestContext
from abbild.errors import AbbildError, Forbidden
from abbild.periodic import Periodic, holder
from abbild.purge import Purger
from abbild.registry import Viewer
from abbild.scrubber import Scrubber
from abbild.service import ImageService
from abbild_api import cache, data, images, imports, info, members, metadefs, tasks
from abbild_api.errors import to_http
from abbild_api.http import BODY_LIMIT, check_text

LOG = logging.getLogger(__name__)

STAGING_SWEEP_SECONDS = 3600

# (path template, {method: handler}); handlers are called as handler(app, req, **params).
ROUTES = [
    ("/v2/images", {"GET": images.index, "POST": images.create}),
    ("/v2/images/{image_id}", {"GET": images.show, "PATCH": images.update, "DELETE": images.delete}),
    ("/v2/images/{image_id}/file", {"GET": data.download, "PUT": data.upload}),
    ("/v2/images/{image_id}/stage", {"PUT": imports.stage}),
    ("/v2/images/{image_id}/import", {"POST": imports.import_}),
    ("/v2/images/{image_id}/locations", {"GET": images.list_locations, "POST": images.add_location}),
    ("/v2/images/{image_id}/tags/{tag}", {"PUT": images.add_tag, "DELETE": images.delete_tag}),
    ("/v2/images/{image_id}/members", {"GET": members.index, "POST": members.create}),
    (
        "/v2/images/{image_id}/members/{member_id}",
        {"GET": members.show, "PUT": members.update, "DELETE": members.delete},
    ),
    ("/v2/images/{image_id}/tasks", {"GET": tasks.image_tasks}),
    ("/v2/images/{image_id}/actions/deactivate", {"POST": images.deactivate}),
    ("/v2/images/{image_id}/actions/reactivate", {"POST": images.reactivate}),
    ("/v2/schemas/{name}", {"GET": lambda app, req, name: _schema(app, req, name)}),
    ("/v2/schemas/metadefs/{name}", {"GET": lambda app, req, name: _schema(app, req, f"metadefs/{name}")}),
    ("/v2/stores/{store}/{image_id}", {"DELETE": images.delete_from_store}),
    ("/v2/info/import", {"GET": info.import_methods}),
    ("/v2/info/stores", {"GET": info.stores}),
    ("/v2/info/stores/detail", {"GET": info.stores_detail}),
    ("/v2/info/usage", {"GET": info.usage}),
    ("/v2/tasks", {"GET": tasks.index, "POST": tasks.create}),
    ("/v2/tasks/{task_id}", {"GET": tasks.show, "DELETE": tasks.delete}),
    ("/v2/cache", {"GET": cache.state, "DELETE": cache.clear}),
    # before /v2/cache/{image_id}: the first route whose path matches answers
    ("/v2/cache/clean", {"POST": cache.clean}),
    ("/v2/cache/prune", {"POST": cache.prune}),
    ("/v2/cache/nodes/{image_id}", {"GET": cache.nodes}),
    ("/v2/cache/{image_id}", {"PUT": cache.queue, "DELETE": cache.delete}),
    *metadefs.ROUTES,
]


def _schema(app, req, name):
    handler = info.SCHEMAS.get(name)
    if handler is None:
        raise exc.HTTPNotFound(explanation=f"No schema named {name!r}.")
    return handler(app, req)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiOptions:
    """The options a request reads, read from the conf once: each oslo.config lookup
    costs microseconds, and a list reads some for every image it shows."""

    max_json_body_size: int
    show_multiple_locations: bool
    show_image_direct_url: bool
    limit_param_default: int
    api_limit_max: int
    max_property_value_length: int

    @classmethod
    def from_conf(cls, conf) -> ApiOptions:
        return cls(**{field.name: getattr(conf, field.name) for field in dataclasses.fields(cls)})


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


class Application:
    """Dispatches to the handlers and turns abbild's errors into HTTP errors."""

    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.conf = service.conf
        self.options = ApiOptions.from_conf(service.conf)
        self.routes = [(_compile(t), methods) for t, methods in ROUTES]

    @staticmethod
    def context(req: webob.Request) -> RequestContext:
        return req.environ[ENVIRON_KEY]

    def __call__(self, environ, start_response):
        # webob.dec.wsgify's part, less what no handler uses: it makes a second
        # Response for every request and merges its (never set) cookies into the answer.
        req = webob.Request(environ)
        try:
            resp = self.dispatch(req)
        except exc.HTTPException as error:
            resp = error
        return resp(environ, start_response)

    def dispatch(self, req: webob.Request) -> webob.Response:
        path = _checked_url(req)
        req.environ[BODY_LIMIT] = self.options.max_json_body_size
        for pattern, methods in self.routes:
            m = pattern.match(path)
            if not m:
                continue
            handler = methods.get(req.method)
            if handler is None:
                raise exc.HTTPMethodNotAllowed(
                    explanation=f"{req.method} is not allowed on this resource.",
                    headers={"Allow": ", ".join(methods)},
                )
            params = m.groupdict()
            if "image_id" in params:  # ids are stored lower-case; a client may use its own spelling
                params["image_id"] = params["image_id"].lower()
            try:
                # The http registry acts for this caller (nobody in particular without one).
                ctx = req.environ.get(ENVIRON_KEY)
                with acting_as(ctx.viewer if ctx is not None else Viewer(), getattr(ctx, "auth_token", None)):
                    if ctx is not None and ctx.anonymous and req.method not in ("GET", "HEAD"):
                        self._refuse_anonymous_write(req, params.get("image_id"), ctx)
                    return handler(self, req, **params)
            except AbbildError as error:
                raise to_http(error) from error
        raise exc.HTTPNotFound(explanation="The resource could not be found.")

    def _refuse_anonymous_write(self, req, image_id: str | None, ctx: RequestContext) -> None:
        """An anonymous caller may only read, so a write gets the answer it would get
        anyway (404 for an image it cannot see, else 403) before its body is read."""
        if image_id is not None:
            self.service.get(image_id, ctx.viewer)
        raise Forbidden(f"Anonymous callers may only read: {req.method} needs credentials (an X-Auth-Token).")


def _checked_url(req: webob.Request) -> str:
    """The decoded path; the query string is decoded too (``req.GET``), so that no
    handler meets bytes that are not UTF-8, or a NUL no database keeps."""
    try:
        path, query = req.path_info, req.GET
    except UnicodeDecodeError:
        raise exc.HTTPBadRequest(explanation="The URL is not valid UTF-8 once its %-escapes are decoded.") from None
    check_text(path, "The URL path")
    for name, value in query.items():
        check_text(name + "=" + value, "The query string")
    return path


def app_factory(global_conf, **local_conf):
    """``paste.app_factory``: the configuration its pipeline's loader parsed, else the
    config files of the ``config_files`` setting (a comma-separated list)."""
    if not global_conf.get("config_files") and local_conf.get("config_files"):  # an ini naming its own files
        global_conf = {**global_conf, "config_files": local_conf["config_files"]}
    service = ImageService.from_config(config.for_pipeline(global_conf))
    start_periodic(service)
    return Application(service)


def start_periodic(service: ImageService) -> Periodic:
    """The deployment's periodic processes, each every ``<name>_interval`` seconds (0:
    off; the purge and the audit are off by default, the scrubber runs every 300
    seconds, since data a failing store kept waits for it), in this API process: every
    process may run them, and their leases let one at a time in the whole deployment
    do each. Graceful shutdown stops them (:func:`abbild.periodic.stop_all`)."""
    conf = service.conf
    periodic = Periodic(service.registry, holder(), service.jobs.closing)
    periodic.add("scrub", conf.scrub_interval, Scrubber(service).run)
    periodic.add("purge", conf.purge_interval, Purger.from_config(conf, service.registry).run)
    periodic.add("audit", conf.audit_interval, Auditor.from_config(service).run)
    # Staged data nobody waits for (its image deleted on a node that cannot reach this
    # staging area): hourly, on each node for its own disk, or once for a shared area.
    imports = service.imports
    periodic.add("staging-sweep", STAGING_SWEEP_SECONDS, lambda _: imports.sweep(), imports.staging.shared)
    return periodic.start()
