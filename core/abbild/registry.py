"""The registry interface: where image metadata lives.

Implementations are found through the ``abbild.registries`` entry points: ``sql``
(the database, directly) and, later, ``http`` (the private registry service).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import random
import time
from collections.abc import Callable
from typing import TypeVar

from abbild.errors import ConcurrentUpdate
from abbild.image import Image
from abbild.metadefs import Namespace, NamespaceFilters, ResourceType
from abbild.tasks import Task, TaskFilters

T = TypeVar("T")

#: Columns a list may be sorted by.
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
#: Columns that accept exact or ``in:`` matches.
IN_FILTERS = ("name", "id", "status", "container_format", "disk_format")
#: Integer columns that accept an exact match (Glance filters any image column).
NUMBER_FILTERS = ("size", "virtual_size", "min_disk", "min_ram")
TIME_OPERATORS = ("gt", "gte", "eq", "neq", "lt", "lte")


@dataclasses.dataclass
class Viewer:
    """Who is asking: decides which images exist for them and, through the policy,
    what they may do. ``None`` project with ``is_admin`` is the noauth administrator;
    ``anonymous`` a caller without credentials (read-only, when allowed at all)."""

    project_id: str | None = None
    is_admin: bool = False
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    anonymous: bool = False


MEMBER_STATUSES = ("pending", "accepted", "rejected")


def why_visible(image: Image, viewer: Viewer, registry: Registry) -> str | None:
    """Why *viewer* may know that *image* exists, or ``None`` if not (GLANCE-API 7.4):
    ``"admin"``; ``"owner"`` (their project's, or nobody's); ``"everyone"`` (public and
    community images); ``"member"`` (a shared image their project is a member of, in
    any status). The one statement of the rule: the service and the registry service
    ask it, and the SQL registry's list query says the same in SQL (``_scope``; a test
    checks that the two agree)."""
    if viewer.is_admin:
        return "admin"
    if image.owner is None or image.owner == viewer.project_id:
        return "owner"
    if image.visibility in ("public", "community"):
        return "everyone"
    if (
        image.visibility == "shared"
        and viewer.project_id is not None
        and registry.get_member(image.id, viewer.project_id) is not None
    ):
        return "member"
    return None


@dataclasses.dataclass
class Member:
    """A project an image is shared with, and what that project said about it."""

    image_id: str
    member_id: str
    status: str = "pending"
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


@dataclasses.dataclass
class ImageFilters:
    """Validated list filters (the API turns query strings into this)."""

    values: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # column -> allowed values
    numbers: dict[str, int] = dataclasses.field(default_factory=dict)  # integer column -> its value
    visibility: str | None = None  # None: the default scoping; "all": no visibility filter
    member_status: str = "accepted"
    owner: str | None = None
    size_min: int | None = None
    size_max: int | None = None
    checksum: str | None = None
    os_hash_value: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    protected: bool | None = None
    os_hidden: bool | None = False
    times: list[tuple[str, str, datetime.datetime]] = dataclasses.field(default_factory=list)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Usage:
    """What one project holds: for quotas and ``/v2/info/usage``."""

    size: int = 0  # bytes of image data, all its images together
    images: int = 0  # images, whatever their status
    uploading: int = 0  # images whose data is being written


CACHE_STATES = ("queued", "cached")
#: The tables :meth:`Registry.purge` removes rows from, in the order it reports them.
PURGE_TABLES = (
    "images",
    "image_properties",
    "image_tags",
    "image_locations",
    "image_members",
    "cache_entries",
    "tasks",
)
#: Columns a task list may be sorted by (``GET /v2/tasks?sort_key=``, as Glance).
TASK_SORT_KEYS = ("created_at", "updated_at", "id", "status", "type")


@dataclasses.dataclass
class CacheEntry:
    """One image in one API node's cache, or queued for it (the shared cache index: every
    node's entries live in the registry, so any node can say which nodes hold an image)."""

    node: str  # the node's worker_self_reference_url
    image_id: str
    state: str = "queued"  # one of CACHE_STATES
    size: int | None = None  # bytes of the cached file (cached only)
    checksum: str | None = None  # the image's checksum the file was verified against
    hits: int = 0
    last_accessed: datetime.datetime | None = None
    last_modified: datetime.datetime | None = None  # when it was queued or cached


class Registry(abc.ABC):
    """Image metadata storage. Every write is a compare-and-swap on ``Image.version``,
    so two writers never silently overwrite each other."""

    @abc.abstractmethod
    def create_image(self, image: Image) -> Image:
        """:raises abbild.errors.DuplicateImage: the id is taken (deleted images keep
        theirs, and purged ones their tombstone)."""

    @abc.abstractmethod
    def get_image(self, image_id: str, *, include_deleted: bool = False) -> Image:
        """:raises abbild.errors.ImageNotFound:"""

    @abc.abstractmethod
    def list_images(
        self,
        filters: ImageFilters,
        sort: list[tuple[str, str]],
        limit: int,
        marker: str | None = None,
        viewer: Viewer | None = None,
    ) -> list[Image]:
        """One page of the images *viewer* may see, never deleted, killed or
        ``pending_delete`` ones.

        :param sort: ``(key, "asc"|"desc")`` pairs; ``created_at`` and ``id`` are
            appended as tie-breakers.
        :param marker: id of the last image of the previous page.
        :raises abbild.errors.Invalid: unknown marker.
        """

    @abc.abstractmethod
    def save_image(self, image: Image, *, storage_limit: int | None = None) -> Image:
        """Write *image* if nobody changed it since it was read (``image.version``).

        :param storage_limit: refuse the write if afterwards the images of the
            image's owner would hold more than this many bytes. Checked in the same
            transaction as the write, one writer per owner at a time, so uploads that
            finish side by side cannot together overrun it.
        :returns: the stored image, with its new version and ``updated_at``.
        :raises abbild.errors.ConcurrentUpdate: the stored version differs.
        :raises abbild.errors.QuotaExceeded: *storage_limit* would be exceeded.
        :raises abbild.errors.ImageNotFound:
        """

    @abc.abstractmethod
    def images_in_status(self, status: str) -> list[Image]:
        """Every (not deleted) image in *status*, for recovery and periodic jobs."""

    @abc.abstractmethod
    def usage(self, owner: str) -> Usage:
        """What the project *owner* holds (deleted images do not count)."""

    # -- the cache index ----------------------------------------------------------------

    @abc.abstractmethod
    def cache_entries(self, node: str | None = None, image_id: str | None = None) -> list[CacheEntry]:
        """The cache entries of *node* (every node's when ``None``), of one image when
        *image_id* is given; oldest ``last_modified`` first."""

    @abc.abstractmethod
    def cache_put(self, entry: CacheEntry) -> CacheEntry:
        """Create or replace the entry of ``(entry.node, entry.image_id)``; ``last_modified``
        is set to now. Returns it as stored."""

    @abc.abstractmethod
    def cache_hit(self, node: str, image_id: str) -> None:
        """One more hit: ``hits + 1`` and ``last_accessed`` now (nothing if no entry)."""

    @abc.abstractmethod
    def cache_remove(self, node: str, image_id: str) -> bool:
        """Forget the entry; whether there was one."""

    # -- leases -------------------------------------------------------------------------

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease *name* for *holder* until *seconds* from now, if it is free,
        expired or *holder*'s already (a renewal); whether *holder* has it now."""

    @abc.abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if *holder* has it."""

    # -- purge --------------------------------------------------------------------------

    @abc.abstractmethod
    def purge(self, older_than: datetime.datetime, max_rows: int | None = None) -> dict[str, int]:
        """Remove the rows of what was deleted before *older_than* (naive UTC, or aware):
        each image in status ``deleted`` with its properties, tags, locations, members and
        cache index entries, leaving a tombstone of its id (:meth:`create_image` refuses
        it for ever), the memberships removed from images that are still there, and the
        tasks that expired before *older_than*. Works in batches, one transaction each.

        :param max_rows: at most this many deleted images, at most this many removed
            memberships of other images and at most this many expired tasks, in this
            call; ``None``: all.
        :returns: the rows removed, by table (every key of :data:`PURGE_TABLES`).
        :raises abbild.errors.Invalid: *max_rows* is negative.
        """

    # -- tasks --------------------------------------------------------------------------
    #
    # A task that ends (success, failure) gets ``expires_at``: then plus the registry's
    # ``[task] task_time_to_live``. An expired task is gone for every method here (as
    # Glance soft-deletes it), and :meth:`purge` removes its row.

    @abc.abstractmethod
    def create_task(self, task: Task) -> Task:
        """Record a new task; ``created_at``/``updated_at`` are set to now, ``version``
        to 1. Returns it as stored.

        :raises abbild.errors.Conflict: the id is taken.
        :raises abbild.errors.Invalid: an unknown type, or a value too long to store.
        """

    @abc.abstractmethod
    def get_task(self, task_id: str) -> Task:
        """:raises abbild.errors.TaskNotFound: (also once it expired)"""

    @abc.abstractmethod
    def list_tasks(
        self,
        filters: TaskFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
    ) -> list[Task]:
        """One page of tasks (:data:`TASK_SORT_KEYS`); ``id`` is the tie-breaker after
        *sort_key*. *marker* is the last task of the previous page, one of this list.

        :raises abbild.errors.Invalid: unknown marker, sort key or direction; a
            negative limit.
        """

    @abc.abstractmethod
    def save_task(self, task: Task) -> Task:
        """Write *task* if nobody changed it since it was read (``task.version``).

        :returns: the stored task, with its new version, ``updated_at`` and, once it
            ended, ``expires_at``.
        :raises abbild.errors.ConcurrentUpdate:
        :raises abbild.errors.TaskNotFound: (also once it expired)
        """

    @abc.abstractmethod
    def tasks_of_image(self, image_id: str) -> list[Task]:
        """Every task of the image, newest first (``GET /v2/images/{id}/tasks``). The
        http registry answers only for an image the caller sees
        (:class:`~abbild.errors.ImageNotFound` otherwise), with the tasks of the
        caller's project unless the caller is an administrator or a service."""

    def update_task(self, task_id: str, change: Callable[[Task], None], *, within: float = 30.0) -> Task:
        """Apply *change* to the current task and save it, atomically (as
        :meth:`update_image`)."""
        return _read_change_save(lambda: self.get_task(task_id), change, self.save_task, within)

    # -- metadata definitions -------------------------------------------------------------
    #
    # A namespace is one aggregate (abbild.metadefs): every method reads or writes it
    # whole, with its properties, objects, tags and associations. Namespace names are
    # unique across all projects, case-sensitively. Who may see or change a namespace is
    # the service's business, but for the list's visibility rule (viewer).

    @abc.abstractmethod
    def create_namespace(self, namespace: Namespace) -> Namespace:
        """Record a new namespace with its children; its and each child's
        ``created_at``/``updated_at`` are set to now, ``version`` to 1. The resource
        types its associations name are created if missing (unprotected).

        :raises abbild.errors.Conflict: the name is taken.
        :raises abbild.errors.Invalid: a value too long to store, two children of one
            kind with the same name.
        """

    @abc.abstractmethod
    def get_namespace(self, name: str) -> Namespace:
        """:raises abbild.errors.MetadefNotFound:"""

    @abc.abstractmethod
    def list_namespaces(
        self,
        filters: NamespaceFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
        viewer: Viewer | None = None,
    ) -> list[Namespace]:
        """One page of the namespaces *viewer* may see (:func:`abbild.metadefs.namespace_visible`;
        ``None``: every one), whole. ``namespace`` is the tie-breaker after *sort_key*
        (:data:`abbild.metadefs.NAMESPACE_SORT_KEYS`). *marker* is the name of the last
        namespace of the previous page, one of this list.

        :raises abbild.errors.Invalid: unknown marker, sort key or direction; a
            negative limit.
        """

    @abc.abstractmethod
    def save_namespace(self, name: str, namespace: Namespace) -> Namespace:
        """Write *namespace* over the one stored as *name* if nobody changed it since it
        was read (``namespace.version``); ``namespace.namespace`` may differ from *name*
        (a rename). Children are matched to the stored ones by name: a new one gets
        ``created_at`` (unless it carries one: a renamed child keeps its own) and every
        new or changed one ``updated_at`` now; the namespace's own ``updated_at`` moves
        when its own fields change. Resource types new associations name are created.

        :returns: the stored namespace, with its new version.
        :raises abbild.errors.ConcurrentUpdate: the stored version differs.
        :raises abbild.errors.MetadefNotFound: no namespace *name*.
        :raises abbild.errors.Conflict: renamed to a name that is taken.
        :raises abbild.errors.Invalid: as :meth:`create_namespace`.
        """

    @abc.abstractmethod
    def delete_namespace(self, name: str) -> None:
        """Remove the namespace and everything in it (not the resource types).

        :raises abbild.errors.MetadefNotFound:
        """

    @abc.abstractmethod
    def list_resource_types(self) -> list[ResourceType]:
        """Every resource type, by name."""

    @abc.abstractmethod
    def delete_resource_type(self, name: str) -> None:
        """Remove an unprotected resource type that no association names.

        :raises abbild.errors.MetadefNotFound:
        :raises abbild.errors.Forbidden: it is protected.
        :raises abbild.errors.Conflict: an association names it.
        """

    def update_namespace(self, name: str, change: Callable[[Namespace], None], *, within: float = 30.0) -> Namespace:
        """Apply *change* to the current namespace *name* and save it, atomically (as
        :meth:`update_image`)."""
        return _read_change_save(
            lambda: self.get_namespace(name), change, lambda ns: self.save_namespace(name, ns), within
        )

    # -- members ------------------------------------------------------------------------

    @abc.abstractmethod
    def list_members(self, image_id: str) -> list[Member]:
        """Every current member of the image, oldest first."""

    @abc.abstractmethod
    def get_member(self, image_id: str, member_id: str) -> Member | None:
        """The membership, or ``None``."""

    @abc.abstractmethod
    def add_member(self, image_id: str, member_id: str, *, limit: int | None = None) -> Member:
        """A new ``pending`` membership.

        :param limit: refuse it if the image has this many members already (counted
            in the same transaction as the insert).
        :raises abbild.errors.Conflict: *member_id* is a member already.
        :raises abbild.errors.QuotaExceeded: *limit* is reached.
        """

    @abc.abstractmethod
    def set_member_status(self, image_id: str, member_id: str, status: str) -> Member:
        """:raises abbild.errors.MemberNotFound:"""

    @abc.abstractmethod
    def delete_member(self, image_id: str, member_id: str) -> None:
        """:raises abbild.errors.MemberNotFound:"""

    def update_image(
        self, image_id: str, change: Callable[[Image], None], *, storage_limit: int | None = None, within: float = 30.0
    ) -> Image:
        """Apply *change* to the current image and save it, atomically.

        *change* mutates the image it is given (or raises to abort). On a concurrent
        modification it runs again on the fresh image, after a short random pause so
        that contending writers spread out, so changes always apply to the latest state
        and none is lost. Gives up (:class:`~abbild.errors.ConcurrentUpdate`) after
        *within* seconds rather than a number of rounds: on a busy host one writer
        among several can lose many in a row. *storage_limit*: as for :meth:`save_image`.
        """
        return _read_change_save(
            lambda: self.get_image(image_id),
            change,
            lambda image: self.save_image(image, storage_limit=storage_limit),
            within,
        )

    def prepare(self) -> None:  # noqa: B027 (optional: most registries need nothing)
        """Get ready to serve, or say why not (a database schema that is behind,
        say): called once, before the first request.

        :raises abbild.errors.ConfigError:
        """

    def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""


def _read_change_save(read: Callable[[], T], change: Callable[[T], None], save: Callable[[T], T], within: float) -> T:
    """The loop of :meth:`Registry.update_image` (and of tasks and namespaces): read,
    change, compare-and-swap save; on a concurrent modification again after a short
    random pause, until *within* seconds have passed."""
    deadline = time.monotonic() + within
    attempt = 0
    while True:
        value = read()
        change(value)
        try:
            return save(value)
        except ConcurrentUpdate:
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))
            attempt += 1
