"""Image operations that span the registry, the stores and the hooks: the one place
that knows the order of an upload, a download and a delete (DESIGN.md section 3)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator

from abbild.driver import StoredObject
from abbild.errors import (
    Conflict,
    Forbidden,
    ImageNotFound,
    Invalid,
    SizeLimitExceeded,
    InvalidTransition,
    MemberNotFound,
    NotFound,
    QuotaExceeded,
    RegistryUnavailable,
    StoreError,
    UnsupportedOperation,
)
from abbild.image import Image, Location, Status, utcnow
from abbild.policy import Policy
from abbild.protections import PropertyProtections
from abbild.quotas import check_count, parse_size
from abbild.plugins import get_plugin_manager, notify
from abbild.registry import MEMBER_STATUSES, ImageFilters, Member, Registry, Usage, Viewer
from abbild.streams import ImageStream
from abbild.stores import Store, StoreManager

LOG = logging.getLogger(__name__)


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
    if conf.registry == "sql":
        from abbild.db.registry import prepare_schema

        prepare_schema(registry)
    return registry


class Gone(Conflict):
    """The image was deleted while its data was being written (HTTP 410)."""

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        Exception.__init__(self, f"Image {image_id} was deleted during the upload; its data was removed")


def _process_start_ticks(pid: int) -> str | None:
    """The start time of a running process, or None when there is none. A killed
    process that nobody reaped yet (a zombie) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name may contain spaces; fields after the last ')' are fixed.
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def worker_identity(pid: int | None = None) -> str:
    """``host:pid:start-time``: unique per process, even when a pid is reused."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid)}"


def worker_alive(identity: str) -> bool | None:
    """True/False for a worker on this host; None when it runs elsewhere (only its
    lease can tell)."""
    host, _, rest = identity.partition(":")
    if host != socket.gethostname():
        return None
    pid, _, ticks = rest.partition(":")
    return pid.isdigit() and _process_start_ticks(int(pid)) == ticks


def can_see(image: Image, viewer: Viewer) -> bool:
    if viewer.is_admin or image.owner is None or image.owner == viewer.project_id:
        return True
    return image.visibility in ("public", "community")


@dataclasses.dataclass
class Download:
    """What a download will send: the image, where from, and how."""

    image: Image
    store: Store
    location: Location
    length: int
    chunks: Iterator[bytes] | None = None
    file: object | None = None  # a real file positioned at the offset, for sendfile


class ImageService:
    def __init__(self, conf, registry: Registry, stores: StoreManager, plugins) -> None:
        self.conf = conf
        self.registry = registry
        self.stores = stores
        self.plugins = plugins
        self.worker = worker_identity()
        self.policy = Policy(conf)
        self.protections = PropertyProtections.from_config(conf, self.policy)
        self.storage_quota = parse_size(conf.user_storage_quota)

    @classmethod
    def from_config(cls, conf) -> "ImageService":
        """Build the registry, the stores and the plugins from *conf*, then recover
        uploads that a dead process left behind.

        :raises abbild.errors.ConfigError: anything that cannot work, named.
        """
        registry = load_registry(conf)
        stores = StoreManager(conf)
        plugins = get_plugin_manager()
        plugins.hook.abbild_configure.call_historic(kwargs={"conf": conf})
        service = cls(conf, registry, stores, plugins)
        service.recover_interrupted_uploads()
        return service

    # -- metadata ---------------------------------------------------------------------

    def _visible(self, image_id: str, viewer: Viewer) -> tuple[Image, dict]:
        """The image and its policy target, if *viewer* may know it exists.

        :raises abbild.errors.ImageNotFound: it does not exist, or not for *viewer*.
        """
        image = self.registry.get_image(image_id)
        member_id = None
        if not can_see(image, viewer):
            # Members read a shared image whatever their status; nobody else learns it exists.
            if image.visibility != "shared" or viewer.project_id is None \
                    or self.registry.get_member(image_id, viewer.project_id) is None:
                raise ImageNotFound(image_id)
            member_id = viewer.project_id
        target = {"project_id": image.owner, "owner": image.owner, "visibility": image.visibility,
                  "member_id": member_id}
        return image, target

    def _authorized(self, action: str, image_id: str, viewer: Viewer) -> Image:
        """The image, if *viewer* may do *action* on it.

        :raises abbild.errors.ImageNotFound: *viewer* may not even read it (as Glance:
            a policy that hides an image hides its existence too).
        :raises abbild.errors.Forbidden: *viewer* may read it, but not do *action*.
        """
        image, target = self._visible(image_id, viewer)
        if self.policy.allows(action, viewer, target):
            return image
        if action != "get_image" and self.policy.allows("get_image", viewer, target):
            raise Forbidden(f"You are not authorized to complete {action} action on image {image_id}.")
        raise ImageNotFound(image_id)

    def get(self, image_id: str, viewer: Viewer) -> Image:
        return self._authorized("get_image", image_id, viewer)

    def list(self, filters: ImageFilters, sort, limit: int, marker: str | None, viewer: Viewer) -> list[Image]:
        self.policy.authorize("get_images", viewer, {"project_id": viewer.project_id})
        if marker is not None:
            try:
                self.get(marker, viewer)  # an invisible marker is as unknown as a missing one
            except ImageNotFound:
                raise Invalid(f"Marker {marker} could not be found.") from None
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
        check_count(after.id, "properties", "image_property_quota", len(before.properties), len(after.properties),
                    self.conf.image_property_quota)  # fmt: skip
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

    def create(self, image: Image, viewer: Viewer) -> Image:
        target = {"owner": image.owner, "project_id": image.owner}
        self.policy.authorize("add_image", viewer, target)
        self.authorize_visibility(image.visibility, viewer, target)
        self._check_change(Image(id=image.id), image, viewer)
        image = self.registry.create_image(image)
        notify(self.plugins, "abbild_image_created", image=image)
        return image

    def update(self, image_id: str, change: Callable[[Image], None], viewer: Viewer, *,
               action: str = "modify_image") -> Image:
        before = self._authorized(action, image_id, viewer)

        def checked_change(image: Image) -> None:
            old = dataclasses.replace(image, properties=dict(image.properties), tags=set(image.tags))
            change(image)
            self._check_change(old, image, viewer)
            if image.visibility != old.visibility:
                self.authorize_visibility(image.visibility, viewer, {"project_id": image.owner})

        image = self.registry.update_image(image_id, checked_change)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def set_active(self, image_id: str, active: bool, viewer: Viewer) -> Image:
        """Deactivate (``active=False``) or reactivate; a no-op when already there."""
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
        if changed:
            notify(self.plugins, "abbild_image_activated" if active else "abbild_image_deactivated", image=image)
        return image

    def delete(self, image_id: str, viewer: Viewer) -> None:
        image = self._authorized("delete_image", image_id, viewer)
        if image.protected:
            raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
        if image.status is Status.SAVING and image.upload_worker:
            LOG.info("deleting image %s while its upload runs on %s", image_id, image.upload_worker)
        for location in image.locations:
            store = self.stores.for_location(location.store)
            if store is None:
                LOG.warning("image %s: location in unknown store %r left in place", image_id, location.store)
                continue
            try:
                store.delete(location.uri)
            except NotFound:
                pass
            except UnsupportedOperation:
                pass  # read-only stores (http) keep their data; we only forget the location

        def change(current: Image) -> None:
            if current.protected:
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            current.locations = []
            current.transition(Status.DELETED)

        deleted = self.registry.update_image(image_id, change)
        notify(self.plugins, "abbild_image_deleted", image=deleted)

    def delete_from_store(self, image_id: str, store_name: str, viewer: Viewer) -> None:
        """Remove the image's data from one store, keeping its other locations."""
        self._authorized("get_image_location", image_id, viewer)
        image = self._authorized("delete_image_location", image_id, viewer)
        store = self.stores.for_location(store_name)
        if store is None:
            raise Conflict(f"Unknown store {store_name!r}; the stores are: {', '.join(s.name for s in self.stores)}")
        if image.status is not Status.ACTIVE:
            raise Conflict(f"Image {image_id} has status '{image.status}'; only active images can lose a store")
        here = [loc for loc in image.locations if loc.store == store_name]
        if not here:
            raise NotFound(f"{store_name}/{image_id}")
        if len(here) == len(image.locations):
            raise Forbidden(f"Image {image_id} has data only in store {store_name!r}: delete the image instead.")

        def change(current: Image) -> None:
            current.locations = [loc for loc in current.locations if loc.store != store_name]
            if not current.locations:
                raise Conflict(f"Image {image_id} would be left without data")

        self.registry.update_image(image_id, change)
        for loc in here:
            self._delete_quietly(store, loc.uri)
        notify(self.plugins, "abbild_image_updated", image=self.registry.get_image(image_id))

    def usage(self, viewer: Viewer) -> dict:
        """The caller's project's usage and limits, in Glance's ``/v2/info/usage`` form
        (sizes in MiB; -1: no limit)."""
        if viewer.anonymous:
            raise Forbidden("Anonymous callers have no project, and so no usage.")
        used = self.registry.usage(viewer.project_id) if viewer.project_id else Usage()
        mib = 1 << 20
        return {
            "image_size_total": {"limit": self.storage_quota // mib if self.storage_quota else -1,
                                 "usage": used.size // mib},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": -1, "usage": used.images},
            "image_count_uploading": {"limit": -1, "usage": used.uploading},
        }  # fmt: skip

    # -- members ------------------------------------------------------------------------

    def _shared(self, action: str, image_id: str, viewer: Viewer, member_id: str | None = None) -> Image:
        image, target = self._visible(image_id, viewer)
        if image.visibility != "shared":
            raise Forbidden("Only shared images have members.")
        if member_id is not None:
            target["member_id"] = member_id
        if not self.policy.allows(action, viewer, target):
            if action.startswith("get_"):
                raise MemberNotFound(image_id, member_id or viewer.project_id or "")
            raise Forbidden(f"You are not authorized to complete {action} action on image {image_id}.")
        return image

    def list_members(self, image_id: str, viewer: Viewer) -> list[Member]:
        """All members for the owner and admins; a member sees only itself."""
        image = self._shared("get_members", image_id, viewer)
        members = self.registry.list_members(image_id)
        if viewer.is_admin or image.owner == viewer.project_id:
            return members
        return [m for m in members if m.member_id == viewer.project_id]

    def get_member(self, image_id: str, member_id: str, viewer: Viewer) -> Member:
        image = self._shared("get_member", image_id, viewer)
        if not (viewer.is_admin or image.owner == viewer.project_id
                or member_id == viewer.project_id):
            raise MemberNotFound(image_id, member_id)
        member = self.registry.get_member(image_id, member_id)
        if member is None:
            raise MemberNotFound(image_id, member_id)
        return member

    def add_member(self, image_id: str, member_id: str, viewer: Viewer) -> Member:
        self._shared("add_member", image_id, viewer)
        quota = self.conf.image_member_quota
        if quota >= 0 and len(self.registry.list_members(image_id)) >= quota:
            raise QuotaExceeded(f"Image {image_id} already has the maximum of {quota} members.")
        return self.registry.add_member(image_id, member_id)

    def set_member_status(self, image_id: str, member_id: str, status: str, viewer: Viewer) -> Member:
        """Only the member itself (or an admin) accepts or rejects an image."""
        if status not in MEMBER_STATUSES:
            raise Invalid(f"Invalid status {status!r}: use one of {', '.join(MEMBER_STATUSES)}.")
        self.get_member(image_id, member_id, viewer)
        self._shared("modify_member", image_id, viewer, member_id)
        return self.registry.set_member_status(image_id, member_id, status)

    def delete_member(self, image_id: str, member_id: str, viewer: Viewer) -> None:
        self._shared("delete_member", image_id, viewer)
        self.registry.delete_member(image_id, member_id)

    # -- locations ----------------------------------------------------------------------

    def _location_store(self, url: str, viewer: Viewer) -> Store:
        """The store that will read *url*, after its driver accepted it.

        Services (Nova, Cinder) may register locations in any store; users only URLs
        of a read-only (http) store, so nobody points an image at another's data.
        """
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        stores = [s for s in self.stores if scheme in s.driver.schemes]
        if not self.policy.allows("service_api", viewer):
            stores = [s for s in stores if s.read_only]
        if not stores:
            readable = sorted({sc for s in self.stores if s.read_only for sc in s.driver.schemes})
            raise Invalid(f"No store here may read {scheme or 'such'} URLs for you"
                          + (f"; use one of: {', '.join(readable)}" if readable else
                             " (no http store is configured)"))  # fmt: skip
        refusal: StoreError | None = None
        for store in stores:  # the first store that accepts it: file:// URIs, say, belong to one datadir
            try:
                store.driver.validate_location(url)
                return store
            except StoreError as exc:
                refusal = exc
        raise Invalid(f"Location refused: {refusal}") from refusal

    def _checked_location_count(self, image: Image) -> None:
        check_count(image.id, "locations", "image_location_quota", len(image.locations), len(image.locations) + 1,
                    self.conf.image_location_quota)  # fmt: skip

    def add_location(self, image_id: str, url: str, metadata: dict, validation: dict | None,
                     viewer: Viewer) -> Image:
        """Register data that already lives at *url* (the legacy PATCH ``add
        /locations/-``): a queued image becomes active with the size the store
        reports; an active one gains a copy. *validation* (``os_hash_algo``,
        ``os_hash_value``, ``checksum``) is taken as the data's hashes, and must agree
        with those the image has."""
        self._authorized("set_image_location", image_id, viewer)
        store = self._location_store(url, viewer)
        size = store.size(url)

        def change(image: Image) -> None:
            if image.status not in (Status.QUEUED, Status.ACTIVE):
                raise Conflict(f"Image {image_id} has status '{image.status}'; locations can be added to queued "
                               "or active images only")  # fmt: skip
            if any(loc.uri == url for loc in image.locations):
                raise Conflict(f"Image {image_id} already has location {url}")
            self._checked_location_count(image)
            for name, value in (validation or {}).items():
                if getattr(image, name) not in (None, value):
                    raise Conflict(f"validation_data {name} {value!r} differs from the image's {getattr(image, name)!r}")
                setattr(image, name, value)
            if image.size not in (None, size):
                raise Conflict(f"The data at {url} has {size} bytes; image {image_id} has {image.size}")
            image.locations.append(Location(store.name, url, size, "active", dict(metadata)))
            if image.status is Status.QUEUED:
                image.size = size
                image.transition(Status.ACTIVE)

        image = self.registry.update_image(image_id, change)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def remove_location(self, image_id: str, index: int, viewer: Viewer) -> Image:
        """Forget one location (and delete its data, where the store can)."""
        self._authorized("delete_image_location", image_id, viewer)
        removed: list[Location] = []

        def change(image: Image) -> None:
            if not -len(image.locations) <= index < len(image.locations):
                raise Invalid(f"Image {image_id} has no location {index}")
            if len(image.locations) == 1:
                raise Forbidden(f"Cannot remove the last location of image {image_id}: delete the image instead.")
            removed[:] = [image.locations.pop(index)]

        image = self.registry.update_image(image_id, change)
        store = self.stores.for_location(removed[0].store)
        if store is not None and not store.read_only:
            self._delete_quietly(store, removed[0].uri)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def locations(self, image_id: str, viewer: Viewer) -> list[Location]:
        image = self._authorized("fetch_image_location", image_id, viewer)
        return [loc for loc in image.locations if loc.status == "active"]

    def import_location(self, image_id: str, url: str, validation: dict | None, viewer: Viewer):
        """Register *url* for a queued image the way API 2.17's ``POST .../locations``
        does: claim the image now, then (in the returned job, which the caller runs in
        the background) read the data once to learn its size and hashes, check them
        against *validation*, and activate. A failure leaves the image queued."""
        self._authorized("add_image_location", image_id, viewer)
        store = self._location_store(url, viewer)
        self._claim(image_id)

        def job() -> None:
            try:
                stream = ImageStream(store.get(url), hash_algo=(validation or {}).get("os_hash_algo") or
                                     self.conf.hashing_algorithm, max_size=self.conf.image_size_cap,
                                     on_progress=lambda _n: self._renew_lease(image_id))  # fmt: skip
                for _ in stream:
                    pass
                if validation and validation.get("os_hash_value") not in (None, stream.os_hash_value):
                    raise Invalid(f"The data at {url} does not match validation_data: its "
                                  f"{stream.hash_algo} is {stream.os_hash_value}")  # fmt: skip
                stored = StoredObject(url, stream.size)
                image = self.registry.update_image(image_id, lambda img: self._activate(img, store, stored, stream))
            except Exception as exc:
                LOG.warning("image %s: importing %s failed: %s", image_id, url, exc)
                self._release(image_id, exc)
                return
            notify(self.plugins, "abbild_image_activated", image=image)

        return job

    # -- data ---------------------------------------------------------------------------

    def upload(
        self,
        image_id: str,
        chunks: Iterable[bytes],
        *,
        declared_size: int | None,
        viewer: Viewer,
        store_name: str | None = None,
    ) -> Image:
        """Stream *chunks* into a store and activate the image.

        The image is claimed (``queued`` -> ``saving``) with a compare-and-swap, so a
        second concurrent upload fails with 409. On any failure the partial data is
        removed and the image returns to ``queued``; it becomes ``active`` only after
        the store acknowledged every byte.
        """
        image = self._authorized("upload_image", image_id, viewer)
        store = self._upload_store(image, store_name)
        max_size, limit_name = self._upload_limit(image)
        if declared_size is not None and declared_size > max_size:
            raise SizeLimitExceeded(max_size, limit_name)
        self._claim(image_id)
        stream = ImageStream(
            chunks,
            hash_algo=self.conf.hashing_algorithm,
            max_size=max_size,
            limit_name=limit_name,
            declared_size=declared_size,
            on_progress=lambda _n: self._renew_lease(image_id),
        )
        try:
            stored = store.put(image_id, stream, declared_size)
        except BaseException as exc:
            self._release(image_id, exc)
            raise
        try:
            # Uploads running side by side each saw the room the others were filling.
            self._upload_limit(image, uploaded=stream.size)
            image = self.registry.update_image(image_id, lambda img: self._activate(img, store, stored, stream))
        except BaseException as exc:
            # The metadata never pointed at this data: remove it, or it is orphaned.
            self._delete_quietly(store, stored.uri)
            if isinstance(exc, (ImageNotFound, InvalidTransition)):
                raise Gone(image_id) from exc
            self._release(image_id, exc)
            raise
        location = image.locations[-1]
        notify(self.plugins, "abbild_image_uploaded", image=image, location=location)
        notify(self.plugins, "abbild_image_activated", image=image)
        return image

    def _upload_limit(self, image: Image, uploaded: int = 0) -> tuple[int, str]:
        """How many bytes the upload of *image* may write, and which limit says so.

        :raises abbild.errors.QuotaExceeded: the owner's images together, with
            *uploaded* more bytes, exceed ``user_storage_quota``.
        """
        if not self.storage_quota or image.owner is None:
            return self.conf.image_size_cap, "image_size_cap"
        used = self.registry.usage(image.owner).size
        if used + uploaded > self.storage_quota:
            raise QuotaExceeded(f"Project {image.owner} would store {used + uploaded} bytes of image data; "
                                f"user_storage_quota allows {self.storage_quota}.")  # fmt: skip
        room = self.storage_quota - used
        if room < self.conf.image_size_cap:
            return room, f"room left under user_storage_quota ({self.storage_quota} bytes, {used} used)"
        return self.conf.image_size_cap, "image_size_cap"

    def _upload_store(self, image: Image, store_name: str | None) -> Store:
        if store_name is None:
            writable = {s.name: s for s in self.stores if not s.read_only}
            store_name = self.plugins.hook.abbild_select_store(image=image, stores=writable)
            if store_name is None:
                raise UnsupportedOperation(self.stores.default.name, "writing (no writable store)")
        store = self.stores[store_name]
        if store.read_only:
            raise UnsupportedOperation(store.name, "writing")
        return store

    def _claim(self, image_id: str) -> None:
        def change(image: Image) -> None:
            if image.status is not Status.QUEUED:
                raise Conflict(
                    f"Image {image_id} has status '{image.status}'; data can only be uploaded to a 'queued' image"
                )
            image.transition(Status.SAVING)
            image.upload_worker = self.worker
            image.upload_lease = self._lease_expiry()

        self.registry.update_image(image_id, change)

    def _lease_expiry(self) -> datetime.datetime:
        return utcnow() + datetime.timedelta(seconds=self.conf.upload_lease_seconds)

    def _ours(self, image: Image) -> bool:
        return image.status is Status.SAVING and image.upload_worker == self.worker

    def _renew_lease(self, image_id: str) -> None:
        def change(image: Image) -> None:
            if not self._ours(image):
                raise Gone(image_id)
            image.upload_lease = self._lease_expiry()

        try:
            self.registry.update_image(image_id, change)
        except ImageNotFound:
            raise Gone(image_id) from None

    def _activate(self, image: Image, store: Store, stored: StoredObject, stream: ImageStream) -> None:
        if not self._ours(image):
            raise InvalidTransition(image.id, image.status.value, Status.ACTIVE.value)
        self._checked_location_count(image)
        image.size = stream.size
        image.checksum = stream.checksum
        image.os_hash_algo = stream.hash_algo
        image.os_hash_value = stream.os_hash_value
        image.locations.append(Location(store.name, stored.uri, stored.size, "active", dict(stored.extra)))
        image.upload_worker = image.upload_lease = None
        image.transition(Status.ACTIVE)

    def _release(self, image_id: str, error: BaseException, *, in_background: bool = False) -> bool:
        """Undo a claim after a failed upload: back to ``queued``, if still ours.

        When the registry cannot be reached (often the very reason the upload failed),
        keep trying in the background for as long as the claim's lease would last, so
        the image does not stay ``saving`` until this process restarts.

        :returns: False if the registry could not be reached.
        """

        def change(image: Image) -> None:
            if self._ours(image):
                image.transition(Status.QUEUED)
                image.upload_worker = image.upload_lease = None

        try:
            image = self.registry.update_image(image_id, change)
        except ImageNotFound:
            return True
        except RegistryUnavailable as exc:
            if not in_background:
                LOG.warning("image %s: registry unavailable (%s); will retry returning it to 'queued'", image_id, exc)
                threading.Thread(target=self._release_later, args=(image_id, error), daemon=True,
                                 name=f"release-{image_id}").start()  # fmt: skip
            return False
        except Exception:
            LOG.exception("image %s: could not return it to 'queued' after a failed upload", image_id)
            return True
        notify(self.plugins, "abbild_image_upload_failed", image=image, error=error)
        return True

    def _release_later(self, image_id: str, error: BaseException) -> None:
        deadline = time.monotonic() + self.conf.upload_lease_seconds
        delay = 1.0
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            if self._release(image_id, error, in_background=True):
                return
        LOG.error("image %s: still 'saving'; recovery returns it to 'queued' once its lease ran out", image_id)

    @staticmethod
    def _delete_quietly(store: Store, uri: str) -> None:
        try:
            store.delete(uri)
        except NotFound:
            pass
        except Exception:
            LOG.exception("could not remove orphaned data at %s in store %s", uri, store.name)

    def download(self, image_id: str, viewer: Viewer, offset: int = 0, length: int | None = None,
                 zero_copy: bool = False, prefer: list[str] = ()) -> Download | None:
        """Open the image's data, trying its locations from the highest store weight down,
        or the stores in *prefer* first (``?prefer=``).

        :returns: ``None`` when the image has no data.
        :raises abbild.errors.Forbidden: deactivated, and the caller is no admin.
        """
        image = self._authorized("download_image", image_id, viewer)
        if image.status is Status.DEACTIVATED and not viewer.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        rank = self.stores.rank()
        if prefer:
            self._authorized("download_from_store", image_id, viewer)
            unknown = [name for name in prefer if name not in rank]
            if unknown:
                raise Invalid(f"Unknown store(s) in prefer: {', '.join(unknown)}; the stores are: {', '.join(rank)}")
            rank = {name: (prefer.index(name) - len(prefer) if name in prefer else r) for name, r in rank.items()}
        locations = sorted(
            (l for l in image.locations if l.status == "active" and l.store in rank),
            key=lambda l: rank[l.store],
        )
        if not locations:
            return None
        size = image.size if image.size is not None else locations[0].size
        if length is None:
            length = max(0, (size or 0) - offset)
        error: Exception | None = None
        for location in locations:
            store = self.stores.for_location(location.store)
            try:
                if zero_copy and (f := store.open_local(location.uri)) is not None:
                    f.seek(offset)
                    return Download(image, store, location, length, file=f)
                return Download(image, store, location, length, chunks=store.get(location.uri, offset, length))
            except StoreError as exc:
                LOG.warning("image %s: location in store %s failed: %s", image_id, store.name, exc)
                error = exc
        raise error

    # -- recovery -----------------------------------------------------------------------

    def recover_interrupted_uploads(self) -> list[str]:
        """Return images left in ``saving`` by a dead process to ``queued`` and remove
        whatever data their upload left behind.

        Safe to run on every start of every worker: an upload whose process is alive on
        this host, or whose lease (renewed while bytes flow) has not run out, is left
        alone.
        """
        recovered = []
        now = utcnow()
        for image in self.registry.images_in_status(Status.SAVING.value):
            if image.upload_worker == self.worker:
                continue
            alive = worker_alive(image.upload_worker or "")
            if alive or (alive is None and image.upload_lease and image.upload_lease > now):
                continue
            claimed_by = image.upload_worker

            def change(current: Image) -> None:
                if current.status is not Status.SAVING or current.upload_worker != claimed_by:
                    raise Conflict("the upload changed hands")
                current.transition(Status.QUEUED)
                current.upload_worker = current.upload_lease = None

            try:
                self.registry.update_image(image.id, change)
            except (Conflict, ImageNotFound):
                continue
            for store in self.stores:
                try:
                    store.discard(image.id)
                except StoreError:
                    LOG.exception("image %s: could not discard partial data in store %s", image.id, store.name)
            LOG.warning("image %s: upload by %s was interrupted; the image is queued again", image.id, claimed_by)
            recovered.append(image.id)
        return recovered
