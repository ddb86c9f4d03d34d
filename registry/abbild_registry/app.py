"""The registry's REST API: the :class:`abbild.registry.Registry` interface as resources.

====================================  ===========================================
``GET /v1/images``                    one page (``filters``, ``sort``, ``limit``,
                                      ``marker``); ``?in_status=`` every image in a
                                      status (the service only)
``POST /v1/images``                   create
``GET /v1/images/{id}``               read (``?include_deleted=1``: the service only)
``PUT /v1/images/{id}``               write, if the body's ``version`` is current
``GET|POST /v1/images/{id}/members``  list, add (``{"member_id": ...}``)
``GET|PUT|DELETE .../members/{mid}``  read, set status (``{"status": ...}``), remove
``GET /v1/projects/{owner}/usage``    what the project holds (the project itself,
                                      the service and administrators only)
``GET /v1/cache``                     the cache index (``?node=``, ``?image_id=``)
``PUT /v1/cache``                     create or replace an entry (the body)
``DELETE /v1/cache``                  remove ``?node=&image_id=``
``POST /v1/cache/hits``               count a hit (``{"node": .., "image_id": ..}``)
``PUT /v1/leases/{name}``             take or renew a lease (``{"holder": .., "seconds": ..}``)
``DELETE /v1/leases/{name}``          give it up (``?holder=``)
``POST /v1/purge``                    purge what was deleted before ``older_than``
                                      (``{"older_than": .., "max_rows": ..}``)
``GET /v1/tasks``                     one page of tasks (``type``, ``status``,
                                      ``owner``, ``sort_key``, ``sort_dir``,
                                      ``limit``, ``marker``)
``POST /v1/tasks``                    create a task
``GET /v1/tasks/{id}``                read a task
``PUT /v1/tasks/{id}``                write, if the body's ``version`` is current
``GET /v1/images/{id}/tasks``         the tasks of an image the caller sees
``GET /v1/metadefs/namespaces``       one page of the namespaces the caller sees,
                                      whole (``visibility``, ``resource_type``
                                      (repeated: any of them), ``sort_key``,
                                      ``sort_dir``, ``limit``, ``marker``;
                                      ``viewer``: only what it sees too)
``POST /v1/metadefs/namespaces``      create a namespace with its children
``GET .../namespaces/{name}``         read one, whole
``PUT .../namespaces/{name}``         write it, if the body's ``version`` is
                                      current (the body's name may differ: a rename)
``DELETE .../namespaces/{name}``      remove it and everything in it
``GET /v1/metadefs/resource_types``   every resource type
``DELETE .../resource_types/{name}``  remove an unused, unprotected one
====================================  ===========================================

A namespace's or resource type's name is one path segment, %-encoded (it may hold
any character but ``/``; ``OS::Nova::Flavor``, spaces, ``%``, ``?``, ``#``); a name of
dots alone cannot be a segment (HTTP clients resolve it away), so the registry
refuses to create one (400).

The cache index is the API nodes' bookkeeping: only the service and administrators
use it (403 for anyone else).

Every request acts for a caller (the auth filter puts it into the environ), and the
registry applies the visibility rules to it: an image the caller may not see does
not exist, whatever an API node asks for.

With ``auth_strategy = keystone`` an API node that sends its service token without a
user's token acts for nobody: it may only carry on uploads and deletes in progress and
keep its cache index, the work that runs outside any user request (start-up recovery,
releasing a failed upload's claim once the registry is back, a location import,
deleting the data of a deleted image again, the cache's). Those are the *service jobs*:

- ``GET /v1/images?in_status=saving`` and ``?in_status=pending_delete``
- ``GET /v1/images/{id}`` of an image in ``saving`` or ``pending_delete``, or of one
  in the cache index (queued for or cached on a node: the prefetcher reads it, the
  cleaner asks whether it was deleted); any other does not exist
- ``PUT /v1/images/{id}`` of an image in ``saving`` that stays ``saving`` (a renewed
  lease) or becomes ``active`` or ``queued``, or of one in ``pending_delete`` that
  stays there (fewer locations) or becomes ``deleted``, with its owner and visibility
  unchanged
- the cache index, all of it (a node fills, prunes and cleans its cache on its own
  schedule, and counts a hit as the service even inside a user's download)
- the leases of the periodic tasks
- the purge (``POST /v1/purge``), which the periodic task of an API node runs
- ``GET`` and ``PUT /v1/tasks/{id}`` of a task still ``pending`` or ``processing``: an
  import carried on in the background (the rules of a user's write apply to it)
- imports and stages: ``GET /v1/images?in_status=uploading`` and ``?in_status=importing``
  and ``GET /v1/images/{id}`` of such an image (recovery, and the staging sweep, which
  must see every image waiting for its staged data); ``PUT /v1/images/{id}`` of an
  ``uploading`` image with a stage claim (its lease, or back to ``queued``), or of one
  whose import lock (``os_glance_import_task``) names a ``pending`` or ``processing``
  task of that image: ``importing`` stays, becomes ``active``, ``uploading`` or
  ``queued``; ``active`` (copy-image) stays, which it may also be read in
  (:mod:`abbild_registry.rules` says what such a write may change)

Anything else needs the user's token (401).

What a user's write may change is :mod:`abbild_registry.rules`: no more than the API
lets that user change.

Tasks: administrators, callers with the role ``service`` and the service itself read
and write every task; a user reads, creates and changes only the tasks of their own
project (the API adds its policy on top: the Tasks API is for administrators), and of
an image's tasks sees those of their project.

Metadata definitions: a caller sees the namespaces :func:`abbild.metadefs.namespace_visible`
shows them (administrators and the service every one, anyone else the public ones,
their project's and those nobody owns); a namespace they may not see does not exist
(404), for reads and writes alike. A user's token creates a namespace owned by the
user's own project (administrators any owner), and changes or deletes a namespace
their project owns, keeping it theirs (administrators any); nobody else writes
metadefs, and the service token alone reads them (every namespace, every resource
type) but writes none (401). Only administrators and the service remove resource
types. (:class:`abbild_registry.rules.MetadefRules`; the API's metadef policy sits on
top: by default only administrators write.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.parse

import webob
import webob.dec
import webob.exc as exc

from abbild import config, errors
from abbild import registry_wire as wire
from abbild.image import Image, Status
from abbild.imports import IMPORT_TASK
from abbild.metadefs import Namespace, namespace_visible
from abbild.registry import Registry, Viewer, why_visible
from abbild.tasks import Task, TaskStatus
from abbild_registry import opts
from abbild_registry.rules import LIVE_TASK, ImageRules, MetadefRules, TaskRules

LOG = logging.getLogger(__name__)
CALLER_KEY = "abbild_registry.caller"
#: The images a service job may work on, and where it may take them (the module docstring).
JOB_TARGETS = {
    Status.SAVING: (Status.SAVING, Status.ACTIVE, Status.QUEUED),
    Status.PENDING_DELETE: (Status.PENDING_DELETE, Status.DELETED),
}
#: The images of stages and imports a service job sees, and those it may take them to
#: while it carries on their stage (a claim) or import (a live lock).
IMPORT_STATUSES = (Status.UPLOADING, Status.IMPORTING)
IMPORT_TARGETS = {
    Status.UPLOADING: (Status.UPLOADING, Status.QUEUED),
    Status.IMPORTING: (Status.IMPORTING, Status.ACTIVE, Status.UPLOADING, Status.QUEUED),
    Status.ACTIVE: (Status.ACTIVE,),
}


def _json(value, status: int = 200) -> webob.Response:
    return webob.Response(json.dumps(value).encode(), status=status, content_type="application/json", charset=None)


def _error(error: errors.AbbildError) -> webob.Response:
    status = {
        errors.ImageNotFound: 404,
        errors.MemberNotFound: 404,
        errors.TaskNotFound: 404,
        errors.MetadefNotFound: 404,
        errors.DuplicateImage: 409,
        errors.ConcurrentUpdate: 409,
        errors.InvalidTransition: 409,
        errors.Conflict: 409,
        errors.Forbidden: 403,
        errors.Invalid: 400,
        errors.QuotaExceeded: 413,
        errors.RegistryUnavailable: 503,
    }.get(type(error), 500)
    if status == 500:
        LOG.error("unexpected registry error: %r", error)
    return _json({"error": wire.error_to_json(error)}, status)


class RegistryApp:
    """The routes, and the visibility rules applied to each request's caller."""

    def __init__(self, registry: Registry, rules: ImageRules | None = None) -> None:
        self.registry = registry
        self.rules = rules or ImageRules(load_conf([]))
        self.task_rules = TaskRules(self.rules)
        self.metadef_rules = MetadefRules()
        self.routes = [
            (re.compile(r"^/v1/images$"), {"GET": self.list_images, "POST": self.create_image}),
            (re.compile(r"^/v1/images/(?P<image_id>[^/]+)$"), {"GET": self.get_image, "PUT": self.save_image}),
            (
                re.compile(r"^/v1/images/(?P<image_id>[^/]+)/members$"),
                {"GET": self.list_members, "POST": self.add_member},
            ),
            (
                re.compile(r"^/v1/images/(?P<image_id>[^/]+)/members/(?P<member_id>[^/]+)$"),
                {"GET": self.get_member, "PUT": self.set_member_status, "DELETE": self.delete_member},
            ),
            (re.compile(r"^/v1/projects/(?P<owner>[^/]+)/usage$"), {"GET": self.usage}),
            # The node is a URL: in the query or the body, never a path segment, whose
            # %2F some front ends (Apache's AllowEncodedSlashes) refuse.
            (
                re.compile(r"^/v1/cache$"),
                {"GET": self.cache_entries, "PUT": self.cache_put, "DELETE": self.cache_remove},
            ),
            (re.compile(r"^/v1/cache/hits$"), {"POST": self.cache_hit}),
            (re.compile(r"^/v1/leases/(?P<name>[^/]*)$"), {"PUT": self.acquire_lease, "DELETE": self.release_lease}),
            (re.compile(r"^/v1/purge$"), {"POST": self.purge}),
            (re.compile(r"^/v1/tasks$"), {"GET": self.list_tasks, "POST": self.create_task}),
            (re.compile(r"^/v1/tasks/(?P<task_id>[^/]+)$"), {"GET": self.get_task, "PUT": self.save_task}),
            (re.compile(r"^/v1/images/(?P<image_id>[^/]+)/tasks$"), {"GET": self.tasks_of_image}),
            (
                re.compile(r"^/v1/metadefs/namespaces$"),
                {"GET": self.list_namespaces, "POST": self.create_namespace},
            ),
            (
                re.compile(r"^/v1/metadefs/namespaces/(?P<name>[^/]+)$"),
                {"GET": self.get_namespace, "PUT": self.save_namespace, "DELETE": self.delete_namespace},
            ),
            (re.compile(r"^/v1/metadefs/resource_types$"), {"GET": self.list_resource_types}),
            (re.compile(r"^/v1/metadefs/resource_types/(?P<name>[^/]+)$"), {"DELETE": self.delete_resource_type}),
        ]
        self._cache_handlers = (self.cache_entries, self.cache_put, self.cache_remove, self.cache_hit)
        self._lease_handlers = (self.acquire_lease, self.release_lease)

    @webob.dec.wsgify
    def __call__(self, req: webob.Request) -> webob.Response:
        path = _routed_path(req.environ)
        for pattern, methods in self.routes:
            m = pattern.match(path)
            if not m:
                continue
            handler = methods.get(req.method)
            if handler is None:
                raise exc.HTTPMethodNotAllowed(headers={"Allow": ", ".join(methods)})
            caller = req.environ[CALLER_KEY]
            if caller.jobs_only and not self._service_job(req, handler):
                return _json(
                    {
                        "error": {
                            "type": "Unauthorized",
                            "args": {},
                            "message": f"{req.method} {req.path_info} acts for a user: send the user's X-Auth-Token",
                        }
                    },
                    401,
                )
            try:
                # Segments are matched %-encoded, so an id holding a "/" stays one segment.
                return handler(req, caller, **{k: urllib.parse.unquote(v) for k, v in m.groupdict().items()})
            except errors.AbbildError as error:
                return _error(error)
            except (ValueError, KeyError, TypeError) as error:
                # A malformed body or parameter: the client (an API node) has a bug.
                return _error(errors.Invalid(f"malformed registry request: {error!r}"))
        raise exc.HTTPNotFound()

    # -- the rules ----------------------------------------------------------------------

    def _service_job(self, req: webob.Request, handler) -> bool:
        """Whether a caller without a user may try this at all (the module docstring)."""
        if handler == self.list_images:
            return req.GET.get("in_status") in {status.value for status in (*JOB_TARGETS, *IMPORT_STATUSES)}
        return handler in (
            self.get_image,
            self.save_image,
            *self._cache_handlers,
            *self._lease_handlers,
            self.purge,
            self.get_task,
            self.save_task,
            self.get_namespace,
            self.list_namespaces,
            self.list_resource_types,
        )

    def _readable(self, image: Image, caller: wire.Caller) -> bool:
        """The service reads everything, a service job (the module docstring) the images
        of its jobs and of the cache index; everyone else what the visibility rule
        (:func:`abbild.registry.why_visible`) shows them."""
        if caller.jobs_only:
            return (
                image.status in JOB_TARGETS
                or image.status in IMPORT_STATUSES
                or self._import_job(image)
                or bool(self.registry.cache_entries(image_id=image.id))
            )
        return caller.privileged or why_visible(image, caller.viewer, self.registry) is not None

    def _lock_task(self, image: Image) -> Task | None:
        """The task *image*'s import lock names, if it exists."""
        task_id = image.properties.get(IMPORT_TASK)
        if not task_id:
            return None
        try:
            return self.registry.get_task(task_id)
        except errors.TaskNotFound:
            return None

    def _import_job(self, image: Image) -> bool:
        """Whether a service job carries on *image*'s stage (a claim) or import (a lock
        of a task still at work on it)."""
        if image.status is Status.UPLOADING and image.upload_worker and not image.properties.get(IMPORT_TASK):
            return True
        task = self._lock_task(image)
        return task is not None and task.status in LIVE_TASK and task.image_id == image.id

    def _owns(self, image: Image, caller: wire.Caller) -> bool:
        if caller.jobs_only:
            return image.status in JOB_TARGETS or (image.status in IMPORT_TARGETS and self._import_job(image))
        viewer = caller.viewer
        return caller.privileged or (
            not viewer.anonymous and viewer.project_id is not None and image.owner == viewer.project_id
        )

    def _visible(self, image_id: str, caller: wire.Caller, include_deleted: bool = False) -> Image:
        image = self.registry.get_image(image_id, include_deleted=include_deleted)
        if not self._readable(image, caller):
            raise errors.ImageNotFound(image_id)  # never 403: that would say it exists
        return image

    def _owned(self, image_id: str, caller: wire.Caller) -> Image:
        image = self._visible(image_id, caller)
        if not self._owns(image, caller):
            raise errors.Forbidden(f"Image {image_id} belongs to another project.")
        return image

    @staticmethod
    def _service_only(caller: wire.Caller, what: str) -> None:
        if not caller.privileged:
            raise errors.Forbidden(f"{what} is for the service and administrators only.")

    # -- images -------------------------------------------------------------------------

    def list_images(self, req, caller):
        if "in_status" in req.GET:
            if not caller.jobs_only:  # those may list what _service_job allowed
                self._service_only(caller, "Listing images by status")
            images = self.registry.images_in_status(req.GET["in_status"])
        else:
            filters = wire.filters_from_json(json.loads(req.GET.get("filters", "{}")))
            sort = [tuple(pair.split(":", 1)) for pair in req.GET.get("sort", "").split(",") if pair]
            images = self.registry.list_images(
                filters, sort, int(req.GET["limit"]), req.GET.get("marker"), viewer=caller.as_viewer()
            )
        return _json({"images": [wire.image_to_json(i) for i in images]})

    def create_image(self, req, caller):
        image = wire.image_from_json(req.json_body)
        if not self._owns(image, caller):
            raise errors.Forbidden("Images can only be created for the caller's own project.")
        self.rules.check_create(image, caller)
        return _json(wire.image_to_json(self.registry.create_image(image)), 201)

    def get_image(self, req, caller, image_id):
        include_deleted = req.GET.get("include_deleted") == "1"
        if include_deleted and not caller.jobs_only:  # _visible limits those
            self._service_only(caller, "Reading deleted images")
        return _json(wire.image_to_json(self._visible(image_id, caller, include_deleted)))

    def save_image(self, req, caller, image_id):
        image = wire.image_from_json(req.json_body)
        if image.id != image_id:
            raise errors.Invalid(f"the body is image {image.id}, the path names {image_id}")
        # Checked on the stored image; if it changes before the write, the write's
        # version check fails, so the check always applies to what gets replaced.
        stored = self._owned(image_id, caller)
        targets = JOB_TARGETS.get(stored.status) or IMPORT_TARGETS.get(stored.status, ())
        if caller.jobs_only and not (
            image.status in targets and image.owner == stored.owner and image.visibility == stored.visibility
        ):
            raise errors.Forbidden(
                f"Without a user's token, image {image_id} may only go from '{stored.status}' "
                f"to {' or '.join(repr(s.value) for s in targets)}, keeping its owner and visibility."
            )
        self.rules.check_save(stored, image, caller, self._lock_task(image) or self._lock_task(stored))
        limit = req.GET.get("storage_limit")
        saved = self.registry.save_image(image, storage_limit=None if limit is None else int(limit))
        return _json(wire.image_to_json(saved))

    def usage(self, req, caller, owner):
        if not (caller.privileged or owner == caller.viewer.project_id):
            raise errors.Forbidden(f"Only project {owner} itself may see its usage.")
        return _json(dataclasses.asdict(self.registry.usage(owner)))

    # -- the cache index ----------------------------------------------------------------

    @staticmethod
    def _cache_index(caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user who is no administrator (the API
        nodes ask as the service)."""
        if not (caller.privileged or caller.jobs_only):
            raise errors.Forbidden("The image cache index is for the service and administrators only.")

    def cache_entries(self, req, caller):
        self._cache_index(caller)
        entries = self.registry.cache_entries(req.GET.get("node"), req.GET.get("image_id"))
        return _json({"entries": [wire.cache_entry_to_json(e) for e in entries]})

    def cache_put(self, req, caller):
        self._cache_index(caller)
        entry = self.registry.cache_put(wire.cache_entry_from_json(req.json_body))
        return _json(wire.cache_entry_to_json(entry))

    def cache_remove(self, req, caller):
        self._cache_index(caller)
        return _json({"removed": self.registry.cache_remove(req.GET["node"], req.GET["image_id"])})

    def cache_hit(self, req, caller):
        self._cache_index(caller)
        self.registry.cache_hit(req.json_body["node"], req.json_body["image_id"])
        return webob.Response(status=204)

    # -- leases -------------------------------------------------------------------------

    @staticmethod
    def _periodic_work(caller: wire.Caller) -> None:
        if not (caller.privileged or caller.jobs_only):
            raise errors.Forbidden("Leases are for the service and administrators only.")

    def acquire_lease(self, req, caller, name):
        self._periodic_work(caller)
        body = req.json_body
        return _json({"acquired": self.registry.acquire_lease(name, body["holder"], float(body["seconds"]))})

    def release_lease(self, req, caller, name):
        self._periodic_work(caller)
        self.registry.release_lease(name, req.GET["holder"])
        return webob.Response(status=204)

    # -- purge --------------------------------------------------------------------------

    def purge(self, req, caller):
        if not (caller.privileged or caller.jobs_only):
            raise errors.Forbidden("Purging deleted images is for the service and administrators only.")
        older_than, max_rows = wire.purge_from_json(req.json_body)
        return _json({"removed": self.registry.purge(older_than, max_rows)})

    # -- tasks --------------------------------------------------------------------------

    def _readable_task(self, task: Task, caller: wire.Caller) -> bool:
        if caller.jobs_only:  # work in progress only (the module docstring)
            return task.status in (TaskStatus.PENDING, TaskStatus.PROCESSING)
        return self.rules.trusted(caller) or (
            caller.viewer.project_id is not None and task.owner == caller.viewer.project_id
        )

    def _visible_task(self, task_id: str, caller: wire.Caller) -> Task:
        task = self.registry.get_task(task_id)
        if not self._readable_task(task, caller):
            raise errors.TaskNotFound(task_id)  # never 403: that would say it exists
        return task

    def list_tasks(self, req, caller):
        filters = wire.task_filters_from_params(req.GET)
        if not self.rules.trusted(caller):
            # A user's list holds their project's tasks, whatever owner it asked for.
            filters = dataclasses.replace(filters, owner=caller.viewer.project_id or "")
            if req.GET.get("owner") not in (None, filters.owner):
                return _json({"tasks": []})
        limit = req.GET.get("limit")
        tasks = self.registry.list_tasks(
            filters,
            req.GET.get("sort_key", "created_at"),
            req.GET.get("sort_dir", "desc"),
            None if limit is None else int(limit),
            req.GET.get("marker"),
        )
        return _json({"tasks": [wire.task_to_json(t) for t in tasks]})

    def create_task(self, req, caller):
        task = wire.task_from_json(req.json_body)
        self.task_rules.check_create(task, caller)
        return _json(wire.task_to_json(self.registry.create_task(task)), 201)

    def get_task(self, req, caller, task_id):
        return _json(wire.task_to_json(self._visible_task(task_id, caller)))

    def save_task(self, req, caller, task_id):
        task = wire.task_from_json(req.json_body)
        if task.id != task_id:
            raise errors.Invalid(f"the body is task {task.id}, the path names {task_id}")
        # As for images: if the task changes before the write, the version check fails.
        stored = self._visible_task(task_id, caller)
        if task.version != stored.version:
            raise errors.ConcurrentUpdate(task_id)  # the rules judge a change of the current task only
        self.task_rules.check_save(stored, task, caller)
        return _json(wire.task_to_json(self.registry.save_task(task)))

    def tasks_of_image(self, req, caller, image_id):
        self._visible(image_id, caller)
        tasks = [t for t in self.registry.tasks_of_image(image_id) if self._readable_task(t, caller)]
        return _json({"tasks": [wire.task_to_json(t) for t in tasks]})

    # -- metadata definitions -----------------------------------------------------------

    def _visible_namespace(self, name: str, viewer: Viewer | None) -> Namespace:
        namespace = self.registry.get_namespace(name)
        if not namespace_visible(namespace, viewer):
            raise errors.MetadefNotFound(_namespace_not_found(name))  # never 403: that would say it exists
        return namespace

    def list_namespaces(self, req, caller):
        viewer = caller.viewer
        if "viewer" in req.GET:
            viewer = narrowed(viewer, wire.viewer_from_param(req.GET["viewer"]))
        limit = req.GET.get("limit")
        # The registry refuses a marker outside the list this viewer gets (it would tell
        # that an invisible namespace exists).
        namespaces = self.registry.list_namespaces(
            wire.namespace_filters_from_params(req.GET),
            req.GET.get("sort_key", "created_at"),
            req.GET.get("sort_dir", "desc"),
            None if limit is None else int(limit),
            req.GET.get("marker"),
            viewer=viewer,
        )
        return _json({"namespaces": [wire.namespace_to_json(n) for n in namespaces]})

    def create_namespace(self, req, caller):
        namespace = wire.namespace_from_json(req.json_body)
        _check_segments(namespace)
        self.metadef_rules.check_create(namespace, caller)
        return _json(wire.namespace_to_json(self.registry.create_namespace(namespace)), 201)

    def get_namespace(self, req, caller, name):
        return _json(wire.namespace_to_json(self._visible_namespace(name, caller.viewer)))

    def save_namespace(self, req, caller, name):
        namespace = wire.namespace_from_json(req.json_body)
        _check_segments(namespace)
        # As for tasks: the rules judge a change of the current namespace only, and if
        # it changes before the write, the write's version check fails.
        stored = self._visible_namespace(name, caller.viewer)
        if namespace.version != stored.version:
            raise errors.ConcurrentUpdate(name)
        self.metadef_rules.check_save(stored, namespace, caller)
        return _json(wire.namespace_to_json(self.registry.save_namespace(name, namespace)))

    def delete_namespace(self, req, caller, name):
        self.metadef_rules.check_delete(self._visible_namespace(name, caller.viewer), caller)
        self.registry.delete_namespace(name)
        return webob.Response(status=204)

    def list_resource_types(self, req, caller):
        return _json({"resource_types": [wire.resource_type_to_json(r) for r in self.registry.list_resource_types()]})

    def delete_resource_type(self, req, caller, name):
        self.metadef_rules.check_delete_resource_type(name, caller)
        self.registry.delete_resource_type(name)
        return webob.Response(status=204)

    # -- members ------------------------------------------------------------------------

    def list_members(self, req, caller, image_id):
        image = self._visible(image_id, caller)
        members = self.registry.list_members(image_id)
        if not self._owns(image, caller):  # a member sees only itself
            members = [m for m in members if m.member_id == caller.viewer.project_id]
        return _json({"members": [wire.member_to_json(m) for m in members]})

    def get_member(self, req, caller, image_id, member_id):
        image = self._visible(image_id, caller)
        member = self.registry.get_member(image_id, member_id)
        if member is None or not (self._owns(image, caller) or member_id == caller.viewer.project_id):
            raise errors.MemberNotFound(image_id, member_id)
        return _json(wire.member_to_json(member))

    def add_member(self, req, caller, image_id):
        self._owned(image_id, caller)
        member = self.registry.add_member(image_id, req.json_body["member_id"], limit=req.json_body.get("limit"))
        return _json(wire.member_to_json(member), 201)

    def set_member_status(self, req, caller, image_id, member_id):
        self._visible(image_id, caller)
        if not (caller.privileged or member_id == caller.viewer.project_id):
            raise errors.Forbidden(f"Only project {member_id} itself may accept or reject image {image_id}.")
        member = self.registry.set_member_status(image_id, member_id, req.json_body["status"])
        return _json(wire.member_to_json(member))

    def delete_member(self, req, caller, image_id, member_id):
        self._owned(image_id, caller)
        self.registry.delete_member(image_id, member_id)
        return webob.Response(status=204)


def narrowed(caller: Viewer | None, asked: Viewer) -> Viewer | None:
    """The viewer that sees the namespaces both *caller* (``None``: the service) and
    *asked* see (:func:`abbild.metadefs.namespace_visible`): an API node may ask for a
    narrower view than its caller's (an image owner's, for an administrator's
    change), never a wider one."""
    if caller is None or caller.is_admin:
        return asked
    if asked.is_admin or asked.project_id == caller.project_id:
        return caller
    return Viewer(anonymous=True)  # what any two projects both see: the public ones and nobody's


def _namespace_not_found(name: str) -> str:
    return f"Metadata definition namespace={name} was not found."


def _check_segments(namespace: Namespace) -> None:
    """:raises abbild.errors.Invalid: a namespace or resource type name the registry's
    URLs cannot carry (the module docstring)."""
    names = [("Namespace", namespace.namespace)] + [("Resource type", a.name) for a in namespace.associations]
    for kind, name in names:
        if not name.strip("."):
            raise errors.Invalid(f"{kind} name {name!r} cannot be stored: a name needs a character besides '.'.")


def path_qs(environ) -> str:
    """The path and query as the client sent (and signed) them, %-encoded."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return raw
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1").decode()
    query = environ.get("QUERY_STRING")
    return urllib.parse.quote(path, safe="/") + (f"?{query}" if query else "")


def _routed_path(environ) -> str:
    """The path below the app's mount point, still %-encoded."""
    path = path_qs(environ).split("?", 1)[0]
    mount = urllib.parse.quote(environ.get("SCRIPT_NAME", ""), safe="/")
    return path[len(mount) :] if mount and path.startswith(mount) else path


def load_conf(files):
    conf = config.load(files)
    opts.register_opts(conf)
    return conf


def pipeline_conf(global_conf: dict):
    """The configuration of a factory of the registry's pipeline, shared by all of them
    (:func:`abbild.config.for_pipeline`)."""
    conf = config.for_pipeline(global_conf)
    opts.register_opts(conf)  # a no-op on the loader's conf, which has them
    return conf


def app_factory(global_conf, **local_conf):
    """``paste.app_factory``: the registry over the database of ``[database] connection``."""
    from abbild.db.registry import SQLRegistry

    conf = pipeline_conf(global_conf)
    registry = SQLRegistry(conf)
    registry.prepare()
    return RegistryApp(registry, ImageRules(conf))
