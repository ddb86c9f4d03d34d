"""What a user may write through the registry: no more than through the API.

In keystone mode an API node holds its users' tokens, and a compromised one could
send the registry any image body with them. So the registry does not take a user's
body at its word: it compares it with the stored image, and each difference must be
one the API lets that user make, under the same policy (``[oslo_policy]`` of the
registry's config: give it the API's policy file) and property protections
(``property_protection_file``):

- the attributes a user sets: name, visibility (``publicize_image``,
  ``communitize_image``), protected, os_hidden, min_disk, min_ram, tags, extra
  properties, and the formats while the image is ``queued``; the owner only
  administrators change;
- the read-only ones (status, size, virtual_size, checksum, os_hash_algo,
  os_hash_value, locations, the upload claim, created_at, deleted_at) only the way
  the image service changes them for a user: claim an upload (``queued -> saving``),
  renew its lease, activate it (``saving -> active`` with its size and hashes and one
  new location holding this image's own data, or an http(s) URL the user registered),
  release it (``saving -> queued``, the hashes cleared), register an http(s) location,
  remove a location, change locations' metadata, deactivate and reactivate, and
  delete (``pending_delete`` while the data goes, then ``deleted``, or undeleted when
  a store still uses the data). A ``pending_delete`` image nobody claims waits for the
  scrubber (a delayed delete, or data a store failed to delete): no user's token
  changes it; the scrubber works on it as a service job, and only the trusted
  service restores it (``abbild scrub --restore``).

Interoperable import (:mod:`abbild.imports`) keeps its bookkeeping in reserved
properties (``os_glance_import_task``, ``os_glance_importing_to_stores``,
``os_glance_failed_import``, ``os_glance_stage_uri``, ``os_glance_stage_host``), which
change only in its steps: with the user's token, claim a stage (``queued ->
uploading``), record the staged data (its size, and a staging URI of this image's own
key) or release the stage (``uploading -> queued``), take the import lock (``queued``
or ``uploading -> importing``; ``active`` for copy-image, policy ``copy_image``) naming
a *pending* task of the image's project for this image (the API records the task
first), and end an import whose task has ended (a stale lock). With the service token
alone (the background job, the lease keeper, recovery; :mod:`abbild_registry.app`
lets it reach only images with a stage claim or a lock of a pending or processing
task): renew the lease, record progress, activate (``importing -> active`` with
locations holding this image's own data, the size and hashes, and the properties and
disk format the import steps set), add a location of its own data to the active
image (copy-image), end the import or undo it (``importing -> uploading`` or
``queued``), and release a dead stage.

A new image of a user is ``queued``, theirs, and has no data, locations or claim.
Administrators and callers with the role ``service`` are trusted, as is the service
itself (the hmac secret's holder writing for nobody).

Metadata definitions (:class:`MetadefRules`): a user's token creates a namespace owned
by the user's own project, and changes or deletes a namespace that project owns,
keeping it that project's; administrators' tokens (and the service itself) create,
change and delete any namespace, with any owner, and remove resource types. Nobody
else writes metadefs: not a user of another project, nor one whose namespace nobody
owns, nor the role ``service``, nor a service token alone, which only reads them. The
API's metadef policy sits on top (by default only administrators write).
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from abbild import registry_wire as wire
from abbild.errors import Forbidden, InvalidTransition
from abbild.image import TRANSITIONS, Image, Status
from abbild.imports import FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO, STAGE_HOST, STAGE_URI
from abbild.metadefs import Namespace
from abbild.policy import Policy
from abbild.protections import PropertyProtections
from abbild.tasks import TASK_TRANSITIONS, Task, TaskStatus

S = Status
USER_ATTRIBUTES = frozenset(
    {
        "name",
        "visibility",
        "protected",
        "os_hidden",
        "owner",
        "disk_format",
        "container_format",
        "min_disk",
        "min_ram",
        "tags",
        "properties",
    }
)
DATA = frozenset({"size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value"})
CLAIM = frozenset({"upload_worker", "upload_lease"})
# The import's bookkeeping properties (the module docstring), judged as read-only
# attributes, by name.
LOCK = frozenset({IMPORT_TASK, IMPORTING_TO, FAILED_IMPORT})
STAGE = frozenset({STAGE_URI, STAGE_HOST})
BOOKKEEPING = LOCK | STAGE
#: The task statuses of an import still at work.
LIVE_TASK = (TaskStatus.PENDING, TaskStatus.PROCESSING)
# Set by the registry itself on every write.
_REGISTRY_SET = frozenset({"version", "updated_at"})
_RESERVED_PROPERTIES = frozenset({"location", "deleted", "deleted_at"})
# Where the user's own registered locations may point (the http store's schemes).
USER_LOCATION_SCHEMES = ("http", "https")


def names_image(uri: str, image_id: str) -> bool:
    """Whether *uri* is where a store keeps the data it wrote for *image_id*.

    Every store keys an image's data by the image id, and its URIs end in that key
    (``file:///<datadir>/<id>``, ``s3://<bucket>/<id>``, ``swift://<container>/<id>``,
    ``vsphere://<host>/folder/<dir>/<id>?...``), except rbd, which names the snapshot
    after it (``rbd://<fsid>/<pool>/<id>/snap``).
    """
    parts = urllib.parse.urlsplit(uri)
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/")]
    if any(s in (".", "..") for s in segments) or len(segments) < 2:
        return False
    return segments[-2 if parts.scheme == "rbd" else -1] == image_id


def _user_location(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme.lower() in USER_LOCATION_SCHEMES


def _subsequence(part: list, whole: list) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


def _appended(stored: Image, new: Image):
    """The one location *new* adds at the end of *stored*'s, or None."""
    if len(new.locations) == len(stored.locations) + 1 and new.locations[:-1] == stored.locations:
        return new.locations[-1]
    return None


class ImageRules:
    """The checks of :mod:`abbild_registry.rules`, with the registry's policy and
    property protections.

    :raises abbild.errors.ConfigError: the property protection file is missing or
        not valid.
    """

    def __init__(self, conf) -> None:
        self.policy = Policy(conf)
        self.protections = PropertyProtections.from_config(conf, self.policy)

    @staticmethod
    def trusted(caller: wire.Caller) -> bool:
        if caller.jobs_only:
            return False
        viewer = caller.viewer
        return viewer is None or viewer.is_admin or "service" in {r.lower() for r in viewer.roles}

    # -- create -------------------------------------------------------------------------

    def check_create(self, image: Image, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not create *image* like this."""
        if self.trusted(caller):
            return
        viewer = caller.viewer
        target = {"owner": image.owner, "project_id": image.owner}
        self._authorize("add_image", viewer, target, image.id)
        if image.status is not S.QUEUED:
            raise Forbidden(f"Attribute 'status' is read-only: a new image is 'queued', not '{image.status}'.")
        for name in sorted(DATA | CLAIM | {"deleted_at"}):
            if getattr(image, name) is not None:
                raise Forbidden(f"Attribute '{name}' is read-only: a new image has none; it comes with the data.")
        if image.locations:
            raise Forbidden("Attribute 'locations' is read-only: a new image has none; add them once it exists.")
        self._check_visibility(image, viewer, target)
        self._check_properties({}, image.properties, viewer, image.id)

    # -- save ---------------------------------------------------------------------------

    def check_save(self, stored: Image, new: Image, caller: wire.Caller, lock: Task | None = None) -> None:
        """:param lock: the task that *new*'s (else *stored*'s) import lock names, if
            it exists.
        :raises abbild.errors.Forbidden: a user may not change *stored* into *new*.
        :raises abbild.errors.InvalidTransition: the status table forbids the change."""
        if self.trusted(caller):
            return
        changed = {
            f.name
            for f in dataclasses.fields(Image)
            if f.name not in _REGISTRY_SET and getattr(stored, f.name) != getattr(new, f.name)
        }
        # The import's bookkeeping is judged with the status, the rest of the
        # properties as the user's.
        changed |= {name for name in BOOKKEEPING if stored.properties.get(name) != new.properties.get(name)}
        if _user_properties(stored) == _user_properties(new):
            changed.discard("properties")
        viewer = caller.viewer  # None: a service token alone (a service job)
        target = {"project_id": stored.owner, "owner": stored.owner, "visibility": stored.visibility}
        attributes = sorted(changed & USER_ATTRIBUTES)
        if attributes and viewer is None and self._import_activation(stored, new, lock):
            # What the import steps (and glance-download) set: the operator's plugins.
            attributes = [name for name in attributes if name not in ("properties", "disk_format")]
            self._check_reserved(_user_properties(stored), _user_properties(new))
        if attributes:
            if viewer is None:
                raise Forbidden(
                    f"Attribute '{attributes[0]}' of image {stored.id} does not change without a user's token."
                )
            self._check_attributes(stored, new, attributes, viewer, target)
        self._check_transition(stored, new, changed - USER_ATTRIBUTES, viewer, target, lock)

    @staticmethod
    def _live(stored: Image, lock: Task | None) -> bool:
        """Whether *stored* has an import lock of a task still at work on it."""
        return (
            lock is not None
            and stored.properties.get(IMPORT_TASK) == lock.id
            and lock.status in LIVE_TASK
            and lock.image_id == stored.id
        )

    def _import_activation(self, stored: Image, new: Image, lock: Task | None) -> bool:
        return (stored.status, new.status) == (S.IMPORTING, S.ACTIVE) and self._live(stored, lock)

    def _check_attributes(self, stored: Image, new: Image, names: list[str], viewer, target: dict) -> None:
        self._authorize("modify_image", viewer, target, stored.id)
        if "owner" in names:
            raise Forbidden("Attribute 'owner': only administrators may change the owner of an image.")
        if "visibility" in names:
            self._check_visibility(new, viewer, target)
        for name in ("disk_format", "container_format"):
            if name in names and stored.status is not S.QUEUED:
                raise Forbidden(f"Attribute '{name}' can be only replaced for a queued image.")
        if "properties" in names:
            self._check_properties(_user_properties(stored), _user_properties(new), viewer, stored.id)

    def _check_transition(
        self, stored: Image, new: Image, changed: set[str], viewer, target: dict, lock: Task | None = None
    ) -> None:
        """*changed* (the read-only attributes that differ) must be those of one of the
        service's own changes (the module docstring)."""
        if not changed:
            return
        source, status = stored.status, new.status
        if source is not status and status not in TRANSITIONS[source]:
            raise InvalidTransition(stored.id, source.value, status.value)
        action = None
        step = self._import_step(stored, new, changed, viewer, lock)
        if step is not None:
            what, allowed, action = step
        elif source is status is S.SAVING:
            what, allowed = "lease renewal", {"upload_lease"}
        elif (source, status) == (S.QUEUED, S.SAVING):
            what, allowed, action = "claim of an upload", {"status"} | CLAIM, "upload_image"
        elif (source, status) == (S.SAVING, S.ACTIVE):
            what, allowed = "activation", {"status", "locations"} | DATA | CLAIM
            self._check_new_location(stored, new, what, own_data=True)
        elif (source, status) == (S.SAVING, S.QUEUED):
            what, allowed = "release of an upload", {"status"} | DATA | CLAIM
            kept = sorted(name for name in DATA if getattr(new, name) is not None)
            if kept:
                raise Forbidden(
                    f"Attribute '{kept[0]}' is read-only: the release of image {stored.id}'s upload clears it."
                )
        elif S.PENDING_DELETE in (source, status) or status is S.DELETED:
            # Out of view first (pending_delete), then deleted once the data is gone;
            # or back where it was, when a store still uses the data.
            what, allowed = "delete", {"status", "deleted_at"} | CLAIM
            if source is S.PENDING_DELETE and stored.upload_worker is None and viewer is not None:
                # Unclaimed: its data waits for the scrubber (a delayed delete, or what a
                # store failed to delete); only the scrubber and a restore touch it.
                raise Forbidden(
                    f"Image {stored.id} is deleted and waits for the scrubber: a user's token changes it no more "
                    f"(abbild scrub --restore brings it back)."
                )
            if source is not S.PENDING_DELETE:
                if stored.protected:
                    raise Forbidden(f"Image {stored.id} is protected and cannot be deleted.")
                action = "delete_image"
            if status is S.DELETED or source is status:  # the data is going
                allowed |= self._fewer_locations(stored, new, what, keep_one=False)
        elif {source, status} == {S.ACTIVE, S.DEACTIVATED}:
            action = "deactivate" if status is S.DEACTIVATED else "reactivate"
            what, allowed = f"{action[:-1]}ion", {"status"}
        elif "locations" in changed and source is status and _only_metadata_differs(stored, new):
            what, allowed, action = "change of location metadata", {"locations"}, "set_image_location"
        elif "locations" in changed and (source, status) in ((S.QUEUED, S.ACTIVE), (S.ACTIVE, S.ACTIVE)):
            if len(new.locations) < len(stored.locations):
                what, allowed, action = "location removal", set(), "delete_image_location"
                allowed |= self._fewer_locations(stored, new, what, keep_one=True)
            else:
                what, allowed, action = "location registration", {"status", "locations"}, "set_image_location"
                self._check_new_location(stored, new, what, own_data=False)
                allowed |= self._filled(stored, new, what)
        elif source is status:
            what, allowed = "change of attributes", set()
        else:
            raise Forbidden(
                f"Attribute 'status': image {stored.id} does not go from '{source}' to '{status}' through the registry."
            )
        if action is not None and viewer is not None:
            self._authorize(action, viewer, target, stored.id)
        refused = sorted(changed - allowed)
        if refused:
            raise Forbidden(
                f"Attribute '{refused[0]}' is read-only: image {stored.id} keeps it in this {what} "
                f"({source} -> {status})."
            )

    def _import_step(self, stored: Image, new: Image, changed: set[str], viewer, lock: Task | None):
        """The import's steps (the module docstring): ``(what, allowed, policy action)``,
        or None for a change that is none of them."""
        source, status = stored.status, new.status
        before, after = stored.properties.get(IMPORT_TASK), new.properties.get(IMPORT_TASK)
        live = self._live(stored, lock)
        if status in (S.DELETED, S.PENDING_DELETE):
            return None
        if (source, status) == (S.QUEUED, S.UPLOADING) and viewer is not None:
            return "claim of a stage", {"status"} | CLAIM, "modify_image"
        if source is S.UPLOADING and stored.upload_worker and not before and status in (S.UPLOADING, S.QUEUED):
            if status is S.QUEUED:
                self._check_cleared(stored, new, DATA, "release of a stage")
                return "release of a stage", {"status"} | CLAIM | DATA | STAGE, "modify_image"
            if viewer is None:
                return "lease renewal", {"upload_lease"}, None
            self._check_stage_uri(stored, new)
            self._check_cleared(stored, new, DATA - {"size", "virtual_size"}, "stage")
            return "stage", {"size", "virtual_size"} | CLAIM | STAGE, "modify_image"
        if not before and after:
            if viewer is None:
                raise Forbidden(f"Attribute '{IMPORT_TASK}': image {stored.id}'s import lock takes a user's token.")
            if not (
                lock is not None
                and lock.id == after
                and lock.status is TaskStatus.PENDING
                and lock.image_id == stored.id
                and lock.owner == stored.owner
            ):
                raise Forbidden(
                    f"Attribute '{IMPORT_TASK}': {after} is no pending import task of image {stored.id}; "
                    f"the import lock names the task of the import that takes it."
                )
            if (source, status) in ((S.QUEUED, S.IMPORTING), (S.UPLOADING, S.IMPORTING)):
                return "import lock", {"status"} | CLAIM | LOCK, "modify_image"
            if source is status is S.ACTIVE:
                return "import lock", CLAIM | LOCK, "copy_image"
            return None
        if not before or (viewer is None) is not live:
            # Work of a live import is the service's, the end of an abandoned one the user's.
            return None
        if not after:  # the end of the import: done, failed, or abandoned
            if (source, status) == (S.IMPORTING, S.UPLOADING):
                self._check_cleared(stored, new, DATA - {"size", "virtual_size"}, "undone import")
            elif (source, status) == (S.IMPORTING, S.QUEUED):
                self._check_cleared(stored, new, DATA, "undone import")
            elif not (source is status and source in (S.ACTIVE, S.IMPORTING, S.UPLOADING)):
                return None
            undone = DATA if source is not status else set()
            return "end of an import", {"status"} | CLAIM | LOCK | STAGE | undone, "modify_image"
        if after != before:
            raise Forbidden(
                f"Attribute '{IMPORT_TASK}': image {stored.id}'s import lock is {before} until that import ends."
            )
        if viewer is not None:
            return None
        progress = {"upload_lease", IMPORTING_TO, FAILED_IMPORT} | STAGE
        self._check_stage_uri(stored, new)
        if source is status is S.IMPORTING:
            return "import", progress, None
        if source is status is S.ACTIVE:
            if "locations" in changed:  # copy-image, or another store of the import
                self._check_new_location(stored, new, "import", own_data=True)
            return "import", progress | {"locations"}, None
        if (source, status) == (S.IMPORTING, S.ACTIVE):
            added = new.locations[len(stored.locations) :]
            if new.locations[: len(stored.locations)] != stored.locations or not added:
                raise Forbidden(f"Attribute 'locations': image {stored.id} gains locations in this activation.")
            for location in added:
                if not names_image(location.uri, stored.id):
                    raise Forbidden(
                        f"Attribute 'locations': {location.uri} is not this image's own data in a store; "
                        f"only administrators and services register other locations."
                    )
            return "activation of an import", progress | {"status", "locations"} | DATA, None
        return None

    @staticmethod
    def _check_cleared(stored: Image, new: Image, names, what: str) -> None:
        kept = sorted(name for name in names if getattr(new, name) is not None)
        if kept:
            raise Forbidden(f"Attribute '{kept[0]}' is read-only: image {stored.id}'s {what} clears it.")

    @staticmethod
    def _check_stage_uri(stored: Image, new: Image) -> None:
        uri = new.properties.get(STAGE_URI)
        if uri and uri != stored.properties.get(STAGE_URI) and not names_image(uri, stored.id):
            raise Forbidden(f"Attribute '{STAGE_URI}': {uri} is not where this image's data is staged.")

    @staticmethod
    def _check_new_location(stored: Image, new: Image, what: str, own_data: bool) -> None:
        """The one new location: the image's own data in a store (*own_data*), or an
        http(s) URL (what users register)."""
        location = _appended(stored, new)
        if location is None:
            raise Forbidden(f"Attribute 'locations': image {stored.id} gains exactly one location in this {what}.")
        if not (_user_location(location.uri) or (own_data and names_image(location.uri, stored.id))):
            where = "this image's own data in a store, or an http(s) URL" if own_data else "an http(s) URL"
            raise Forbidden(
                f"Attribute 'locations': {location.uri} is not {where}; only administrators and "
                f"services register other locations."
            )

    @staticmethod
    def _fewer_locations(stored: Image, new: Image, what: str, keep_one: bool) -> set[str]:
        if not _subsequence(new.locations, stored.locations) or (keep_one and not new.locations):
            raise Forbidden(
                f"Attribute 'locations': image {stored.id} only loses locations in this {what}"
                + (", and keeps one." if keep_one else ".")
            )
        return {"locations"}

    @staticmethod
    def _filled(stored: Image, new: Image, what: str) -> set[str]:
        """Registering a location may fill in the size and hashes the image lacks (from
        the store and the validation data), never replace them."""
        replaced = sorted(n for n in DATA if getattr(stored, n) is not None and getattr(stored, n) != getattr(new, n))
        if replaced:
            raise Forbidden(f"Attribute '{replaced[0]}' is read-only: image {stored.id} keeps it in this {what}.")
        return set(DATA)

    # -- policy and protections -----------------------------------------------------------

    def _authorize(self, action: str, viewer, target: dict, image_id: str) -> None:
        if not self.policy.allows(action, viewer, target):
            raise Forbidden(f"You are not authorized to complete {action} action on image {image_id}.")

    def _check_visibility(self, image: Image, viewer, target: dict) -> None:
        action = {"public": "publicize_image", "community": "communitize_image"}.get(image.visibility)
        if action and not self.policy.allows(action, viewer, target):
            raise Forbidden(
                f"Attribute 'visibility': you may not make image {image.id} {image.visibility} (policy {action})."
            )

    @staticmethod
    def _check_reserved(before: dict, after: dict) -> None:
        for name in sorted(after):
            if after[name] != before.get(name) and (name in _RESERVED_PROPERTIES or name.startswith("os_glance")):
                raise Forbidden(f"Attribute '{name}' is reserved.")

    def _check_properties(self, before: dict, after: dict, viewer, image_id: str) -> None:
        self._check_reserved(before, after)
        for name in sorted(before.keys() | after.keys()):
            if self.protections is None:
                continue
            if name not in after:
                self.protections.authorize(name, "delete", viewer)
            elif name not in before:
                self.protections.authorize(name, "create", viewer)
            elif before[name] != after[name]:
                self.protections.authorize(name, "update", viewer)


class TaskRules:
    """What a user may write of tasks: those of their own project, the way the image
    service writes them (:mod:`abbild.tasks`). Trusted callers (:meth:`ImageRules.trusted`)
    write any task, still along the status table."""

    #: What the service changes in a task as it runs: the rest stays as created.
    RUNNING = frozenset({"status", "result", "message", "image_id"})

    def __init__(self, rules: ImageRules) -> None:
        self.rules = rules

    def check_create(self, task: Task, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not create *task* like this."""
        if self.rules.trusted(caller):
            return
        project = None if caller.viewer is None else caller.viewer.project_id
        if project is None or task.owner != project:
            raise Forbidden("Tasks can only be created for the caller's own project.")
        if task.status is not TaskStatus.PENDING or task.result is not None or task.expires_at is not None:
            raise Forbidden("A new task is 'pending', without a result or an expiry.")

    def check_save(self, stored: Task, new: Task, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not change *stored* into *new*.
        :raises abbild.errors.InvalidTransition: the status table forbids the change."""
        if new.status is not stored.status and new.status not in TASK_TRANSITIONS[stored.status]:
            raise InvalidTransition(stored.id, stored.status.value, new.status.value)
        if self.rules.trusted(caller):
            return
        changed = sorted(
            f.name
            for f in dataclasses.fields(Task)
            if f.name not in self.RUNNING | _REGISTRY_SET and getattr(stored, f.name) != getattr(new, f.name)
        )
        if changed:
            raise Forbidden(f"Attribute '{changed[0]}' of task {stored.id} is read-only.")
        if stored.image_id is not None and new.image_id != stored.image_id:
            raise Forbidden(f"Attribute 'image_id' of task {stored.id} is set once.")


class MetadefRules:
    """Who writes metadefs through the registry (the module docstring). Reading is the
    visibility rule's (:func:`abbild.metadefs.namespace_visible`), not this."""

    @staticmethod
    def trusted(caller: wire.Caller) -> bool:
        """Administrators and the service itself; not the role ``service``, nor a
        service token alone."""
        return caller.privileged

    @staticmethod
    def _project(caller: wire.Caller, what: str) -> str:
        """The caller's project, which a user writes for.

        :raises abbild.errors.Forbidden: no user's token, or one without a project."""
        if caller.jobs_only or caller.viewer is None:
            raise Forbidden(f"Metadata definitions are read-only without a user's token: {what} needs one.")
        if caller.viewer.anonymous or caller.viewer.project_id is None:
            raise Forbidden(f"Only a user of a project, or an administrator, may {what}.")
        return caller.viewer.project_id

    def check_create(self, namespace: Namespace, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not create *namespace* like this."""
        if self.trusted(caller):
            return
        project = self._project(caller, f"create namespace {namespace.namespace}")
        if namespace.owner != project:
            raise Forbidden(
                f"You are not permitted to create namespace {namespace.namespace} owned by "
                f"{namespace.owner or 'nobody'}: a user's namespace is owned by their own project ({project})."
            )

    def check_save(self, stored: Namespace, new: Namespace, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not change *stored* into *new*."""
        if self.trusted(caller):
            return
        self._check_owned(stored, caller, "change")
        if new.owner != stored.owner:
            raise Forbidden(
                f"Attribute 'owner' of namespace {stored.namespace}: only administrators give a namespace "
                f"to another project."
            )

    def check_delete(self, stored: Namespace, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: a user may not delete *stored*."""
        if not self.trusted(caller):
            self._check_owned(stored, caller, "delete")

    def check_delete_resource_type(self, name: str, caller: wire.Caller) -> None:
        """:raises abbild.errors.Forbidden: anyone but administrators and the service."""
        if not self.trusted(caller):
            raise Forbidden(f"Only administrators may remove resource type {name}.")

    def _check_owned(self, stored: Namespace, caller: wire.Caller, verb: str) -> None:
        project = self._project(caller, f"{verb} namespace {stored.namespace}")
        if stored.owner != project:
            raise Forbidden(
                f"You are not permitted to {verb} namespace {stored.namespace}: it is owned by "
                f"{stored.owner or 'nobody'}, and only its own project and administrators {verb} it."
            )


def _user_properties(image: Image) -> dict:
    """*image*'s properties but the import's bookkeeping."""
    return {name: value for name, value in image.properties.items() if name not in BOOKKEEPING}


def _only_metadata_differs(stored: Image, new: Image) -> bool:
    """The same locations (store, URI, size, status) in the same order: PATCH replace
    /locations, which may only change their metadata."""

    def where(image: Image) -> list[tuple]:
        return [(loc.store, loc.uri, loc.size, loc.status) for loc in image.locations]

    return where(stored) == where(new)
