"""Image operations that span the registry, the stores and the hooks: the one place
that knows the order of an upload, a download and a delete (DESIGN.md section 3).
Who holds an image's data while it is written or deleted is :mod:`abbild.uploads`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Iterator

from abbild.driver import StoredObject
from abbild.errors import (
    Busy,
    Conflict,
    Forbidden,
    Gone,
    ImageNotFound,
    InUse,
    Invalid,
    SizeLimitExceeded,
    SizeMismatch,
    InvalidTransition,
    MemberNotFound,
    NotFound,
    QuotaExceeded,
    StoreError,
    UnsupportedOperation,
)
from abbild.image import HASH_LENGTHS, Image, Location, Status
from abbild.jobs import Jobs
from abbild.policy import Policy
from abbild.protections import PropertyProtections
from abbild.quotas import check_count, parse_size
from abbild.plugins import get_plugin_manager, notify
from abbild.registry import MEMBER_STATUSES, ImageFilters, Member, Registry, Usage, Viewer
from abbild.streams import ImageStream
from abbild.stores import Store, StoreManager
from abbild.uploads import Claim, Claims

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


def _read_through(stream: ImageStream) -> ImageStream:
    """Read *stream* to its end (data read only to learn its size and hashes)."""
    for _ in stream:
        pass
    return stream


def _hashes_differing(expected: dict, stream: ImageStream) -> list[str]:
    """Which of ``checksum`` and ``os_hash_value`` *expected* gives and *stream*'s data
    does not have."""
    return [name for name in ("checksum", "os_hash_value") if expected.get(name) not in (None, getattr(stream, name))]


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
        self.jobs = Jobs.from_config(conf)
        self.claims = Claims(registry, conf.upload_lease_seconds, plugins, self.jobs)
        self.policy = Policy(conf)
        self.protections = PropertyProtections.from_config(conf, self.policy)
        self.storage_quota = parse_size(conf.user_storage_quota)

    @classmethod
    def from_config(cls, conf) -> "ImageService":
        """Build the registry, the stores and the plugins from *conf*, then recover
        the work that a dead process left behind.

        :raises abbild.errors.ConfigError: anything that cannot work, named.
        """
        registry = load_registry(conf)
        stores = StoreManager(conf)
        plugins = get_plugin_manager()
        plugins.hook.abbild_configure.call_historic(kwargs={"conf": conf})
        service = cls(conf, registry, stores, plugins)
        service.recover()
        return service

    # -- metadata ---------------------------------------------------------------------

    def _visible(self, image_id: str, viewer: Viewer) -> tuple[Image, dict]:
        """The image and its policy target, if *viewer* may know it exists.

        :raises abbild.errors.ImageNotFound: it does not exist, or not for *viewer*.
        """
        image = self.registry.get_image(image_id)
        if image.status is Status.PENDING_DELETE:
            raise ImageNotFound(image_id)  # deleted for everyone; only its data is still going
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
        self._authorized(action, image_id, viewer)

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
        """Delete the image, and then its data.

        An image with data leaves every caller's view first: ``pending_delete``, in the
        transaction that checks ``protected``, so no image is ever ``active`` without
        its data. Then the data goes, then the image is ``deleted``. A store that
        refuses because something still uses the data (an RBD clone) brings the image
        back (409). Data that could not be removed for another reason stays listed on
        the ``pending_delete`` image and is retried in the background and at the next
        start (:meth:`recover`); a crash in between is finished there too.
        """
        self._authorized("delete_image", image_id, viewer)
        before: list[Image] = []

        def change(image: Image) -> None:
            if image.protected:
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            before[:] = [image.copy()]
            if image.locations:
                self.claims.mark(image, Status.PENDING_DELETE)
            else:
                image.transition(Status.DELETED)

        image = self.registry.update_image(image_id, change)
        was = before[0]
        if was.status is Status.SAVING and self.claims.is_stale(was):
            self._discard_everywhere(image_id)  # its uploader died: nobody else removes what it wrote
        if image.status is Status.PENDING_DELETE:
            try:
                image = self._delete_data(image)
            except InUse:
                self._undelete(image_id, was.status)
                raise
            except Exception:
                self._retry_delete_later(image_id)  # the image is out of sight; its data goes later
                raise
            if image.status is not Status.DELETED:
                self._retry_delete_later(image_id)
                return
        notify(self.plugins, "abbild_image_deleted", image=image)

    def _delete_data(self, image: Image) -> Image:
        """Remove the data of a ``pending_delete`` image, then mark it ``deleted``.

        :returns: the image as saved: ``deleted``, or still ``pending_delete`` when
            some data stays (a store failed), with those locations, unclaimed, for a
            later attempt.
        :raises abbild.errors.InUse: a store refuses because the data is in use; the
            locations removed so far are gone from the image.
        """
        left: list[Location] = []
        in_use: InUse | None = None
        for location in image.locations:
            store = self.stores.for_location(location.store)
            if store is None:
                LOG.warning("image %s: location in unknown store %r forgotten, its data left in place",
                            image.id, location.store)  # fmt: skip
                continue
            try:
                store.delete(location.uri)
            except (NotFound, UnsupportedOperation):
                pass  # gone already, or a read-only store (http) whose data is not ours
            except InUse as exc:
                in_use = in_use or exc
                left.append(location)
            except StoreError as exc:
                LOG.warning("image %s: could not delete its data in store %s (%s); will retry",
                            image.id, store.name, exc)  # fmt: skip
                left.append(location)

        def change(current: Image) -> None:
            if current.status is not Status.PENDING_DELETE:
                raise InvalidTransition(image.id, current.status.value, Status.DELETED.value)
            current.locations = [loc for loc in current.locations if loc in left]
            current.upload_worker = current.upload_lease = None
            if not current.locations:
                current.transition(Status.DELETED)

        saved = self.registry.update_image(image.id, change)
        if in_use is not None:
            raise in_use
        return saved

    def _undelete(self, image_id: str, status: Status) -> None:
        """Bring a ``pending_delete`` image back to *status* (its data is in use)."""

        def change(image: Image) -> None:
            if image.status is Status.PENDING_DELETE:
                image.transition(status)
                image.upload_worker = image.upload_lease = None

        self.registry.update_image(image_id, change)

    def _retry_delete_later(self, image_id: str) -> None:
        """Try again to delete the data of a ``pending_delete`` image, backing off for
        about eight minutes; after that the next start of any API process tries."""

        def retry() -> None:
            for delay in (2.0**n for n in range(9)):
                if self.jobs.closing.wait(delay):
                    return  # shutting down: the next start retries
                try:
                    image = self.registry.get_image(image_id)
                    if image.status is not Status.PENDING_DELETE or image.upload_worker not in (
                        None, self.claims.worker):  # fmt: skip
                        return  # finished, or another process took it over
                    image = self._delete_data(image)
                except InUse:
                    LOG.warning("image %s: its data is in use; it stays pending_delete", image_id)
                    return
                except Exception as exc:
                    LOG.warning("image %s: deleting its data failed again: %s", image_id, exc)
                    continue
                if image.status is Status.DELETED:
                    notify(self.plugins, "abbild_image_deleted", image=image)
                    return
            LOG.error("image %s: its data is still not deleted; the next start tries again", image_id)

        try:
            self.jobs.submit(retry)
        except Exception as exc:
            LOG.warning("image %s: no room to retry deleting its data now (%s); the next start retries", image_id, exc)

    def _discard_everywhere(self, image_id: str) -> None:
        for store in self.stores:
            try:
                store.discard(image_id)
            except StoreError:
                LOG.exception("image %s: could not discard partial data in store %s", image_id, store.name)

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
        return self.registry.add_member(image_id, member_id, limit=quota if quota >= 0 else None)

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

        Services (Nova, Cinder) may register locations in any store; users only in a
        store whose driver says its locations point at data users control
        (``Capability.USER_LOCATIONS``: http among ours), never at other images' data.

        :raises abbild.errors.Invalid: no such store, or the URL is refused; users
            learn no more than that (the reason, which may say what a host name
            resolves to or whether a file exists, goes to the log).
        """
        service = self.policy.allows("service_api", viewer)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        stores = [s for s in self.stores if scheme in s.driver.schemes and (service or s.takes_user_locations)]
        if not stores:
            offered = sorted({sc for s in self.stores if s.takes_user_locations for sc in s.driver.schemes})
            raise Invalid(f"No store here may read {scheme or 'such'} URLs for you"
                          + (f"; use one of: {', '.join(offered)}" if offered else
                             " (no store here takes locations from users)"))  # fmt: skip
        refusal: StoreError | None = None
        for store in stores:  # the first store that accepts it: file:// URIs, say, belong to one datadir
            try:
                with self._location_errors(url, service):
                    store.driver.validate_location(url)
                return store
            except StoreError as exc:
                refusal = exc
        raise Invalid(f"Location refused: {refusal}") from refusal

    @contextlib.contextmanager
    def _location_errors(self, url: str, service: bool) -> Iterator[None]:
        """Store errors while checking or reading a location a caller gave: services
        get them as they are; users a refusal that tells nothing about the network or
        the store behind it (only that nothing is at their URL), and the operator's
        log the reason."""
        try:
            yield
        except StoreError as exc:
            if service or isinstance(exc, NotFound):
                raise
            LOG.warning("location %s refused: %s", url.split("?", 1)[0], exc)
            raise Invalid("Location refused: the image service cannot use that URL (the operator's log "
                          "has the reason under this request's x-openstack-request-id).") from exc  # fmt: skip

    def _checked_location_count(self, image: Image) -> None:
        check_count(image.id, "locations", "image_location_quota", len(image.locations), len(image.locations) + 1,
                    self.conf.image_location_quota)  # fmt: skip

    @staticmethod
    def _check_validation(image: Image, validation: dict | None) -> None:
        """*validation* (``checksum``, ``os_hash_algo``, ``os_hash_value``) against the
        hashes the image has.

        :raises abbild.errors.Conflict: they differ (Glance: 409).
        :raises abbild.errors.Invalid: a value the image lacks and would take is malformed.
        """
        for name, value in (validation or {}).items():
            current = getattr(image, name)
            if current is not None:
                if current != value:
                    raise Conflict(f"validation_data {name} {value!r} differs from the image's {current!r}")
                continue
            algo = "md5" if name == "checksum" else validation.get("os_hash_algo")
            if name != "os_hash_algo" and len(value) != HASH_LENGTHS.get(algo):
                raise Invalid(f"validation_data {name} must be {HASH_LENGTHS.get(algo)} hex digits for {algo}.")

    def _verify_copy(self, image: Image, store: Store, url: str, service: bool) -> None:
        """Read the data at *url* once and check that it is *image*'s: the same size and
        hashes. A new location of an active image is served under the image's
        ``Content-MD5``, so different bytes there would be a corrupted image.

        :raises abbild.errors.Conflict: the data differs.
        """
        with self._location_errors(url, service):
            try:
                stream = _read_through(ImageStream(store.get(url), hash_algo=image.os_hash_algo or
                                                   self.conf.hashing_algorithm, max_size=image.size,
                                                   declared_size=image.size))  # fmt: skip
            except (SizeMismatch, SizeLimitExceeded):
                raise Conflict(f"The data at {url} does not have the {image.size} bytes of image {image.id}") from None
        mismatch = _hashes_differing({"checksum": image.checksum, "os_hash_value": image.os_hash_value}, stream)
        if mismatch:
            raise Conflict(f"The data at {url} is not image {image.id}'s: its {' and '.join(mismatch)} differ")

    def add_location(self, image_id: str, url: str, metadata: dict, validation: dict | None,
                     viewer: Viewer) -> Image:
        """Register data that already lives at *url* (the legacy PATCH ``add
        /locations/-``): a queued image becomes active with the size the store
        reports and the hashes *validation* gives (``checksum``, ``os_hash_algo``,
        ``os_hash_value``); an active one gains a copy, once its data was read and
        found to be the same (409 if not, or if *validation* disagrees)."""
        image = self._authorized("set_image_location", image_id, viewer)
        service = self.policy.allows("service_api", viewer)
        store = self._location_store(url, viewer)
        with self._location_errors(url, service):
            size = store.size(url)
        self._check_validation(image, validation)
        verified = image.status is Status.ACTIVE
        if verified:
            if image.size not in (None, size):
                raise Conflict(f"The data at {url} has {size} bytes; image {image_id} has {image.size}")
            self._verify_copy(image, store, url, service)

        def change(image: Image) -> None:
            if image.status not in (Status.QUEUED, Status.ACTIVE):
                raise Conflict(f"Image {image_id} has status '{image.status}'; locations can be added to queued "
                               "or active images only")  # fmt: skip
            if image.status is Status.ACTIVE and not verified:
                raise Conflict(f"Image {image_id} became active meanwhile; add the location again to have it checked")
            if any(loc.uri == url for loc in image.locations):
                raise Conflict(f"Image {image_id} already has location {url}")
            self._checked_location_count(image)
            self._check_validation(image, validation)
            if image.size not in (None, size):
                raise Conflict(f"The data at {url} has {size} bytes; image {image_id} has {image.size}")
            image.locations.append(Location(store.name, url, size, "active", dict(metadata)))
            if image.status is Status.QUEUED:
                for name, value in (validation or {}).items():
                    setattr(image, name, value)
                image.size = size
                image.transition(Status.ACTIVE)

        image = self.registry.update_image(image_id, change, storage_limit=self._storage_limit())
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def replace_location_metadata(self, image_id: str, locations: list[tuple[str, dict]], viewer: Viewer) -> Image:
        """PATCH ``replace /locations`` as Glance takes it: the same URLs, in the same
        order, each with new metadata. A metadata ``store`` must name the store the
        location is in (clients send back what they were shown).

        :raises abbild.errors.Invalid: a location dropped, added, moved or changed.
        """
        self._authorized("set_image_location", image_id, viewer)

        def change(image: Image) -> None:
            urls = [loc.uri for loc in image.locations]
            if [url for url, _ in locations] != urls:
                raise Invalid("Replacing the locations may only change their metadata: send the same URLs in "
                              "the same order, and add or remove locations one at a time.")  # fmt: skip
            for location, (_, metadata) in zip(image.locations, locations):
                metadata = dict(metadata)
                if metadata.pop("store", location.store) != location.store:
                    raise Invalid(f"Location {location.uri} is in store {location.store!r}; its store cannot change.")
                location.metadata = metadata

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

    def import_location(self, image_id: str, url: str, validation: dict | None, viewer: Viewer) -> None:
        """Register *url* for a queued image the way API 2.17's ``POST .../locations``
        does: claim the image now, then, in a background job, read the data once to
        learn its size and hashes, check them against *validation*, and activate. A
        failure leaves the image queued.

        :raises abbild.errors.TooManyJobs: the caller's project has its limit of
            background jobs (429); :class:`~abbild.errors.Busy`: the pool is full (503).
        """
        image = self._authorized("add_image_location", image_id, viewer)
        service = self.policy.allows("service_api", viewer)
        store = self._location_store(url, viewer)
        validation = validation or {}
        self._check_validation(Image(id=image_id), validation)
        max_size, limit_name = self._upload_limit(image)
        claim = self.claims.take(image_id)

        def job() -> None:
            try:
                with self._location_errors(url, service):
                    stream = _read_through(ImageStream(store.get(url), hash_algo=validation.get("os_hash_algo") or
                                                       self.conf.hashing_algorithm, max_size=max_size,
                                                       limit_name=limit_name, on_progress=self._checker(claim),
                                                       progress_every=1))  # fmt: skip
                wrong = _hashes_differing(validation, stream)
                if wrong:
                    raise Invalid(f"The data at {url} does not match validation_data: its {' and '.join(wrong)} "
                                  f"differ")  # fmt: skip
                image = self._activate(claim, store, StoredObject(url, stream.size), stream)
            except Exception as exc:
                LOG.warning("image %s: importing %s failed: %s", image_id, url, exc)
                self.claims.release(claim, exc)
                return
            finally:
                self.claims.drop(claim)
            notify(self.plugins, "abbild_image_activated", image=image)

        try:
            self.jobs.submit(job, project=image.owner or viewer.project_id)
        except Exception as exc:
            self.claims.release(claim, exc)
            raise

    def _checker(self, claim: Claim) -> Callable[[int], None]:
        """Between chunks: stop when the claim was lost or the server is shutting down."""

        def check(_progress: int) -> None:
            claim.check()
            if self.jobs.stopping.is_set():
                raise Busy("This server is shutting down; the import stopped and can be started again.")

        return check

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
        the store acknowledged every byte, in the transaction that checks the owner's
        storage quota.
        """
        image = self._authorized("upload_image", image_id, viewer)
        store = self._upload_store(image, store_name)
        max_size, limit_name = self._upload_limit(image)
        if declared_size is not None and declared_size > max_size:
            raise SizeLimitExceeded(max_size, limit_name)
        claim = self.claims.take(image_id)
        try:
            stream = ImageStream(chunks, hash_algo=self.conf.hashing_algorithm, max_size=max_size,
                                 limit_name=limit_name, declared_size=declared_size, on_progress=claim.check,
                                 progress_every=1)  # fmt: skip
            try:
                stored = store.put(image_id, stream, declared_size)
            except BaseException as exc:
                self.claims.release(claim, exc)
                raise
            try:
                image = self._activate(claim, store, stored, stream)
            except BaseException as exc:
                # The metadata never pointed at this data: remove it, or it is orphaned.
                self._delete_quietly(store, stored.uri)
                if isinstance(exc, (ImageNotFound, InvalidTransition)):
                    raise Gone(image_id) from exc
                self.claims.release(claim, exc)
                raise
        finally:
            self.claims.drop(claim)
        location = image.locations[-1]
        notify(self.plugins, "abbild_image_uploaded", image=image, location=location)
        notify(self.plugins, "abbild_image_activated", image=image)
        return image

    def _storage_limit(self) -> int | None:
        return self.storage_quota or None

    def _upload_limit(self, image: Image) -> tuple[int, str]:
        """How many bytes new data for *image* may have, and which limit says so. The
        final word is the registry's, when the image is activated (uploads running
        side by side each see the room the others are filling).

        :raises abbild.errors.QuotaExceeded: the owner has no room left.
        """
        if not self.storage_quota or image.owner is None:
            return self.conf.image_size_cap, "image_size_cap"
        used = self.registry.usage(image.owner).size
        if used > self.storage_quota:
            raise QuotaExceeded(f"Project {image.owner} stores {used} bytes of image data; "
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

    def _activate(self, claim: Claim, store: Store, stored: StoredObject, stream: ImageStream) -> Image:
        """``saving -> active`` with the data's size, hashes and location, if the claim
        is still ours and the owner's storage quota has room for it.

        :raises abbild.errors.InvalidTransition: the image changed hands.
        :raises abbild.errors.QuotaExceeded:
        """

        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise InvalidTransition(image.id, image.status.value, Status.ACTIVE.value)
            self._checked_location_count(image)
            image.size = stream.size
            image.checksum = stream.checksum
            image.os_hash_algo = stream.hash_algo
            image.os_hash_value = stream.os_hash_value
            image.locations.append(Location(store.name, stored.uri, stored.size, "active", dict(stored.extra)))
            image.upload_worker = image.upload_lease = None
            image.transition(Status.ACTIVE)

        return self.registry.update_image(claim.image_id, change, storage_limit=self._storage_limit())

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

    def recover(self) -> list[str]:
        """Undo or finish the work a dead process left behind (:mod:`abbild.uploads`):
        images it left ``saving`` return to ``queued`` without whatever data their
        upload wrote; images it left ``pending_delete`` lose their data and are
        ``deleted``.

        Safe to run on every start of every worker: work whose process is alive on
        this host, or whose lease has not run out, is left alone.

        :returns: the ids of the images recovered.
        """
        recovered = []
        for image in self.claims.stale(Status.SAVING):

            def change(current: Image, claimed_by=image.upload_worker) -> None:
                if current.status is not Status.SAVING or current.upload_worker != claimed_by:
                    raise Conflict("the upload changed hands")
                current.transition(Status.QUEUED)
                current.upload_worker = current.upload_lease = None

            try:
                self.registry.update_image(image.id, change)
            except (Conflict, ImageNotFound):
                continue
            self._discard_everywhere(image.id)
            LOG.warning("image %s: upload by %s was interrupted; the image is queued again",
                        image.id, image.upload_worker)  # fmt: skip
            recovered.append(image.id)
        for image in self.claims.stale(Status.PENDING_DELETE):
            try:
                deleted = self._delete_data(image)
            except (InUse, InvalidTransition, ImageNotFound) as exc:
                LOG.warning("image %s: its delete cannot be finished now: %s", image.id, exc)
                continue
            if deleted.status is Status.DELETED:
                LOG.warning("image %s: an interrupted delete was finished", image.id)
                notify(self.plugins, "abbild_image_deleted", image=deleted)
                recovered.append(image.id)
        return recovered
