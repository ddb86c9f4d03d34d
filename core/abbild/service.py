"""The image service: what a caller may do with an image, in one place.

:class:`ImageService` checks every request against the visibility rule and the policy
(:meth:`ImageService.authorized`), then changes metadata through the registry and
tells the plugins. The work on image data has a module each, reached through the
service: :mod:`abbild.uploads` (``service.uploads``), :mod:`abbild.locations`
(``service.locations``) and :mod:`abbild.deletes` (``service.deletes``); background
work runs on :mod:`abbild.jobs`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from abbild.deletes import Deletes
from abbild.errors import Forbidden, ImageNotFound, Invalid, MemberNotFound, StoreError
from abbild.image import Image, Location, Status
from abbild.imports import Imports
from abbild.jobs import Jobs
from abbild.locations import Locations
from abbild.metadef_service import Metadefs
from abbild.metadef_validation import check_image_properties
from abbild.plugins import get_plugin_manager, notify
from abbild.policy import Policy
from abbild.protections import PropertyProtections
from abbild.quotas import check_count, parse_size
from abbild.registry import MEMBER_STATUSES, ImageFilters, Member, Registry, Usage, Viewer, why_visible
from abbild.stores import Store, StoreManager
from abbild.streams import ChunkReader
from abbild.uploads import Claims, Uploads

if TYPE_CHECKING:
    from abbild.cache import ImageCache

LOG = logging.getLogger(__name__)

# Where the ``cache`` paste filter puts the node's abbild.cache.ImageCache in each
# request's WSGI environ, for the API to hand to the service.
IMAGE_CACHE_KEY = "abbild.image_cache"


def load_registry(conf) -> Registry:
    """The registry driver named by ``[DEFAULT] registry``, ready to serve."""
    from stevedore import driver as stevedore_driver
    from stevedore.exception import NoMatches

    from abbild.errors import ConfigError

    try:
        cls = stevedore_driver.DriverManager("abbild.registries", conf.registry).driver
    except NoMatches:
        raise ConfigError(f"no registry driver named {conf.registry!r} is installed; use 'sql'") from None
    registry = cls(conf)
    registry.prepare()
    return registry


@dataclasses.dataclass
class Download:
    """What a download will send: the image, where from, and how."""

    image: Image
    store: Store | None  # None: from this node's image cache
    location: Location | None
    offset: int
    length: int
    partial: bool  # a range was asked for (206)
    chunks: Iterator[bytes] | None = None
    file: object | None = None  # a real file positioned at the offset, for sendfile


class ImageService:
    def __init__(self, conf, registry: Registry, stores: StoreManager, plugins) -> None:
        self.conf = conf
        self.registry = registry
        self.stores = stores
        self.plugins = plugins
        self.jobs = Jobs.from_config(conf)
        self.claims = Claims(registry, conf.upload_lease_seconds, plugins, self.jobs)
        self.policy = Policy(conf)
        self.protections = PropertyProtections.from_config(conf, self.policy)
        self.storage_quota = parse_size(conf.user_storage_quota)
        self.uploads = Uploads(self)
        self.locations = Locations(self)
        self.deletes = Deletes(self)
        self.imports = Imports(self)
        self.metadefs = Metadefs(self)

    @classmethod
    def from_config(cls, conf, recover: bool = True) -> ImageService:
        """Build the registry, the stores and the plugins from *conf*, then recover
        the work that a dead process left behind (unless *recover* is false: a
        command that only reads images, such as ``abbild cache prefetch``).

        :raises abbild.errors.ConfigError: anything that cannot work, named.
        """
        registry = load_registry(conf)
        stores = StoreManager(conf)
        plugins = get_plugin_manager()
        plugins.hook.abbild_configure.call_historic(kwargs={"conf": conf})
        service = cls(conf, registry, stores, plugins)
        if recover:
            service.recover()
        return service

    def recover(self) -> list[str]:
        """Undo or finish the work a dead process left behind: interrupted uploads
        (:meth:`abbild.uploads.Uploads.recover`), stages and imports
        (:meth:`abbild.imports.Imports.recover`) and the deletes whose data is going
        already (:meth:`abbild.scrubber.Scrubber.recover`; delayed deletes wait for the
        scrubber). Safe to run on every start of every worker: work whose process is
        alive on this host, or whose lease has not run out, is left alone.

        :returns: the ids of the images recovered.
        """
        from abbild.scrubber import Scrubber  # it works through this service

        return self.uploads.recover() + self.imports.recover() + Scrubber(self).recover()

    # -- who may do what ------------------------------------------------------------------

    def _visible(self, image_id: str, viewer: Viewer) -> tuple[Image, dict]:
        """The image and its policy target, if *viewer* may know it exists.

        :raises abbild.errors.ImageNotFound: it does not exist, or not for *viewer*.
        """
        image = self.registry.get_image(image_id)
        if image.status is Status.PENDING_DELETE:
            raise ImageNotFound(image_id)  # deleted for everyone; only its data is still going
        why = why_visible(image, viewer, self.registry)
        if why is None:
            raise ImageNotFound(image_id)
        target = {
            "project_id": image.owner,
            "owner": image.owner,
            "visibility": image.visibility,
            "member_id": viewer.project_id if why == "member" else None,
        }
        return image, target

    def authorized(self, actions: str | tuple[str, ...], image_id: str, viewer: Viewer) -> Image:
        """The image, read once, if *viewer* may do each of *actions* on it.

        :raises abbild.errors.ImageNotFound: *viewer* may not even read it (as Glance:
            a policy that hides an image hides its existence too).
        :raises abbild.errors.Forbidden: *viewer* may read it, but not do an action.
        """
        image, target = self._visible(image_id, viewer)
        for action in (actions,) if isinstance(actions, str) else actions:
            if self.policy.allows(action, viewer, target):
                continue
            if action != "get_image" and self.policy.allows("get_image", viewer, target):
                raise Forbidden(f"You are not authorized to complete {action} action on image {image_id}.")
            raise ImageNotFound(image_id)
        return image

    # -- metadata ---------------------------------------------------------------------

    def get(self, image_id: str, viewer: Viewer) -> Image:
        return self.authorized("get_image", image_id, viewer)

    def list(self, filters: ImageFilters, sort, limit: int, marker: str | None, viewer: Viewer) -> list[Image]:
        self.policy.authorize("get_images", viewer, {"project_id": viewer.project_id})
        # The registry reads the marker as *viewer* may (an image they may not read,
        # or one being deleted, is as unknown as a missing one: 400), as Glance, which
        # asks no policy of a marker: a listed image must do as the next page's.
        return self.registry.list_images(filters, sort, limit, marker, viewer)

    def authorize_visibility(self, visibility: str | None, viewer: Viewer, target: dict) -> None:
        """Making an image public or community shows it to every project."""
        action = {"public": "publicize_image", "community": "communitize_image"}.get(visibility or "")
        if action:
            self.policy.authorize(action, viewer, target)

    def readable(self, image: Image, viewer: Viewer) -> Image:
        """*image* as *viewer* may see it: without the properties protected from them."""
        if self.protections is None:
            return image
        allowed = {k: v for k, v in image.properties.items() if self.protections.allows(k, "read", viewer)}
        return dataclasses.replace(image, properties=allowed)

    def _check_change(self, before: Image, after: Image, viewer: Viewer) -> None:
        """Quotas and property protections for a change from *before* to *after*."""
        check_count(
            after.id,
            "properties",
            "image_property_quota",
            len(before.properties),
            len(after.properties),
            self.conf.image_property_quota,
        )
        check_count(after.id, "tags", "image_tag_quota", len(before.tags), len(after.tags), self.conf.image_tag_quota)
        if self.protections is None:
            return
        for name in before.properties.keys() | after.properties.keys():
            if name not in after.properties:
                self.protections.authorize(name, "delete", viewer)
            elif name not in before.properties:
                self.protections.authorize(name, "create", viewer)
            elif before.properties[name] != after.properties[name]:
                self.protections.authorize(name, "update", viewer)

    def _check_definitions(self, image: Image, properties: dict[str, str]) -> None:
        """With ``validate_image_properties``, *properties* (new or changed ones) must
        satisfy the metadata definitions *image*'s owner sees (:mod:`abbild.metadef_validation`).
        Off, the registry is not even asked."""
        if self.conf.validate_image_properties and properties:
            check_image_properties(self.registry, image.owner, properties)

    def create(self, image: Image, viewer: Viewer) -> Image:
        target = {"owner": image.owner, "project_id": image.owner}
        self.policy.authorize("add_image", viewer, target)
        self.authorize_visibility(image.visibility, viewer, target)
        self._check_change(Image(id=image.id), image, viewer)
        self._check_definitions(image, image.properties)
        image = self.registry.create_image(image)
        notify(self.plugins, "abbild_image_created", image=image)
        return image

    def update(
        self, image_id: str, change: Callable[[Image], None], viewer: Viewer, *, action: str = "modify_image"
    ) -> Image:
        self.authorized(action, image_id, viewer)

        def checked_change(image: Image) -> None:
            old = dataclasses.replace(image, properties=dict(image.properties), tags=set(image.tags))
            change(image)
            self._check_change(old, image, viewer)
            if image.visibility != old.visibility:
                self.authorize_visibility(image.visibility, viewer, {"project_id": image.owner})
            changed = {k: v for k, v in image.properties.items() if old.properties.get(k) != v}
            self._check_definitions(image, changed)

        image = self.registry.update_image(image_id, checked_change)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def set_active(self, image_id: str, active: bool, viewer: Viewer, cache: ImageCache | None = None) -> Image:
        """Deactivate (``active=False``) or reactivate; a no-op when already there. A
        deactivated image leaves *cache* (this node's) at once; other nodes never serve
        it either, since every cache hit follows the authorized read of the image."""
        target = Status.ACTIVE if active else Status.DEACTIVATED
        source = Status.DEACTIVATED if active else Status.ACTIVE
        changed = False

        def change(image: Image) -> None:
            nonlocal changed
            changed = image.status is source
            if image.status not in (source, target):
                verb = "reactivate" if active else "deactivate"
                raise Forbidden(f"Not allowed to {verb} an image in status '{image.status}'")
            if changed:
                image.transition(target)

        image = self.update(image_id, change, viewer, action="reactivate" if active else "deactivate")
        if not active and cache is not None:
            cache.evict(image_id)
        if changed:
            notify(self.plugins, "abbild_image_activated" if active else "abbild_image_deactivated", image=image)
        return image

    def usage(self, viewer: Viewer) -> dict:
        """The caller's project's usage and limits, in Glance's ``/v2/info/usage`` form
        (sizes in MiB; -1: no limit)."""
        if viewer.anonymous:
            raise Forbidden("Anonymous callers have no project, and so no usage.")
        used = self.registry.usage(viewer.project_id) if viewer.project_id else Usage()
        mib = 1 << 20
        return {
            "image_size_total": {
                "limit": self.storage_quota // mib if self.storage_quota else -1,
                "usage": used.size // mib,
            },
            "image_stage_total": {"limit": -1, "usage": self._staged_bytes(viewer) // mib},
            "image_count_total": {"limit": -1, "usage": used.images},
            "image_count_uploading": {"limit": -1, "usage": used.uploading},
        }

    def _staged_bytes(self, viewer: Viewer) -> int:
        """What the caller's project's images hold in the staging area, waiting for an
        import (listed as the caller: every registry lets a user list their own images)."""
        if viewer.project_id is None:
            return 0
        filters = ImageFilters(values={"status": [Status.UPLOADING.value]}, owner=viewer.project_id, os_hidden=None)
        total, marker, page_size = 0, None, 1000
        while True:
            page = self.registry.list_images(filters, [("created_at", "asc")], page_size, marker, viewer)
            total += sum(image.size or 0 for image in page if not image.upload_worker)
            if len(page) < page_size:
                return total
            marker = page[-1].id

    # -- members ------------------------------------------------------------------------

    def _shared(self, image_id: str, viewer: Viewer, *checks: tuple[str, str | None]) -> Image:
        """The shared image, read once, if *viewer* passes each ``(action, member_id)``
        of *checks* (``member_id``: the member the action is about, when not the viewer).

        :raises abbild.errors.MemberNotFound: a ``get_*`` action is not allowed.
        :raises abbild.errors.Forbidden: the image is not shared, or another action is not allowed.
        """
        image, target = self._visible(image_id, viewer)
        if image.visibility != "shared":
            raise Forbidden("Only shared images have members.")
        for action, member_id in checks:
            if self.policy.allows(action, viewer, target if member_id is None else {**target, "member_id": member_id}):
                continue
            if action.startswith("get_"):
                raise MemberNotFound(image_id, member_id or viewer.project_id or "")
            raise Forbidden(f"You are not authorized to complete {action} action on image {image_id}.")
        return image

    @staticmethod
    def _may_see_member(image: Image, member_id: str, viewer: Viewer) -> bool:
        """The owner and admins see every member; a member only itself."""
        return viewer.is_admin or image.owner == viewer.project_id or member_id == viewer.project_id

    def list_members(self, image_id: str, viewer: Viewer) -> list[Member]:
        image = self._shared(image_id, viewer, ("get_members", None))
        return [m for m in self.registry.list_members(image_id) if self._may_see_member(image, m.member_id, viewer)]

    def get_member(self, image_id: str, member_id: str, viewer: Viewer) -> Member:
        image = self._shared(image_id, viewer, ("get_member", None))
        member = (
            self.registry.get_member(image_id, member_id) if self._may_see_member(image, member_id, viewer) else None
        )
        if member is None:
            raise MemberNotFound(image_id, member_id)
        return member

    def add_member(self, image_id: str, member_id: str, viewer: Viewer) -> Member:
        image = self._shared(image_id, viewer, ("add_member", None))
        quota = self.conf.image_member_quota
        member = self.registry.add_member(image_id, member_id, limit=quota if quota >= 0 else None)
        notify(self.plugins, "abbild_image_member_created", image=image, member=member)
        return member

    def set_member_status(self, image_id: str, member_id: str, status: str, viewer: Viewer) -> Member:
        """Only the member itself (or an admin) accepts or rejects an image."""
        if status not in MEMBER_STATUSES:
            raise Invalid(f"Invalid status {status!r}: use one of {', '.join(MEMBER_STATUSES)}.")
        image = self._shared(image_id, viewer, ("get_member", None), ("modify_member", member_id))
        if not self._may_see_member(image, member_id, viewer):
            raise MemberNotFound(image_id, member_id)
        member = self.registry.set_member_status(image_id, member_id, status)  # MemberNotFound if not a member
        notify(self.plugins, "abbild_image_member_updated", image=image, member=member)
        return member

    def delete_member(self, image_id: str, member_id: str, viewer: Viewer) -> None:
        image = self._shared(image_id, viewer, ("delete_member", None))
        member = self.registry.get_member(image_id, member_id)  # for the plugins: what was removed
        self.registry.delete_member(image_id, member_id)
        notify(self.plugins, "abbild_image_member_deleted", image=image, member=member)

    # -- data out -------------------------------------------------------------------------

    def download(
        self,
        image_id: str,
        viewer: Viewer,
        byte_range: Callable[[int], tuple[int, int] | None],
        zero_copy: bool = False,
        prefer: list[str] = (),
        cache: ImageCache | None = None,
    ) -> Download | None:
        """Open the image's data, trying its locations from the highest store weight down,
        or the stores in *prefer* first (``?prefer=``). The image is read once.

        With *cache* (this node's image cache), a download of an active image, whole or
        ranged, comes from the cache when it holds a verified copy (*prefer* is then
        ignored, as by Glance); on a miss of a full download the store's data fills the
        cache as it goes out: one read of the store. A ranged miss fills nothing, and
        deactivated images never touch the cache.

        :param byte_range: given the image's size, the ``(offset, length)`` the caller
            asked for, or ``None`` for all of it; raises to refuse the range.
        :returns: ``None`` when the image has no data.
        :raises abbild.errors.Forbidden: deactivated, and the caller is no admin.
        """
        image = self.authorized(
            ("download_image", "download_from_store") if prefer else "download_image", image_id, viewer
        )
        if image.status is Status.DEACTIVATED and not viewer.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        locations = self._ranked_locations(image, prefer)
        if not locations:
            return None
        size = image.size if image.size is not None else locations[0].size
        wanted = byte_range(size or 0)
        offset, length = wanted or (0, size or 0)
        if cache is not None and cache.cacheable(image):
            cached = cache.open(image)
            if cached is not None:
                cached.seek(offset)
                hit = Download(image, None, None, offset, length, partial=wanted is not None)
                if zero_copy:
                    return dataclasses.replace(hit, file=cached)
                return dataclasses.replace(hit, chunks=ChunkReader(cached.read, cached.close, length=length))
        if wanted is not None or cache is None or not cache.cacheable(image):
            cache = None
        error: Exception | None = None
        for location in locations:
            store = self.stores.for_location(location.store)
            found = Download(image, store, location, offset, length, partial=wanted is not None)
            try:
                if cache is not None:  # a miss: the cache takes the chunks on their way out
                    return dataclasses.replace(found, chunks=cache.fill(image, store.get(location.uri, 0, length)))
                if zero_copy and (f := store.open_local(location.uri)) is not None:
                    f.seek(offset)
                    return dataclasses.replace(found, file=f)
                return dataclasses.replace(found, chunks=store.get(location.uri, offset, length))
            except StoreError as exc:
                LOG.warning("image %s: location in store %s failed: %s", image_id, store.name, exc)
                error = exc
        raise error

    def _ranked_locations(self, image: Image, prefer: list[str] = ()) -> list[Location]:
        """The image's active locations in the order a download tries them: the stores in
        *prefer* first, then by store weight.

        :raises abbild.errors.Invalid: *prefer* names an unknown store.
        """
        rank = self.stores.rank()
        if prefer:
            unknown = [name for name in prefer if name not in rank]
            if unknown:
                raise Invalid(f"Unknown store(s) in prefer: {', '.join(unknown)}; the stores are: {', '.join(rank)}")
            rank = {name: (prefer.index(name) - len(prefer) if name in prefer else r) for name, r in rank.items()}
        return sorted(
            (loc for loc in image.locations if loc.status == "active" and loc.store in rank),
            key=lambda loc: rank[loc.store],
        )

    def read_for_cache(self, image_id: str) -> tuple[Image, Iterator[bytes]] | None:
        """The image and all its data as the cache's prefetcher reads them: as the service
        itself, which sees every image, for active images only.

        :returns: ``None`` when the image is gone, not active, or has no data.
        :raises abbild.errors.StoreError: no location could be read.
        """
        try:
            image = self.registry.get_image(image_id)
        except ImageNotFound:
            return None
        if image.status is not Status.ACTIVE:
            return None
        error: Exception | None = None
        for location in self._ranked_locations(image):
            store = self.stores.for_location(location.store)
            try:
                return image, store.get(location.uri, 0, image.size)
            except StoreError as exc:
                LOG.warning("image %s: location in store %s failed: %s", image_id, store.name, exc)
                error = exc
        if error is not None:
            raise error
        return None
