"""Deleting an image and its data, so that no image is ever ``active`` without its
data and no data outlives its image for long.

An image with data leaves every caller's view first (``pending_delete``, claimed by
this process, in the transaction that checks ``protected``); then each store deletes
its data; then the image is ``deleted``. A store that refuses because the data is in
use (an RBD clone) brings the image back (409). Data a store could not delete for
another reason stays listed on the ``pending_delete`` image: a background job retries
it, and so does the next start of any API process (:meth:`Deletes.recover`), which also
finishes the deletes of processes that died half way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from abbild.errors import (
    Conflict,
    Forbidden,
    ImageNotFound,
    InUse,
    InvalidTransition,
    NotFound,
    StoreError,
    UnsupportedOperation,
)
from abbild.image import Image, Location, Status
from abbild.plugins import notify
from abbild.registry import Viewer

if TYPE_CHECKING:
    from abbild.cache import ImageCache
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)


class Deletes:
    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.registry, self.stores, self.claims = service.registry, service.stores, service.claims
        self.plugins, self.jobs = service.plugins, service.jobs

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
            if image.locations:
                self.claims.mark(image, Status.PENDING_DELETE)
            else:
                image.transition(Status.DELETED)

        image = self.registry.update_image(image_id, change)
        if cache is not None:
            cache.forget(image_id)
        was = before[0]
        if was.status is Status.SAVING and self.claims.is_stale(was):
            self.stores.discard_everywhere(image_id)  # its uploader died: nobody else removes what it wrote
        if image.status is Status.PENDING_DELETE:
            try:
                image = self._delete_data(image)
            except InUse:
                self._undelete(image_id, was.status)
                raise
            except Exception:
                self._retry_later(image_id)  # the image is out of sight; its data goes later
                raise
            if image.status is not Status.DELETED:
                self._retry_later(image_id)
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
                LOG.warning(
                    "image %s: location in unknown store %r forgotten, its data left in place", image.id, location.store
                )
                continue
            try:
                store.delete(location.uri)
            except (NotFound, UnsupportedOperation):
                pass  # gone already, or a read-only store (http) whose data is not ours
            except InUse as exc:
                in_use = in_use or exc
                left.append(location)
            except StoreError as exc:
                LOG.warning(
                    "image %s: could not delete its data in store %s (%s); will retry", image.id, store.name, exc
                )
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

    def _retry_later(self, image_id: str) -> None:
        """Try again to delete the data of a ``pending_delete`` image, backing off for
        about eight minutes; after that the next start of any API process tries."""

        def retry() -> None:
            for delay in (2.0**n for n in range(9)):
                if self.jobs.closing.wait(delay):
                    return  # shutting down: the next start retries
                try:
                    image = self.registry.get_image(image_id)
                    if image.status is not Status.PENDING_DELETE or image.upload_worker not in (
                        None,
                        self.claims.worker,
                    ):
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

    def recover(self) -> list[str]:
        """Finish the deletes a dead process left ``pending_delete``.

        :returns: the ids of the images now deleted.
        """
        recovered = []
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
