"""``/v2/tasks`` (Glance's deprecated Tasks API, for administrators) and
``/v2/images/{id}/tasks`` (API 2.12: an image's import tasks, for whoever sees the image).

Tasks are never deleted through the API: they expire ``[task] task_time_to_live``
hours after they ended, and then they are gone (``DELETE`` is 405, as Glance).
"""

from __future__ import annotations

import datetime
import logging
import threading
import urllib.parse
import uuid
import weakref

import webob.exc as exc

from abbild import hookimpl
from abbild.caller import acting_as
from abbild.errors import Invalid, TaskNotFound
from abbild.plugins import notify
from abbild.registry import TASK_SORT_KEYS
from abbild.tasks import Task, TaskFilters, TaskStatus
from abbild_api import schemas
from abbild_api.http import json_response, read_json, reject_body
from abbild_api.images import new_image, timestamp

LOG = logging.getLogger(__name__)

#: The query parameters of ``GET /v2/tasks``; anything else is a 400, not ignored.
_LIST_PARAMS = ("limit", "marker", "sort_key", "sort_dir", "type", "status")


def _self(task: Task) -> str:
    return f"/v2/tasks/{task.id}"


def task_stub(task: Task) -> dict:
    """A task in a list: Glance's partial task, without input, result and message."""
    view = {"id": task.id, "type": task.type, "status": task.status.value, "owner": task.owner}
    if task.expires_at is not None:
        view["expires_at"] = timestamp(task.expires_at)
    view.update(
        created_at=timestamp(task.created_at),
        updated_at=timestamp(task.updated_at),
        self=_self(task),
        schema="/v2/schemas/task",
    )
    return view


def task_view(task: Task) -> dict:
    """One task (``GET /v2/tasks/{id}``, ``POST /v2/tasks``), Glance's fields: the stub's
    and what a list leaves out."""
    return {
        **task_stub(task),
        "input": task.input,
        "message": task.message,
        "result": task.result,
        "image_id": task.image_id,
        "user_id": task.user_id,
        "request_id": task.request_id,
    }


def _row_time(value: datetime.datetime | None) -> str | None:
    # Glance answers GET /v2/images/{id}/tasks with its database rows, whose times its
    # JSON encoder writes with isoformat(): no zone suffix.
    return None if value is None else value.isoformat()


def image_task_view(task: Task) -> dict:
    """A task as ``GET /v2/images/{id}/tasks`` shows it: Glance's database row."""
    return {
        "id": task.id,
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
        "type": task.type,
        "status": task.status.value,
        "owner": task.owner,
        "expires_at": _row_time(task.expires_at),
        "created_at": _row_time(task.created_at),
        "updated_at": _row_time(task.updated_at),
        "deleted_at": None,
        "deleted": False,
        "input": task.input,
        "result": task.result,
        "message": task.message,
    }


def _access(app, req, action: str):
    """The caller, if the policy lets them use the Tasks API and do *action*.

    :raises abbild.errors.Forbidden:
    """
    viewer = app.context(req).viewer
    target = {"project_id": viewer.project_id}
    app.service.policy.authorize("tasks_api_access", viewer, target)
    app.service.policy.authorize(action, viewer, target)
    return viewer


def _limit(value: str, options) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise Invalid("limit param must be an integer") from None
    if limit < 0:
        raise Invalid("limit param must be positive")
    return min(limit, options.api_limit_max)


def _list_params(params, options) -> tuple[TaskFilters, str, str, int, str | None]:
    unknown = sorted(set(params) - set(_LIST_PARAMS))
    if unknown:
        raise Invalid(f"Invalid filter: {unknown[0]}. Tasks are filtered by type and status only.")
    for name in params:
        if len(params.getall(name)) > 1:
            raise Invalid(f"The parameter '{name}' may be given once.")
    status, type_ = params.get("status"), params.get("type")
    if status is not None and status not in schemas.TASK_STATUSES:
        raise Invalid(f"Invalid status value: {status}")
    if type_ is not None and type_ not in schemas.TASK_TYPES:
        raise Invalid(f"Invalid type value: {type_}")
    sort_key, sort_dir = params.get("sort_key", "created_at"), params.get("sort_dir", "desc")
    if sort_key not in TASK_SORT_KEYS:
        raise Invalid(f"Invalid sort key: {sort_key}. It must be one of the following: {', '.join(TASK_SORT_KEYS)}.")
    if sort_dir not in ("asc", "desc"):
        raise Invalid(f"Invalid sort direction: {sort_dir}")
    limit = _limit(params["limit"], options) if "limit" in params else options.limit_param_default
    return TaskFilters(type=type_, status=status), sort_key, sort_dir, limit, params.get("marker")


def _own(task: Task, viewer) -> bool:
    """Administrators see every project's tasks, anyone else their project's (also
    where a policy file opens the Tasks API to them)."""
    return viewer.is_admin or (viewer.project_id is not None and task.owner == viewer.project_id)


def index(app, req):
    reject_body(req)
    viewer = _access(app, req, "get_tasks")
    filters, sort_key, sort_dir, limit, marker = _list_params(req.GET, app.options)
    if not viewer.is_admin:
        filters = TaskFilters(type=filters.type, status=filters.status, owner=viewer.project_id or "")
    tasks = [_settled(app, t) for t in app.service.registry.list_tasks(filters, sort_key, sort_dir, limit, marker)]
    query = [(k, v) for k, v in req.GET.items() if k != "marker"]
    body = {
        "tasks": [task_stub(t) for t in tasks],
        "first": "/v2/tasks" + (f"?{urllib.parse.urlencode(query)}" if query else ""),
        "schema": "/v2/schemas/tasks",
    }
    if tasks and len(tasks) == limit:
        body["next"] = "/v2/tasks?" + urllib.parse.urlencode(query + [("marker", tasks[-1].id)])
    return json_response(body)


def show(app, req, task_id):
    reject_body(req)
    viewer = _access(app, req, "get_task")
    task = app.service.registry.get_task(task_id)
    if not _own(task, viewer):
        raise TaskNotFound(task_id)
    return json_response(task_view(_settled(app, task)))


# -- POST /v2/tasks: the legacy import -------------------------------------------------------
#
# {"type": "import", "input": {"import_from": <url>, "import_from_format": <disk format>,
# "image_properties": {...}}} creates an image from image_properties and imports its data
# from the URL with the web-download method of the import engine (abbild.imports). The
# engine records a task of its own (api_image_import) and runs the import; this task,
# of type import, follows it through the engine's task hooks.


def _import_input(body) -> tuple[dict, dict]:
    """The task's input and the image's properties, checked (every problem: 400).

    :raises abbild.errors.Invalid:
    """
    if not isinstance(body, dict):
        raise Invalid("The task must be a JSON object with 'type' and 'input'.")
    for name in ("type", "input"):
        if name not in body:
            raise Invalid(f"Task '{name}' is required")
    unknown = sorted(set(body) - {"type", "input"})
    if unknown:
        raise Invalid(f"Task '{unknown[0]}' cannot be set: a new task has only a type and an input.")
    if body["type"] != "import":
        raise Invalid(
            f"Invalid type value: {body['type']!r}. POST /v2/tasks runs the legacy 'import' task; "
            "use POST /v2/images/{image_id}/import for interoperable import."
        )
    task_input = body["input"]
    if not isinstance(task_input, dict):
        raise Invalid("Task 'input' must be a JSON object with import_from, import_from_format and image_properties.")
    for name in ("import_from", "import_from_format"):
        if not isinstance(task_input.get(name), str) or not task_input[name]:
            raise Invalid(f"Input does not contain '{name}' field (a non-empty string)")
    properties = task_input.get("image_properties", {})
    if not isinstance(properties, dict):
        raise Invalid("Input field 'image_properties' must be a JSON object of the new image's properties.")
    # The image needs its formats before the import; the source's format is its disk format.
    properties = {"disk_format": task_input["import_from_format"], "container_format": "bare", **properties}
    return task_input, properties


_HOOKS = {
    TaskStatus.PROCESSING: "abbild_task_processing",
    TaskStatus.SUCCESS: "abbild_task_succeeded",
    TaskStatus.FAILURE: "abbild_task_failed",
}


class LegacyImports:
    """Follows the engine's tasks of the images legacy import tasks created, and ends
    each legacy task as its engine task ends (a plugin of the service's plugin manager,
    in the process that started the import, where the engine's job runs)."""

    def __init__(self, registry, plugins) -> None:
        self.registry, self.plugins = registry, plugins
        self._lock = threading.Lock()
        self._following: dict[str, str] = {}  # image id -> legacy task id

    def follow(self, image_id: str, task_id: str) -> None:
        with self._lock:
            self._following[image_id] = task_id

    def forget(self, image_id: str) -> None:
        with self._lock:
            self._following.pop(image_id, None)

    def _legacy(self, task, *, done: bool) -> str | None:
        if task.type != "api_image_import" or task.image_id is None:
            return None
        with self._lock:
            return self._following.pop(task.image_id, None) if done else self._following.get(task.image_id)

    def end(self, task_id: str, status: TaskStatus, message: str, result: dict | None = None) -> None:
        """Take the legacy task to *status* (through ``processing``), unless it is there
        or ended already, and send the task hooks of each status it enters (the engine
        sends them for its own task only)."""
        entered: list[TaskStatus] = []

        def change(task: Task) -> None:
            entered.clear()  # a retry after a concurrent write starts over
            if task.status is status or task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
                return
            if status is not TaskStatus.FAILURE and task.status is TaskStatus.PENDING:
                task.transition(TaskStatus.PROCESSING)
                entered.append(TaskStatus.PROCESSING)
            if status is not TaskStatus.PROCESSING:
                task.transition(status)
                entered.append(status)
            task.message, task.result = message, result if result is not None else task.result

        try:
            with acting_as(None):  # the service's own bookkeeping, as the engine's
                task = self.registry.update_task(task_id, change)
        except Exception as error:
            LOG.warning("legacy import task %s: could not record it as %s: %s", task_id, status, error)
            return
        for each in entered:
            notify(self.plugins, _HOOKS[each], task=task)

    @hookimpl
    def abbild_task_processing(self, task):
        legacy = self._legacy(task, done=False)
        if legacy:
            self.end(legacy, TaskStatus.PROCESSING, "")

    @hookimpl
    def abbild_task_succeeded(self, task):
        legacy = self._legacy(task, done=True)
        if legacy:
            self.end(legacy, TaskStatus.SUCCESS, "", {"image_id": task.image_id})

    @hookimpl
    def abbild_task_failed(self, task):
        legacy = self._legacy(task, done=True)
        if legacy:
            self.end(legacy, TaskStatus.FAILURE, task.message, {"image_id": task.image_id})


_FOLLOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FOLLOWERS_LOCK = threading.Lock()


def _settled(app, task: Task, image_tasks: list[Task] | None = None) -> Task:
    """*task* as its import left it. The hooks end a legacy import task in the process
    that ran the import; if that process died first, the next start's recovery failed
    the engine's task without it, and the legacy task is ended here, once read."""
    if task.type != "import" or task.image_id is None or task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
        return task
    if image_tasks is None:
        image_tasks = app.service.registry.tasks_of_image(task.image_id)
    engine = [t for t in image_tasks if t.type == "api_image_import"]  # newest first
    if not engine or engine[0].status not in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
        return task
    follower = _follower(app.service)
    follower.forget(task.image_id)
    message = engine[0].message if engine[0].status is TaskStatus.FAILURE else ""
    follower.end(task.id, engine[0].status, message, {"image_id": task.image_id})
    return app.service.registry.get_task(task.id)


def _follower(service) -> LegacyImports:
    """The service's :class:`LegacyImports`, registered on its first legacy import."""
    with _FOLLOWERS_LOCK:
        follower = _FOLLOWERS.get(service)
        if follower is None:
            follower = _FOLLOWERS[service] = LegacyImports(service.registry, service.plugins)
            service.plugins.register(follower, name="abbild.legacy-import-tasks")
        return follower


def create(app, req):
    viewer = _access(app, req, "add_task")
    ctx = app.context(req)
    task_input, properties = _import_input(read_json(req))
    imports = app.service.imports
    # The URL passes the same checks as a web-download's (the method enabled, the guard)
    # before anything is created.
    method = {"method": {"name": "web-download", "uri": task_input["import_from"]}}
    request = imports.parse(method, None, viewer, ctx.request_id)
    image = new_image(app, ctx, properties)
    task = app.service.registry.create_task(
        Task(
            id=str(uuid.uuid4()),
            type="import",
            owner=ctx.project_id,
            input=task_input,
            image_id=image.id,
            request_id=ctx.request_id,
            user_id=ctx.user_id,
        )
    )
    notify(app.service.plugins, "abbild_task_created", task=task)
    follower = _follower(app.service)
    follower.follow(image.id, task.id)
    try:
        imports.start(image.id, request)
    except Exception as error:
        # Created, and failed: the client reads why in the task, as Glance's would.
        LOG.warning("legacy import task %s: the import of image %s could not start: %s", task.id, image.id, error)
        follower.forget(image.id)
        follower.end(task.id, TaskStatus.FAILURE, f"The import could not start: {error}", {"image_id": image.id})
    task = app.service.registry.get_task(task.id)
    return json_response(task_view(task), 201, Location=f"/v2/tasks/{task.id}")


def delete(app, req, task_id):
    raise exc.HTTPMethodNotAllowed(
        detail="This operation is currently not permitted on Glance Tasks. They are auto deleted "
        "after reaching the time based on their expires_at property.",
        headers={"Allow": "GET"},
    )


def image_tasks(app, req, image_id):
    """The tasks of an image the caller sees (404 otherwise), those of the caller's
    project unless they are an administrator."""
    reject_body(req)
    viewer = app.context(req).viewer
    app.service.get(image_id, viewer)
    tasks = [t for t in app.service.registry.tasks_of_image(image_id) if _own(t, viewer)]
    tasks = [_settled(app, t, tasks) for t in tasks]
    return json_response({"tasks": [image_task_view(t) for t in tasks]})
