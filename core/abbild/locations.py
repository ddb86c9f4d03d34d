"""Image data that already lives somewhere: locations registered by URL (the legacy
PATCH ``/locations`` operations and API 2.17's ``POST .../locations``), checked,
hashed and guarded so that a location can neither reach what its caller may not
(another image's data, the operator's network) nor change an active image's bytes."""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from abbild.driver import StoredObject
from abbild.errors import Conflict, Forbidden, Invalid, NotFound, SizeLimitExceeded, SizeMismatch, StoreError
from abbild.image import HASH_LENGTHS, Image, Location, Status
from abbild.plugins import notify
from abbild.quotas import check_location_added
from abbild.registry import Viewer
from abbild.stores import Store
from abbild.streams import ImageStream

if TYPE_CHECKING:
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)


def _read_through(stream: ImageStream) -> ImageStream:
    """Read *stream* to its end (data read only to learn its size and hashes)."""
    for _ in stream:
        pass
    return stream


def _hashes_differing(expected: dict, stream: ImageStream) -> list[str]:
    """Which of ``checksum`` and ``os_hash_value`` *expected* gives and *stream*'s data
    does not have."""
    return [name for name in ("checksum", "os_hash_value") if expected.get(name) not in (None, getattr(stream, name))]


class Locations:
    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.registry, self.stores, self.claims = service.registry, service.stores, service.claims
        self.plugins, self.jobs, self.conf = service.plugins, service.jobs, service.conf

    def add(self, image_id: str, url: str, metadata: dict, validation: dict | None, viewer: Viewer) -> Image:
        """Register data that already lives at *url* (the legacy PATCH ``add
        /locations/-``): a queued image becomes active with the size the store
        reports and the hashes *validation* gives (``checksum``, ``os_hash_algo``,
        ``os_hash_value``); an active one gains a copy, once its data was read and
        found to be the same (409 if not, or if *validation* disagrees)."""
        image = self.service.authorized("set_image_location", image_id, viewer)
        service = self.service.policy.allows("service_api", viewer)
        store = self.store_for(url, viewer)
        with self._errors(url, service):
            size = store.size(url)
        self._check_validation(image, validation)
        verified = image.status is Status.ACTIVE
        if verified:
            if image.size not in (None, size):
                raise Conflict(f"The data at {url} has {size} bytes; image {image_id} has {image.size}")
            self._verify_copy(image, store, url, service)

        def change(image: Image) -> None:
            if image.status not in (Status.QUEUED, Status.ACTIVE):
                raise Conflict(
                    f"Image {image_id} has status '{image.status}'; locations can be added to queued "
                    "or active images only"
                )
            if image.status is Status.ACTIVE and not verified:
                raise Conflict(f"Image {image_id} became active meanwhile; add the location again to have it checked")
            if any(loc.uri == url for loc in image.locations):
                raise Conflict(f"Image {image_id} already has location {url}")
            check_location_added(image, self.conf.image_location_quota)
            self._check_validation(image, validation)
            if image.size not in (None, size):
                raise Conflict(f"The data at {url} has {size} bytes; image {image_id} has {image.size}")
            image.locations.append(Location(store.name, url, size, "active", dict(metadata)))
            if image.status is Status.QUEUED:
                for name, value in (validation or {}).items():
                    setattr(image, name, value)
                image.size = size
                image.transition(Status.ACTIVE)

        image = self.registry.update_image(image_id, change, storage_limit=self.service.uploads.storage_limit())
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def import_(self, image_id: str, url: str, validation: dict | None, viewer: Viewer) -> None:
        """Register *url* for a queued image the way API 2.17's ``POST .../locations``
        does: claim the image now, then, in a background job, read the data once to
        learn its size and hashes, check them against *validation*, and activate. A
        failure leaves the image queued.

        :raises abbild.errors.TooManyJobs: the caller's project has its limit of
            background jobs (429); :class:`~abbild.errors.Busy`: the pool is full (503).
        """
        image = self.service.authorized("add_image_location", image_id, viewer)
        service = self.service.policy.allows("service_api", viewer)
        store = self.store_for(url, viewer)
        validation = validation or {}
        self._check_validation(Image(id=image_id), validation)
        max_size, limit_name = self.service.uploads.limit(image)
        claim = self.claims.take(image_id)

        def job() -> None:
            try:
                with self._errors(url, service):
                    stream = _read_through(
                        ImageStream(
                            store.get(url),
                            hash_algo=validation.get("os_hash_algo") or self.conf.hashing_algorithm,
                            max_size=max_size,
                            limit_name=limit_name,
                            on_progress=self.service.uploads.checker(claim),
                            progress_every=1,
                        )
                    )
                wrong = _hashes_differing(validation, stream)
                if wrong:
                    raise Invalid(f"The data at {url} does not match validation_data: its {' and '.join(wrong)} differ")
                image = self.service.uploads.activate(claim, store, StoredObject(url, stream.size), stream)
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

    def replace_metadata(self, image_id: str, locations: list[tuple[str, dict]], viewer: Viewer) -> Image:
        """PATCH ``replace /locations`` as Glance takes it: the same URLs, in the same
        order, each with new metadata. A metadata ``store`` must name the store the
        location is in (clients send back what they were shown).

        :raises abbild.errors.Invalid: a location dropped, added, moved or changed.
        """
        self.service.authorized("set_image_location", image_id, viewer)

        def change(image: Image) -> None:
            urls = [loc.uri for loc in image.locations]
            if [url for url, _ in locations] != urls:
                raise Invalid(
                    "Replacing the locations may only change their metadata: send the same URLs in "
                    "the same order, and add or remove locations one at a time."
                )
            for location, (_, metadata) in zip(image.locations, locations):
                metadata = dict(metadata)
                if metadata.pop("store", location.store) != location.store:
                    raise Invalid(f"Location {location.uri} is in store {location.store!r}; its store cannot change.")
                location.metadata = metadata

        image = self.registry.update_image(image_id, change)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def remove(self, image_id: str, index: int, viewer: Viewer) -> Image:
        """Forget one location (and delete its data, where the store can)."""
        self.service.authorized("delete_image_location", image_id, viewer)
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
            store.delete_orphan(removed[0].uri)
        notify(self.plugins, "abbild_image_updated", image=image)
        return image

    def list(self, image_id: str, viewer: Viewer) -> list[Location]:
        image = self.service.authorized("fetch_image_location", image_id, viewer)
        return [loc for loc in image.locations if loc.status == "active"]

    def store_for(self, url: str, viewer: Viewer) -> Store:
        """The store that will read *url*, after its driver accepted it.

        Services (Nova, Cinder) may register locations in any store; users only in a
        store whose driver says its locations point at data users control
        (``Capability.USER_LOCATIONS``: http among ours), never at other images' data.

        :raises abbild.errors.Invalid: no such store, or the URL is refused; users
            learn no more than that (the reason, which may say what a host name
            resolves to or whether a file exists, goes to the log).
        """
        service = self.service.policy.allows("service_api", viewer)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        stores = [s for s in self.stores if scheme in s.driver.schemes and (service or s.takes_user_locations)]
        if not stores:
            offered = sorted({sc for s in self.stores if s.takes_user_locations for sc in s.driver.schemes})
            raise Invalid(
                f"No store here may read {scheme or 'such'} URLs for you"
                + (f"; use one of: {', '.join(offered)}" if offered else " (no store here takes locations from users)")
            )
        refusal: StoreError | None = None
        for store in stores:  # the first store that accepts it: file:// URIs, say, belong to one datadir
            try:
                with self._errors(url, service):
                    store.driver.validate_location(url)
                return store
            except StoreError as exc:
                refusal = exc
        raise Invalid(f"Location refused: {refusal}") from refusal

    @contextlib.contextmanager
    def _errors(self, url: str, service: bool) -> Iterator[None]:
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
            raise Invalid(
                "Location refused: the image service cannot use that URL (the operator's log "
                "has the reason under this request's x-openstack-request-id)."
            ) from exc

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
        with self._errors(url, service):
            try:
                stream = _read_through(
                    ImageStream(
                        store.get(url),
                        hash_algo=image.os_hash_algo or self.conf.hashing_algorithm,
                        max_size=image.size,
                        declared_size=image.size,
                    )
                )
            except (SizeMismatch, SizeLimitExceeded):
                raise Conflict(f"The data at {url} does not have the {image.size} bytes of image {image.id}") from None
        mismatch = _hashes_differing({"checksum": image.checksum, "os_hash_value": image.os_hash_value}, stream)
        if mismatch:
            raise Conflict(f"The data at {url} is not image {image.id}'s: its {' and '.join(mismatch)} differ")
