"""Interoperable image import: the staging area, the import methods and the import itself.

``PUT /v2/images/{id}/stage`` (:meth:`Imports.stage`) streams data into the staging
area, a reserved store (``os_glance_staging_store``) no user sees: ``queued ->
uploading``, the data waits there. ``POST /v2/images/{id}/import``
(:meth:`Imports.start`) takes the image's import lock (the task id, written into
``os_glance_import_task`` with a compare-and-swap), records a task and runs the import
in a background job (:mod:`abbild.jobs`):

1. a method that fetches (``web-download``, and any other in :data:`FETCHERS`) writes
   the data into staging;
2. the operator's import steps (``[image_import_opts] image_import_plugins``) work on
   a local file of the staged data (:class:`abbild.import_steps.StagedData`);
3. the data goes to each target store through :class:`abbild.streams.ImageStream`
   (hashes, size cap, the plugins' data checks) and the image becomes ``active``
   after the last store, or after the first with ``all_stores_must_succeed`` false;
4. the staged data is removed, the lock released, the task ends in ``success``.

On failure everything written to the stores goes, the image returns to ``queued``
(``uploading``, its staged data kept, for glance-direct: the user can try again) and
the task ends in ``failure`` with the reason. ``copy-image`` copies an active image's
data from one of its locations straight to the new stores (no staging: the data is
read once, its hashes checked against the image's on the way) and never changes the
image's status.

Progress is in the image's ``os_glance_importing_to_stores`` (the stores still to do)
and ``os_glance_failed_import`` (those that failed), as Glance shows it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import pathlib
import shutil
import socket
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from oslo_config import cfg

from abbild import glance_download
from abbild.caller import acting_as
from abbild.driver import Capability, StoredObject
from abbild.errors import (
    AlreadyExists,
    ConfigError,
    Conflict,
    Forbidden,
    Gone,
    ImageNotFound,
    Invalid,
    InvalidTransition,
    NotFound,
    RegistryError,
    SizeLimitExceeded,
    StoreError,
    TaskNotFound,
)
from abbild.image import Image, Location, Status, utcnow
from abbild.import_opts import (
    FILTERING_GROUP,
    IMPORT_GROUP,
    STAGING_GROUP,
    WEB_DOWNLOAD_GROUP,
    web_download_deprecated,
)
from abbild.import_steps import StagedData
from abbild.plugins import notify
from abbild.quotas import check_location_added
from abbild.registry import Viewer
from abbild.stores import Store, build_store
from abbild.streams import CHUNK_SIZE, ImageStream, read_chunks
from abbild.tasks import Task, TaskStatus
from abbild.uploads import Claim, worker_alive

if TYPE_CHECKING:
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)

# The image properties of import (reserved: users can neither set nor change them).
IMPORT_TASK = "os_glance_import_task"
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
STAGE_HOST = "os_glance_stage_host"
# Where the staged data is (a URI of the staging store): never shown to users
# (abbild_api.images hides it), since it names the node's directories or buckets.
STAGE_URI = "os_glance_stage_uri"
#: Properties the API never shows.
HIDDEN_PROPERTIES = frozenset({STAGE_URI})

# A lock whose task has not changed for this long is stale, as Glance's.
STALE_LOCK = datetime.timedelta(minutes=60)
STALE_PENDING_LOCK = datetime.timedelta(minutes=120)
# How often a running import writes its progress into its task's message.
PROGRESS_SECONDS = 5.0
MiB = 1 << 20


# -- the import methods --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fetcher:
    """An import method that fetches the image's data into staging, for a ``queued``
    image (``web-download``, ``glance-download``). Adding a method is adding one entry
    to :data:`FETCHERS`; the import does the rest (lock, task, staging, steps, stores,
    rollback).

    :param validate: ``validate(service, body)`` checks the request body's ``method``
        part during the request (``body["method"]`` is a dict with a ``name``) and
        raises :class:`~abbild.errors.Invalid` (400) for what the caller must fix.
    :param fetch: ``fetch(service, image, body, viewer)``, in the background job: a
        closeable iterator of the data's byte chunks (closed whatever happens). Its
        errors fail the import with their message; :class:`~abbild.errors.StoreError`
        and :class:`~abbild.errors.Invalid` are the expected ones.
    :param properties: optional ``properties(service, image, body, viewer)``, after
        the fetch: image properties set when the image becomes active (glance-download
        copies some of the remote image's).
    """

    name: str
    validate: Callable[[ImageService, dict], None]
    fetch: Callable[[ImageService, Image, dict, Viewer | None], Iterator[bytes]]
    properties: Callable[[ImageService, Image, dict, Viewer | None], dict[str, str]] | None = None


def _validate_web_download(service: ImageService, body: dict) -> None:
    uri = body["method"].get("uri")
    if not isinstance(uri, str) or not uri:
        raise Invalid("web-download needs the URL of the image data in method.uri.")
    store = service.imports.web_download
    try:
        store.driver.validate_location(uri)
    except StoreError as exc:
        # Checked during the request, as Glance's filter. The reason (which may say what a
        # host name resolves to) goes to the operator's log, never to the caller.
        shown = uri.split("?", 1)[0]
        LOG.warning("web-download of %s refused: %s", shown, exc)
        raise Invalid(
            f"URI for web-download does not pass filtering: {shown} (the operator's log has the reason "
            "under this request's x-openstack-request-id)."
        ) from exc


def _fetch_web_download(service: ImageService, image: Image, body: dict, viewer: Viewer | None) -> Iterator[bytes]:
    # The http store's guard checks the URL again, and every redirect, and connects to
    # the address it checked.
    return service.imports.web_download.get(body["method"]["uri"])


#: The methods that fetch data into staging, by name. glance-direct (the data is staged
#: already) and copy-image (the data is in a store already) are the import's own.
FETCHERS: dict[str, Fetcher] = {
    "web-download": Fetcher("web-download", _validate_web_download, _fetch_web_download),
    glance_download.NAME: Fetcher(
        glance_download.NAME, glance_download.validate, glance_download.fetch, glance_download.properties
    ),
}
OWN_METHODS = ("glance-direct", "copy-image")


def self_reference(conf) -> str:
    """This node's URL for the other nodes: ``worker_self_reference_url``, else
    ``public_endpoint``, else ``http://<hostname>:<bind_port>``."""
    url = conf.worker_self_reference_url or conf.public_endpoint
    if url:
        return url.rstrip("/")
    port = conf.bind_port if "bind_port" in conf else 9292
    return f"http://{socket.gethostname()}:{port}"


# -- the staging area ----------------------------------------------------------------------


class Staging:
    """The reserved store ``os_glance_staging_store``: a filesystem store at
    ``node_staging_uri`` unless ``[os_glance_staging_store] driver`` names another.

    :raises abbild.errors.ConfigError: node_staging_uri is no ``file://`` directory,
        or the store cannot work.
    """

    def __init__(self, conf, drivers=None) -> None:
        group = conf[STAGING_GROUP]
        driver = group.driver
        defaults = {}
        if driver == "filesystem":
            uri = urllib.parse.urlsplit(conf.node_staging_uri or "")
            if uri.scheme != "file" or uri.netloc or not uri.path.startswith("/"):
                raise ConfigError(
                    f"node_staging_uri {conf.node_staging_uri!r} is not a file:// URI of a directory "
                    f"(file:///var/lib/abbild/staging, say); fix it, or set [{STAGING_GROUP}] driver"
                )
            defaults = {"datadir": urllib.parse.unquote(uri.path)}
        self.store: Store = build_store(conf, STAGING_GROUP, driver, drivers, defaults=defaults)
        needed = Capability.READ | Capability.WRITE | Capability.DELETE
        if needed & self.store.capabilities != needed:
            raise ConfigError(f"the staging store ({driver}) must be readable and writable; check [{STAGING_GROUP}]")
        self.shared = group.shared if group.shared is not None else driver != "filesystem"
        datadir = group.datadir if driver == "filesystem" else None
        # Scratch space of the import steps: next to the staged data when it is on a
        # local disk (room for images was planned there), else the system's.
        self.work_root = os.path.join(datadir, ".work") if datadir else None

    def put(self, image_id: str, chunks, size: int | None) -> StoredObject:
        """:raises abbild.errors.Conflict: data of *image_id* is staged already."""
        try:
            return self.store.put(image_id, chunks, size)
        except AlreadyExists:
            raise Conflict(f"Image {image_id} has staged data already; import it, or delete the image") from None

    def discard(self, image_id: str, uri: str | None = None) -> None:
        """Remove what is staged for *image_id* (also partial data); never raises."""
        try:
            if uri:
                self.store.delete_orphan(uri)
            self.store.discard(image_id)
        except StoreError as exc:
            LOG.warning("image %s: could not remove its staged data: %s", image_id, exc)

    @contextlib.contextmanager
    def local_file(self, uri: str, workdir: pathlib.Path) -> Iterator[pathlib.Path]:
        """A local path of the staged data at *uri*: the staging store's own file when
        it has one (``open_local``), else a copy in *workdir*."""
        f = self.store.open_local(uri)
        if f is not None:
            name = getattr(f, "name", None)
            f.close()
            if isinstance(name, str) and os.path.isfile(name):
                yield pathlib.Path(name)
                return
        path = workdir / "staged"
        chunks = self.store.get(uri)
        try:
            with open(path, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        yield path

    def workdir(self, task_id: str) -> pathlib.Path:
        if self.work_root:
            os.makedirs(self.work_root, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix=f"import-{task_id}-", dir=self.work_root))


# -- the import ----------------------------------------------------------------------------


@dataclasses.dataclass
class Request:
    """One validated import request."""

    method: str
    body: dict
    stores: list[str]
    must_succeed: bool
    viewer: Viewer
    request_id: str | None


class Imports:
    """Staging and importing, reached as ``service.imports``.

    :raises abbild.errors.ConfigError: (at start-up) the staging store or the
        web-download store cannot work, or image_import_plugins names a step no
        installed plugin offers.
    """

    def __init__(self, service: ImageService, drivers=None) -> None:
        self.service = service
        self.conf = conf = service.conf
        self.registry, self.stores, self.claims = service.registry, service.stores, service.claims
        self.plugins, self.jobs = service.plugins, service.jobs
        self.methods = list(dict.fromkeys(conf.enabled_import_methods))
        unknown = [m for m in self.methods if m not in OWN_METHODS and m not in FETCHERS]
        if unknown:
            raise ConfigError(
                f"enabled_import_methods names {', '.join(unknown)}, which this installation does not "
                f"offer; use {', '.join([*OWN_METHODS, *FETCHERS])}"
            )
        self.staging = Staging(conf, drivers)
        self.node = self_reference(conf)
        self.web_download = self._web_download_store(drivers) if "web-download" in self.methods else None
        self.steps = self._steps()

    def _web_download_store(self, drivers) -> Store:
        try:
            return build_store(self.conf, WEB_DOWNLOAD_GROUP, "http", drivers, adapt=_glance_filter_names)
        except ConfigError as exc:
            raise ConfigError(
                f"web-download is in enabled_import_methods, but it needs the http store driver: {exc}. "
                f"Install abbild-http (pip install ./drivers/http), or remove web-download from "
                f"enabled_import_methods"
            ) from exc

    def _steps(self) -> list[tuple[str, Callable[[StagedData], None]]]:
        offered: dict[str, Callable] = {}
        for answer in self.plugins.hook.abbild_import_steps():
            offered.update(answer or {})
        names = self.conf[IMPORT_GROUP].image_import_plugins
        unknown = [n for n in names if n not in offered]
        if unknown:
            raise ConfigError(
                f"[{IMPORT_GROUP}] image_import_plugins names {', '.join(unknown)}, which no installed "
                f"plugin offers (offered: {', '.join(sorted(offered)) or 'none'})"
            )
        return [(name, offered[name]) for name in names]

    # -- stage ----------------------------------------------------------------------------

    def stage(self, image_id: str, chunks, *, declared_size: int | None, viewer: Viewer) -> Image:
        """Stream *chunks* into the staging area for a later glance-direct import:
        ``queued -> uploading``, claimed like an upload (:meth:`Claims.take`), so a
        second stage of the same image gets 409. Any failure removes the staged data
        and returns the image to ``queued``.

        :raises abbild.errors.Conflict: the image is not queued, or has staged data.
        """
        image = self.service.authorized("modify_image", image_id, viewer)
        uploads = self.service.uploads
        max_size, limit_name = uploads.limit(image)
        if declared_size is not None and declared_size > max_size:
            raise SizeLimitExceeded(max_size, limit_name)
        checks = uploads.checks(image, "stage")  # before the claim: a check that refuses leaves it queued

        def take(image: Image) -> None:
            if image.status is not Status.QUEUED:
                raise Conflict(
                    f"Image {image_id} has status '{image.status}'; data can only be staged for a 'queued' image"
                )
            self.claims.mark(image, Status.UPLOADING)

        # As the user: a registry that checks each write (keystone mode) lets the user's
        # token claim a stage, and the service token alone only carry on one.
        self.registry.update_image(image_id, take)
        claim = self.claims.hold(Claim(image_id, Status.UPLOADING))
        stored = None
        try:
            stream = ImageStream(
                chunks,
                hash_algo=None,
                md5=False,  # the import hashes the data it writes to the stores
                max_size=max_size,
                limit_name=limit_name,
                declared_size=declared_size,
                on_progress=uploads.checker(claim),
                progress_every=1,
                checks=checks,
            )
            self.staging.discard(image_id)  # a queued image's leftovers (we hold its claim)
            stored = self.staging.put(image_id, stream, declared_size)

            def staged(image: Image) -> None:
                if not self.claims.ours(image, claim):
                    raise Gone(image_id)
                image.size = stream.size
                image.virtual_size = stream.findings.get("virtual_size", image.virtual_size)
                image.properties[STAGE_URI] = stored.uri
                image.properties[STAGE_HOST] = self.node
                image.upload_worker = image.upload_lease = None

            image = self.registry.update_image(image_id, staged)
        except BaseException as exc:
            self.staging.discard(image_id, stored.uri if stored else None)
            self._unstage(claim, exc)
            if isinstance(exc, ImageNotFound):
                raise Gone(image_id) from exc
            raise
        finally:
            self.claims.drop(claim)
        return image

    def _unstage(self, claim: Claim, error: BaseException) -> None:
        """A failed stage: back to ``queued``, if the image is still ours."""

        def change(image: Image) -> None:
            if self.claims.ours(image, claim):
                image.transition(Status.QUEUED)
                image.upload_worker = image.upload_lease = None
                for name in (STAGE_URI, STAGE_HOST):
                    image.properties.pop(name, None)

        try:
            image = self.registry.update_image(claim.image_id, change)
        except Exception as exc:  # recovery returns it once the claim's lease ran out
            LOG.warning("image %s: could not return it to 'queued' after a failed stage: %s", claim.image_id, exc)
            return
        notify(self.plugins, "abbild_image_upload_failed", image=image, error=error)

    # -- import: the request ---------------------------------------------------------------

    def parse(self, body: dict, store_header: str | None, viewer: Viewer, request_id: str | None) -> Request:
        """The request body, checked as Glance checks it (every problem: 400).

        :raises abbild.errors.Invalid:
        """
        if not isinstance(body, dict):
            raise Invalid("The import request body must be a JSON object with a 'method'.")
        method = body.get("method")
        if not isinstance(method, dict) or not isinstance(method.get("name"), str):
            raise Invalid("The import request needs 'method': {'name': <an import method>} (see /v2/info/import).")
        name = method["name"]
        if name not in self.methods:
            raise Invalid(
                f"Import method {name!r} is not available here; the methods are: {', '.join(self.methods) or 'none'}."
            )
        for flag in ("all_stores", "all_stores_must_succeed"):
            if flag in body and not isinstance(body[flag], bool):
                raise Invalid(f"'{flag}' must be true or false, not {body[flag]!r}.")
        all_stores = body.get("all_stores", False)
        stores = body.get("stores")
        if stores is not None and (
            not isinstance(stores, list) or not stores or not all(isinstance(s, str) and s for s in stores)
        ):
            raise Invalid("'stores' must be a non-empty list of store names (see /v2/info/stores).")
        if stores is not None and store_header:
            raise Invalid("Name the stores either in 'stores' or in the X-Image-Meta-Store header, not both.")
        if all_stores and (stores or store_header):
            raise Invalid("'all_stores' imports to every store: do not name stores as well.")
        if name in FETCHERS:
            FETCHERS[name].validate(self.service, body)
        if all_stores:
            stores = [s.name for s in self.stores if not s.read_only]
        elif store_header:
            stores = [store_header]
        return Request(
            name, body, list(dict.fromkeys(stores or [])), body.get("all_stores_must_succeed", True), viewer, request_id
        )

    def _targets(self, image: Image, req: Request) -> list[Store]:
        """The stores to write, checked against the image.

        :raises abbild.errors.Conflict: an unknown or read-only store (409, as Glance).
        :raises abbild.errors.Invalid: copy-image to a store that has the image (400).
        """
        if not req.stores:
            writable = {s.name: s for s in self.stores if not s.read_only}
            chosen = self.plugins.hook.abbild_select_store(image=image, stores=writable)
            req.stores = [chosen] if chosen else []
        targets = []
        for name in req.stores:
            store = self.stores.for_location(name)
            if store is None:
                raise Conflict(f"Unknown store {name!r}; the stores are: {', '.join(s.name for s in self.stores)}.")
            if store.read_only:
                raise Conflict(f"Store {name!r} is read-only; images cannot be imported into it.")
            targets.append(store)
        if req.method == "copy-image":
            holding = {loc.store for loc in image.locations if loc.status == "active"}
            if req.body.get("all_stores"):
                targets = [s for s in targets if s.name not in holding]
            else:
                already = [s.name for s in targets if s.name in holding]
                if already:
                    raise Invalid(f"Image {image.id} is in store(s) {', '.join(already)} already.")
        elif not targets:
            raise Conflict("No writable store to import into.")
        req.stores = [s.name for s in targets]
        return targets

    def start(self, image_id: str, req: Request) -> Task | None:
        """Check the preconditions, take the import lock, record the task and run the
        import in the background (the request answers 202 at once).

        :returns: the task, or ``None`` when there is nothing to do (copy-image with
            ``all_stores`` to stores that all have the image).
        :raises abbild.errors.Conflict: a precondition fails, or another import holds
            the lock ("prior operation is still in progress").
        :raises abbild.errors.TooManyJobs: 429; :class:`~abbild.errors.Busy`: 503.
        """
        viewer = req.viewer
        copy = req.method == "copy-image"
        if copy:
            image = self.service.authorized(("get_image", "copy_image"), image_id, viewer)
        else:
            image = self.service.authorized("modify_image", image_id, viewer)
        held = image.properties.get(IMPORT_TASK)
        if held:  # another import first: its lock explains the image's status too
            self.break_stale_lock(image, held, viewer)
            image = self.registry.get_image(image_id)
        self._check_status(image, req.method)
        targets = self._targets(image, req)
        if not targets:
            return None  # copy-image, all_stores: every store has it already
        if not copy:
            max_size, limit_name = self.service.uploads.limit(image)  # QuotaExceeded: 413
            if req.method == "glance-direct" and image.size is not None and image.size > max_size:
                raise SizeLimitExceeded(max_size, limit_name)
        task = Task(
            id=str(uuid.uuid4()),
            type="api_image_import",
            owner=image.owner,
            input=req.body,
            image_id=image_id,
            request_id=req.request_id,
            user_id=viewer.user_id,
        )

        def lock(image: Image) -> None:
            self._check_status(image, req.method)
            if image.properties.get(IMPORT_TASK):
                raise Conflict(
                    f"Image {image_id} is being imported by task {image.properties[IMPORT_TASK]}: "
                    "a prior operation is still in progress; try again once it has ended."
                )
            image.properties[IMPORT_TASK] = task.id
            image.properties[IMPORTING_TO] = ",".join(req.stores)
            image.properties[FAILED_IMPORT] = ""
            if copy:  # claimed, but stays active
                image.upload_worker = self.claims.worker
                image.upload_lease = self.claims.lease_expiry()
            else:
                self.claims.mark(image, Status.IMPORTING)

        # The task first, then the lock that names it, both as the user: a registry that
        # checks each write (keystone mode) lets a user lock an image only for a pending
        # task of that image, and the service token alone carry on only such an import.
        task = self.registry.create_task(task)
        notify(self.plugins, "abbild_task_created", task=task)
        try:
            self.registry.update_image(image_id, lock)
        except BaseException as exc:
            self._fail_task(task.id, f"The import could not start: {exc}")
            raise
        claim = self.claims.hold(Claim(image_id, Status.ACTIVE if copy else Status.IMPORTING))
        try:
            self.jobs.submit(lambda: self._run(task.id, req, claim), project=image.owner or viewer.project_id)
        except BaseException as exc:
            self.claims.drop(claim)
            self._fail_task(task.id, f"The import could not start: {exc}")
            self._revert(claim, task.id, req, exc, keep_stage=True)
            raise
        return task

    @staticmethod
    def _check_status(image: Image, method: str) -> None:
        """:raises abbild.errors.Conflict: the image is not in the status *method* needs."""
        if method == "copy-image":
            if image.status is not Status.ACTIVE:
                raise Conflict(f"Image {image.id} has status '{image.status}'; only active images can be copied.")
            return
        for attr in ("container_format", "disk_format"):
            if getattr(image, attr) is None:
                raise Conflict(f"Image {image.id} has no {attr}; set it before the import.")
        needed = Status.UPLOADING if method == "glance-direct" else Status.QUEUED
        if image.status is not needed:
            why = f" (stage its data first: PUT /v2/images/{image.id}/stage)" if method == "glance-direct" else ""
            raise Conflict(f"Image {image.id} has status '{image.status}'; {method} imports a '{needed}' image{why}.")
        if method == "glance-direct" and (image.upload_worker or not image.properties.get(STAGE_URI)):
            raise Conflict(f"Image {image.id} is still being staged; import it once the stage has ended.")

    # -- the import lock -----------------------------------------------------------------

    def lock_is_stale(self, image: Image, task_id: str) -> str | None:
        """Why the import lock *task_id* of *image* no longer protects any work, or
        ``None`` while it may: its task is gone; its worker died on this host or its
        lease ran out; or its task has not changed for 60 minutes (120 if pending)."""
        try:
            task = self.registry.get_task(task_id)
        except TaskNotFound:
            return f"its task {task_id} does not exist"
        if task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
            return f"its task {task_id} has ended"
        worker = image.upload_worker
        if worker and worker != self.claims.worker:
            alive = worker_alive(worker)
            if alive is False:
                return f"the process {worker} that ran it is gone"
            if alive is None and image.upload_lease and image.upload_lease <= utcnow():
                return f"the lease of {worker} ran out"
        if not worker and task.status is TaskStatus.PROCESSING:
            return f"its task {task_id} has no process working on it"
        limit = STALE_PENDING_LOCK if task.status is TaskStatus.PENDING else STALE_LOCK
        if task.updated_at and utcnow() - task.updated_at > limit:
            return f"its task {task_id} did not change for {int(limit.total_seconds() // 60)} minutes"
        return None

    def break_stale_lock(self, image: Image, task_id: str, viewer: Viewer | None = None) -> bool:
        """Break *image*'s import lock if it is stale (:meth:`lock_is_stale`): fail its
        task, remove what the dead import wrote and return the image to where an
        import can start again.

        :returns: whether it was broken.
        :raises abbild.errors.Conflict: it is not stale.
        """
        why = self.lock_is_stale(image, task_id)
        if why is None:
            raise Conflict(
                f"Image {image.id} is being imported by task {task_id}: a prior operation is still in "
                "progress; try again once it has ended."
            )
        LOG.warning("image %s: breaking the import lock of task %s: %s", image.id, task_id, why)
        self._fail_task(task_id, f"The import was abandoned: {why}.")
        return self.recover_image(image)

    # -- import: the work -----------------------------------------------------------------

    def _run(self, task_id: str, req: Request, claim: Claim) -> None:
        """The background job of one import."""
        progress = _Progress(self.registry, task_id)
        try:
            task = self._task(task_id, TaskStatus.PROCESSING, "")
            notify(self.plugins, "abbild_task_processing", task=task)
            if req.method == "copy-image":
                result = self._copy(claim, req, progress)
            else:
                result = self._import(claim, req, progress)
        except Exception as exc:
            LOG.warning("image %s: import (task %s) failed: %s", claim.image_id, task_id, exc)
            self.claims.drop(claim)
            # The image first: a keystone-mode registry lets the service token end only
            # an import whose task is still at work. So the task settles last, and the
            # task, not the image, is where a client waits for the outcome.
            self._revert(claim, task_id, req, exc, keep_stage=req.method == "glance-direct")
            task = self._fail_task(task_id, _reason(exc))
            return
        self.claims.drop(claim)
        task = self._task(task_id, TaskStatus.SUCCESS, progress.message, result=result)
        if task is not None:
            notify(self.plugins, "abbild_task_succeeded", task=task)

    def _import(self, claim: Claim, req: Request, progress: _Progress) -> dict:
        image_id = claim.image_id
        image = self.registry.get_image(image_id)
        checker = self.service.uploads.checker(claim)
        max_size, limit_name = self.service.uploads.limit(image)
        properties: dict[str, str] = {}
        if req.method in FETCHERS:
            fetcher = FETCHERS[req.method]
            chunks = fetcher.fetch(self.service, image, req.body, req.viewer)
            try:
                stream = ImageStream(
                    chunks,
                    hash_algo=None,
                    md5=False,
                    max_size=max_size,
                    limit_name=limit_name,
                    on_progress=lambda n: (checker(n), progress.update("Fetched", n)),
                    progress_every=CHUNK_SIZE,
                    # fetched data is checked as staged data is (format safety, signature)
                    checks=self.service.uploads.checks(image, "stage"),
                )
                self.staging.discard(image_id)  # what a dead import may have left
                stored = self.staging.put(image_id, stream, None)
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
            self._set(claim, {STAGE_URI: stored.uri, STAGE_HOST: self.node})
            if fetcher.properties:
                properties.update(fetcher.properties(self.service, image, req.body, req.viewer))
            image = self.registry.get_image(image_id)
        uri = image.properties[STAGE_URI]
        workdir = self.staging.workdir(claim.image_id)
        try:
            with self.staging.local_file(uri, workdir) as path:
                staged = StagedData(
                    image=image,
                    path=path,
                    disk_format=image.disk_format,
                    workdir=workdir,
                    method=req.method,
                    properties=properties,
                    viewer=req.viewer,
                )
                for name, step in self.steps:
                    checker(0)
                    progress.note(f"Running import step {name}")
                    step(staged)
                result = self._write(claim, req, staged, max_size, limit_name, progress)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self._finish(claim, req)
        self.staging.discard(image_id, uri)
        return result

    def _write(
        self, claim: Claim, req: Request, staged: StagedData, max_size: int, limit_name: str, progress: _Progress
    ) -> dict:
        """The staged data to each target store, one after the other. The image becomes
        active with every location after the last store; without all_stores_must_succeed,
        after the first that took the data, the others' failures listed in
        os_glance_failed_import."""
        checked_image = dataclasses.replace(staged.image, disk_format=staged.disk_format)
        pending: list[tuple[Store, StoredObject]] = []  # written, waiting for the activation
        first: ImageStream | None = None
        done, failed = [], []
        error: Exception | None = None
        for index, name in enumerate(req.stores):
            store = self.stores[name]
            remaining = req.stores[index + 1 :]
            notify(self.plugins, "abbild_image_preparing", image=self.registry.get_image(claim.image_id), store=store)
            stored = None
            try:
                stream, stored = self._put(claim, store, staged.path, checked_image, max_size, limit_name, progress)
                if first is not None and (stream.checksum, stream.os_hash_value) != (
                    first.checksum,
                    first.os_hash_value,
                ):
                    raise StoreError(f"store {name!r} received other data than store {done[0]!r}")
                if first is not None and not req.must_succeed:
                    self._add_location(claim, store, stored, remove_from=name)
                elif req.must_succeed:
                    pending.append((store, stored))
                    self._set(claim, {IMPORTING_TO: ",".join(remaining)})
                else:
                    self._activate(claim, [(store, stored)], stream, staged, remaining)
                first = first or stream
                done.append(name)
            except Exception as exc:
                if stored is not None and (store, stored) not in pending:
                    store.delete_orphan(stored.uri)
                self._record_failure(claim, name)
                if isinstance(exc, Gone) or req.must_succeed:
                    for other, data in pending:
                        other.delete_orphan(data.uri)
                    raise
                LOG.warning("image %s: import to store %s failed: %s", claim.image_id, name, exc)
                failed.append(name)
                error = exc
        if first is None:
            raise error or StoreError("no store took the data")
        if req.must_succeed:
            try:
                self._activate(claim, pending, first, staged, [])
            except BaseException:
                for store, data in pending:
                    store.delete_orphan(data.uri)
                raise
        image = self.registry.get_image(claim.image_id)
        notify(self.plugins, "abbild_image_uploaded", image=image, location=image.locations[-1])
        notify(self.plugins, "abbild_image_activated", image=image)
        return {"image_id": claim.image_id, "stores": done, "failed_stores": failed}

    def _put(
        self,
        claim: Claim,
        store: Store,
        path: pathlib.Path,
        image: Image,
        max_size: int,
        limit_name: str,
        progress: _Progress,
    ) -> tuple[ImageStream, StoredObject]:
        """The file at *path* into *store*, hashed and checked on the way."""
        checker = self.service.uploads.checker(claim)
        with open(path, "rb") as f:
            stream = ImageStream(
                read_chunks(f),
                hash_algo=self.conf.hashing_algorithm,
                max_size=max_size,
                limit_name=limit_name,
                on_progress=lambda n: (checker(n), progress.update(f"Copied to {store.name}:", n)),
                progress_every=CHUNK_SIZE,
                checks=self.service.uploads.checks(image, "import"),
            )
            store.discard(claim.image_id)  # what a dead import may have left
            return stream, store.put(claim.image_id, stream, os.fstat(f.fileno()).st_size)

    def _activate(
        self,
        claim: Claim,
        written: list[tuple[Store, StoredObject]],
        stream: ImageStream,
        staged: StagedData,
        remaining: list[str],
    ) -> Image:
        """``importing -> active`` with the data's size, hashes and locations, if the
        claim still holds and the owner's storage quota has room."""

        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise Gone(image.id)
            for store, stored in written:
                check_location_added(image, self.conf.image_location_quota)
                image.locations.append(Location(store.name, stored.uri, stored.size, "active", dict(stored.extra)))
            image.size = stream.size
            image.checksum = stream.checksum
            image.os_hash_algo = stream.hash_algo
            image.os_hash_value = stream.os_hash_value
            image.virtual_size = stream.findings.get("virtual_size", image.virtual_size)
            image.disk_format = staged.disk_format
            image.properties.update(staged.properties)
            image.properties[IMPORTING_TO] = ",".join(remaining)
            image.transition(Status.ACTIVE)

        with acting_as(None):
            image = self.registry.update_image(
                claim.image_id, change, storage_limit=self.service.uploads.storage_limit()
            )
        claim.status = Status.ACTIVE  # the claim holds on while the other stores are written
        return image

    def _add_location(self, claim: Claim, store: Store, stored: StoredObject, remove_from: str | None = None) -> Image:
        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise Gone(image.id)
            check_location_added(image, self.conf.image_location_quota)
            image.locations.append(Location(store.name, stored.uri, stored.size, "active", dict(stored.extra)))
            if remove_from:
                _drop_from(image, IMPORTING_TO, remove_from)

        with acting_as(None):
            return self.registry.update_image(claim.image_id, change)

    def _record_failure(self, claim: Claim, store_name: str) -> None:
        def change(image: Image) -> None:
            _drop_from(image, IMPORTING_TO, store_name)
            failed = [s for s in image.properties.get(FAILED_IMPORT, "").split(",") if s]
            if store_name not in failed:
                image.properties[FAILED_IMPORT] = ",".join([*failed, store_name])

        try:
            with acting_as(None):
                self.registry.update_image(claim.image_id, change)
        except Exception as exc:
            LOG.warning("image %s: could not record the failed store %s: %s", claim.image_id, store_name, exc)

    def _set(self, claim: Claim, properties: dict[str, str]) -> Image:
        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise Gone(image.id)
            image.properties.update(properties)

        with acting_as(None):
            return self.registry.update_image(claim.image_id, change)

    def _finish(self, claim: Claim, req: Request) -> None:
        """Release the lock and the claim of a finished import."""

        def change(image: Image) -> None:
            if image.properties.get(IMPORT_TASK) and self.claims.ours(image, claim):
                image.properties.pop(IMPORT_TASK, None)
                for name in (STAGE_URI, STAGE_HOST):
                    image.properties.pop(name, None)
                image.upload_worker = image.upload_lease = None

        with acting_as(None):
            self.registry.update_image(claim.image_id, change)

    # -- copy-image -------------------------------------------------------------------------

    def _copy(self, claim: Claim, req: Request, progress: _Progress) -> dict:
        """The active image's data from one of its locations straight to each new store:
        read once per store, its size and hashes checked against the image's on the way
        (no staging: nothing to convert, and no second copy on the staging disk)."""
        image = self.registry.get_image(claim.image_id)
        checker = self.service.uploads.checker(claim)
        copied, failed = [], []
        for name in req.stores:
            store = self.stores[name]
            notify(self.plugins, "abbild_image_preparing", image=image, store=store)
            stored = None
            try:
                chunks = self._source(image)
                try:
                    stream = ImageStream(
                        chunks,
                        hash_algo=image.os_hash_algo or self.conf.hashing_algorithm,
                        declared_size=image.size,
                        on_progress=lambda n, s=name: (checker(n), progress.update(f"Copied to {s}:", n)),
                        progress_every=CHUNK_SIZE,
                    )
                    store.discard(image.id)
                    stored = store.put(image.id, stream, image.size)
                finally:
                    close = getattr(chunks, "close", None)
                    if close:
                        close()
                wrong = [
                    n for n in ("checksum", "os_hash_value") if getattr(image, n) not in (None, getattr(stream, n))
                ]
                if wrong:
                    raise StoreError(f"the copy's {' and '.join(wrong)} differ from the image's; it was removed")
                image = self._add_location(claim, store, stored, remove_from=name)
                copied.append(name)
            except Exception as exc:
                if stored is not None:
                    store.delete_orphan(stored.uri)
                self._record_failure(claim, name)
                if isinstance(exc, Gone) or req.must_succeed:
                    raise
                LOG.warning("image %s: copy to store %s failed: %s", image.id, name, exc)
                failed.append(name)
        if not copied and failed:
            raise StoreError(f"the copy failed in every store ({', '.join(failed)})")
        self._finish(claim, req)
        return {"image_id": image.id, "stores": copied, "failed_stores": failed}

    def _source(self, image: Image) -> Iterator[bytes]:
        error: Exception | None = None
        for location in self.service._ranked_locations(image):
            store = self.stores.for_location(location.store)
            try:
                return store.get(location.uri, 0, image.size)
            except StoreError as exc:
                error = exc
        raise error or NotFound(f"image {image.id} has no readable location")

    # -- failure ----------------------------------------------------------------------------

    def _revert(self, claim: Claim, task_id: str, req: Request, error: BaseException, keep_stage: bool) -> None:
        """After a failed import: the image back where the import found it (copy-image:
        still active), the lock released, staged data removed unless *keep_stage*."""
        uri: list[str | None] = [None]

        def change(image: Image) -> None:
            if image.properties.get(IMPORT_TASK) != task_id:
                return
            image.properties.pop(IMPORT_TASK, None)
            image.properties[IMPORTING_TO] = ""
            if image.upload_worker == self.claims.worker:
                image.upload_worker = image.upload_lease = None
            if image.status is Status.IMPORTING:
                uri[0] = image.properties.get(STAGE_URI)
                if keep_stage and uri[0]:
                    image.transition(Status.UPLOADING)  # keeps the staged size
                    image.checksum = image.os_hash_algo = image.os_hash_value = None
                else:
                    image.transition(Status.QUEUED)
                    for name in (STAGE_URI, STAGE_HOST):
                        image.properties.pop(name, None)

        try:  # as the caller: the user, whose task has failed, or the import's job
            image = self.registry.update_image(claim.image_id, change)
        except ImageNotFound:  # deleted meanwhile: nobody will import what is staged
            self.staging.discard(claim.image_id)
            return
        except Exception as exc:
            LOG.error("image %s: could not undo the failed import (recovery will): %s", claim.image_id, exc)
            return
        if uri[0] and not keep_stage:
            self.staging.discard(claim.image_id, uri[0])
        if image is not None and image.status is not Status.ACTIVE:
            notify(self.plugins, "abbild_image_upload_failed", image=image, error=error)

    def _task(self, task_id: str, status: TaskStatus, message: str, result: dict | None = None) -> Task | None:
        def change(task: Task) -> None:
            if task.status is not status:
                task.transition(status)
            task.message = message
            if result is not None:
                task.result = result

        try:
            with acting_as(None):
                return self.registry.update_task(task_id, change)
        except Exception as exc:
            LOG.warning("task %s: could not record it as %s: %s", task_id, status, exc)
            return None

    def _fail_task(self, task_id: str, message: str) -> Task | None:
        def change(task: Task) -> None:
            if task.status not in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
                task.transition(TaskStatus.FAILURE)
                task.message = message

        try:
            with acting_as(None):
                task = self.registry.update_task(task_id, change)
        except TaskNotFound:
            return None
        except Exception as exc:
            LOG.warning("task %s: could not record its failure: %s", task_id, exc)
            return None
        if task.status is TaskStatus.FAILURE and task.message == message:
            notify(self.plugins, "abbild_task_failed", task=task)
        return task

    # -- recovery ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Undo the stages and imports a dead process left: ``uploading`` images whose
        stage was interrupted go back to ``queued``; ``importing`` ones to ``uploading``
        (glance-direct, their staged data kept) or ``queued``, their partial data in the
        stores removed and their task failed.

        :returns: the ids of the images recovered.
        """
        recovered = []
        for status in (Status.UPLOADING, Status.IMPORTING):
            try:
                stale = self.claims.stale(status)
            except RegistryError as exc:
                # The registry was reachable a moment ago (uploads were recovered), so it
                # refuses this: a keystone-mode registry older than this node, whose
                # service jobs do not include stages and imports yet.
                LOG.warning("cannot recover interrupted stages and imports: %s", exc)
                return recovered  # nor sweep: every staged image would look deleted
            for image in stale:
                if image.upload_worker and self.recover_image(image):
                    recovered.append(image.id)
        self.sweep()
        return recovered

    def sweep(self) -> list[str]:
        """Remove staged data no image waits for any more: its image was deleted (on a
        node that could not reach this staging area), or the data was left behind.
        Only data older than the upload lease: a stage may be writing it right now.

        :returns: the keys removed.
        """
        if Capability.LIST not in self.staging.store.capabilities:
            return []
        waiting = (Status.UPLOADING, Status.IMPORTING)
        try:
            wanted = {image.id for status in waiting for image in self.registry.images_in_status(status.value)}
        except RegistryError as exc:  # a registry that hides them: every staged image would look deleted
            LOG.warning("cannot look through the staging area for leftovers: %s", exc)
            return []
        cutoff = time.time() - self.conf.upload_lease_seconds
        removed = []
        try:
            for listed in self.staging.store.list_objects():
                if listed.key in wanted or listed.modified is None or listed.modified > cutoff:
                    continue
                try:  # once more, for an image that changed status between the two listings
                    if self.registry.get_image(listed.key).status in waiting:
                        continue
                except ImageNotFound:
                    pass
                self.staging.discard(listed.key, listed.uri)
                removed.append(listed.key)
        except StoreError as exc:
            LOG.warning("could not look through the staging area for leftovers: %s", exc)
        return removed

    def recover_image(self, image: Image) -> bool:
        """Put *image*, whose stage or import nobody works on any more (as read), back
        where a new one can start; nothing if it changed since.

        :returns: whether it changed.
        """
        task_id = image.properties.get(IMPORT_TASK)
        staged_uri = image.properties.get(STAGE_URI)
        requeued = False

        def change(current: Image) -> None:
            nonlocal requeued
            if current.version != image.version:
                raise Conflict("the image changed meanwhile")
            staging = current.status is Status.UPLOADING and current.upload_worker  # a stage that died
            current.upload_worker = current.upload_lease = None
            current.properties.pop(IMPORT_TASK, None)
            if task_id:
                current.properties[IMPORTING_TO] = ""
            if current.status is Status.IMPORTING and staged_uri and self._staged(staged_uri):
                current.transition(Status.UPLOADING)  # glance-direct: staged, ready for another try
                current.checksum = current.os_hash_algo = current.os_hash_value = None
            elif current.status is Status.IMPORTING or staging:
                current.transition(Status.QUEUED)
                for name in (STAGE_URI, STAGE_HOST):
                    current.properties.pop(name, None)
                requeued = True

        try:  # as the caller: a user breaking a stale lock, or recovery
            self.registry.update_image(image.id, change)
        except (Conflict, ImageNotFound):
            return False
        except Forbidden as exc:  # a keystone-mode registry: an import whose task has ended
            LOG.warning("image %s: cannot undo its interrupted stage or import: %s", image.id, exc)
            return False
        if task_id:
            self._fail_task(task_id, "The import was interrupted (its process stopped); start it again.")
        if requeued:
            self.staging.discard(image.id, staged_uri)
        if image.status is Status.IMPORTING:
            self.stores.discard_everywhere(image.id)  # no location yet: whatever is there is partial
        elif image.status is Status.ACTIVE:  # an interrupted copy: the stores it was still writing
            holding = {loc.store for loc in image.locations}
            for name in image.properties.get(IMPORTING_TO, "").split(","):
                store = self.stores.for_location(name)
                if store is not None and name not in holding:
                    try:
                        store.discard(image.id)
                    except StoreError as exc:
                        LOG.warning("image %s: could not discard a partial copy in %s: %s", image.id, name, exc)
        LOG.warning("image %s: its interrupted stage or import was undone", image.id)
        return True

    def _staged(self, uri: str) -> bool:
        try:
            self.staging.store.size(uri)
            return True
        except StoreError:
            return False


class _Progress:
    """The task's message while it works: "Copied 15 MiB", at most every few seconds."""

    def __init__(self, registry, task_id: str) -> None:
        self.registry, self.task_id = registry, task_id
        self.message = ""
        self._last = 0.0

    def update(self, verb: str, done: int) -> None:
        self.note(f"{verb} {done // MiB} MiB")

    def note(self, message: str) -> None:
        self.message = message
        now = time.monotonic()
        if now - self._last < PROGRESS_SECONDS:
            return
        self._last = now

        def change(task: Task) -> None:
            task.message = message

        try:
            with acting_as(None):
                self.registry.update_task(self.task_id, change)
        except Exception as exc:  # progress is a courtesy; the import goes on
            LOG.debug("task %s: could not record its progress: %s", self.task_id, exc)


def _glance_filter_names(options: list) -> list:
    """The http store's options, each also read under its Glance name in
    ``[import_filtering_opts]`` (``disallowed_hosts`` for ``denied_hosts``, ...), so a
    Glance operator's filter carries over."""
    adapted = []
    for option in options:
        glance_name = web_download_deprecated.get(option.name)
        if glance_name:
            option = copy.copy(option)
            option.deprecated_opts = [*option.deprecated_opts, cfg.DeprecatedOpt(glance_name, group=FILTERING_GROUP)]
        adapted.append(option)
    return adapted


def _drop_from(image: Image, name: str, store: str) -> None:
    values = [s for s in image.properties.get(name, "").split(",") if s and s != store]
    image.properties[name] = ",".join(values)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (InvalidTransition, Gone)):
        return f"The image changed while it was imported (deleted, or taken over): {text}"
    return text
