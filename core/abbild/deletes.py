"""Deleting an image and its data, so that no image is ever ``active`` without its
data and no data outlives its image for long.

An image with data leaves every caller's view first (``pending_delete``, in the
transaction that checks ``protected``). With ``delayed_delete`` that is all: the data
stays, the image keeps ``deleted_at``, and the scrubber (:mod:`abbild.scrubber`)
deletes the data once ``scrub_time`` has passed, unless ``abbild scrub --restore``
brings the image back first. Without it the image is claimed by this process, each
store deletes its data, then the image is ``deleted``. A store that refuses because
the data is in use (an RBD clone) brings the image back (409). Data a store could not
delete for another reason stays listed on the ``pending_delete`` image, unclaimed and
without ``deleted_at``: the scrubber's next pass deletes it, and so does the start-up
recovery of any API process (:meth:`abbild.scrubber.Scrubber.recover`), which also
finishes the deletes of processes that died half way.

``deleted_at`` of a ``pending_delete`` image says which of the two it is: set, its data
is whole and waits for ``scrub_time`` (it can be restored); ``None``, the deletion of
its data has begun (due at once, never restored: some of it may be gone).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from abbild.driver import Capability
from abbild.errors import (
    Conflict,
    Forbidden,
    Gone,
    InUse,
    NotFound,
    StoreError,
    UnsupportedOperation,
)
from abbild.image import Image, Location, Status, utcnow
from abbild.imports import STAGE_URI
from abbild.plugins import notify
from abbild.registry import Viewer
from abbild.uploads import Claim

if TYPE_CHECKING:
    from abbild.cache import ImageCache
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)


class Deletes:
    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.registry, self.stores, self.claims = service.registry, service.stores, service.claims
        self.plugins = service.plugins

    def delete(self, image_id: str, viewer: Viewer, cache: ImageCache | None = None) -> None:
        """Delete the image, and then its data (the module docstring says in which order).
        Its copy in *cache* (this node's image cache) goes as soon as the image is out of
        sight; other nodes never serve it again either (a cache hit follows the authorized
        read of the image); their entries go from the index now and their files with their
        cleaners.

        :raises abbild.errors.InUse: a store refuses: the image is back as it was.
        """
        self.service.authorized("delete_image", image_id, viewer)
        before: list[Image] = []

        def change(image: Image) -> None:
            if image.protected:
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
            before[:] = [image.copy()]
            if not image.locations:
                image.transition(Status.DELETED)
            elif self.service.conf.delayed_delete:
                image.transition(Status.PENDING_DELETE)
                image.deleted_at = utcnow()  # the scrubber counts scrub_time from here
            else:
                self.claims.mark(image, Status.PENDING_DELETE)

        image = self.registry.update_image(image_id, change)
        if cache is not None:
            cache.forget(image_id)
        was = before[0]
        if was.status is Status.SAVING and self.claims.is_stale(was):
            self.stores.discard_everywhere(image_id)  # its uploader died: nobody else removes what it wrote
        staged = was.properties.get(STAGE_URI)
        if staged and was.status is Status.UPLOADING and not was.upload_worker:  # staged, waiting for an import
            self.service.imports.staging.discard(image_id, staged)
        if image.status is Status.PENDING_DELETE and image.deleted_at is None:  # delayed ones wait for the scrubber
            claim = self.claims.hold(Claim(image_id, Status.PENDING_DELETE))
            try:
                image = self.delete_data(image, claim)  # what a store could not delete is left to the scrubber
            except InUse:
                self._undelete(claim, was.status)
                raise
            finally:
                self.claims.drop(claim)
        # Deleted for every caller now, whether its data is gone or waits for the scrubber:
        # the plugins hear of it once, now (Glance's image.delete comes with the API call).
        notify(self.plugins, "abbild_image_deleted", image=image)

    def delete_data(self, image: Image, claim: Claim) -> Image:
        """Remove the data of a ``pending_delete`` image that *claim* holds, then mark it
        ``deleted``; stops when the claim is lost (another process took the image over).

        :returns: the image as saved: ``deleted``, or still ``pending_delete`` when some
            data stays (a store failed), with those locations, unclaimed and without
            ``deleted_at``, for the scrubber.
        :raises abbild.errors.InUse: a store refuses because the data is in use; the
            locations removed so far are gone from the image, which stays claimed.
        :raises abbild.errors.Gone: the claim was lost.
        """
        left: list[Location] = []
        in_use: InUse | None = None
        for location in image.locations:
            claim.check()
            store = self.stores.for_location(location.store)
            if store is None:
                LOG.warning(
                    "image %s: location in unknown store %r forgotten, its data left in place", image.id, location.store
                )
                continue
            if Capability.DELETE not in type(store.driver).capabilities:
                continue  # a store that never deletes (http): the data is not ours
            LOG.info("image %s: deleting its data %s in store %s", image.id, location.uri, store.name)
            try:
                store.delete(location.uri)
            except NotFound:
                pass  # gone already
            except InUse as exc:
                in_use = in_use or exc
                left.append(location)
            except (StoreError, UnsupportedOperation) as exc:  # also: a store read-only since its start
                LOG.warning(
                    "image %s: could not delete its data in store %s (%s); the scrubber retries",
                    image.id,
                    store.name,
                    exc,
                )
                left.append(location)

        def change(current: Image) -> None:
            if not self.claims.ours(current, claim):
                raise Gone(image.id)
            current.locations = [loc for loc in current.locations if loc in left]
            if not current.locations:
                current.transition(Status.DELETED)
            if in_use is None or current.status is Status.DELETED:
                current.upload_worker = current.upload_lease = None

        saved = self.registry.update_image(image.id, change)
        if in_use is not None and saved.status is not Status.DELETED:
            raise in_use
        return saved

    def _undelete(self, claim: Claim, status: Status) -> None:
        """Bring the ``pending_delete`` image of *claim* back to *status* (its data is in use)."""

        def change(image: Image) -> None:
            if self.claims.ours(image, claim):
                image.transition(status)
                image.upload_worker = image.upload_lease = None

        self.registry.update_image(claim.image_id, change)

    def delete_from_store(self, image_id: str, store_name: str, viewer: Viewer) -> None:
        """Remove the image's data from one store, keeping its other locations."""
        self.service.authorized("get_image_location", image_id, viewer)
        image = self.service.authorized("delete_image_location", image_id, viewer)
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

        image = self.registry.update_image(image_id, change)
        for loc in here:
            store.delete_orphan(loc.uri)
        notify(self.plugins, "abbild_image_updated", image=image)
