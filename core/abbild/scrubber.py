"""The scrubber: deletes the data of deleted images that is still in the stores, and
brings a delayed delete back on request (:meth:`Scrubber.restore`).

It works on ``pending_delete`` images (:mod:`abbild.deletes` says how they get
there). One pass (:meth:`Scrubber.run`) deletes the data of every such image that is
due: at once when the deletion of its data has begun (``deleted_at`` is ``None``: an
immediate delete a store failed, or a process that died), else once ``scrub_time``
has passed since ``deleted_at`` (``delayed_delete``). Then the image is ``deleted``.

Several scrubbers (cron on several hosts, the API processes' periodic task) may run
at once: each image is claimed with a compare-and-swap in the registry before its data
is touched, as an upload claims its image (:class:`abbild.uploads.Claims`), so no two
delete the same data, and a restore refuses a claimed image while a scrubber refuses a
restored one. The claim also clears ``deleted_at``: from then on the image is due at
once and can no longer be restored, since some of its data may be gone. Images are
claimed a batch (``scrub_batch_size``) at a time, so scrubbers running side by side
share a backlog instead of contending for every image.

A store that fails (an outage) leaves its data listed on the image, which stays
``pending_delete``, unclaimed: nothing is lost, the next pass tries again. This
scrubber waits longer after each failure of the same image (``scrub_interval``,
doubling up to an hour); the wait lives only in its memory, so a restarted scrubber
simply tries sooner. Data a store says is in use (an RBD clone) stays too, with a
warning, and is retried the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from abbild.errors import Conflict, Gone, ImageNotFound, InUse
from abbild.image import Image, Status, utcnow
from abbild.plugins import notify
from abbild.uploads import Claim, worker_alive

if TYPE_CHECKING:
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)

#: The lease a periodic scrubber takes for a pass (:func:`abbild.periodic.lease`).
LEASE = "scrub"
#: The longest wait before an image whose data could not be deleted is tried again.
MAX_BACKOFF = 3600.0
#: What a pass counts (:meth:`Scrubber.run`).
COUNTS = ("deleted", "failed", "in_use", "waiting", "held", "backing_off")


class _NotTaken(Conflict):
    """The image is not (or no longer) the scrubber's to take."""


@dataclasses.dataclass
class _Retry:
    failures: int = 0
    due: float = 0.0  # on the scrubber's clock


class Scrubber:
    """The scrubber of an :class:`~abbild.service.ImageService` (its registry, stores,
    claims and plugins), configured by ``scrub_time``, ``scrub_batch_size`` and
    ``scrub_interval``. Keep the instance between passes: it remembers the failures.

    :param clock: seconds on a monotonic clock, for the waits after failures.
    """

    def __init__(self, service: ImageService, clock: Callable[[], float] = time.monotonic) -> None:
        conf = service.conf
        self.service = service
        self.registry, self.claims, self.plugins = service.registry, service.claims, service.plugins
        self.scrub_time = datetime.timedelta(seconds=conf.scrub_time)
        self.batch_size = conf.scrub_batch_size
        self.first_wait = float(max(conf.scrub_interval, 1))
        self.clock = clock
        self._retries: dict[str, _Retry] = {}

    def run(self, stopping: threading.Event | None = None) -> dict[str, int]:
        """One pass: delete the data of every due ``pending_delete`` image; returns soon
        after *stopping* is set (after the image at hand; the batch's other claims are
        given back).

        :returns: images ``deleted``; ``failed`` (some data stays, tried again later) and
            ``in_use``; not taken: ``waiting`` for ``scrub_time``, ``held`` by another
            process right now, ``backing_off`` after a failure.
        """
        counts, _ = self._pass(stopping or threading.Event(), delayed_too=True)
        LOG.info("scrub: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        return counts

    def recover(self) -> list[str]:
        """The start-up recovery of an API process: finish the deletes whose data is
        going already (``deleted_at`` is ``None``), those of processes that died half
        way and those a failing store left; delayed deletes wait for the scrubber.

        :returns: the ids of the images now deleted.
        """
        return self._pass(threading.Event(), delayed_too=False)[1]

    def restore(self, image_id: str) -> Image:
        """Bring a delayed delete back: ``pending_delete -> active``, with every location.

        :raises abbild.errors.Conflict: the image is not ``pending_delete``, a scrubber
            holds it right now, or the deletion of its data has begun.
        :raises abbild.errors.ImageNotFound: no such image.
        """
        gone = Conflict(f"Image {image_id} is deleted and its data is gone: it cannot be restored.")
        if self.registry.get_image(image_id, include_deleted=True).status is Status.DELETED:
            raise gone

        def change(image: Image) -> None:
            if image.status is not Status.PENDING_DELETE:
                raise Conflict(
                    f"Image {image_id} has status '{image.status}', not 'pending_delete': only a deleted "
                    f"image whose data the scrubber has not deleted yet can be restored."
                )
            if not self._free(image):
                raise Conflict(
                    f"Image {image_id} cannot be restored: {image.upload_worker} is deleting its data right now."
                )
            if image.deleted_at is None:
                raise Conflict(
                    f"Image {image_id} cannot be restored: the deletion of its data has begun and some "
                    f"of it may be gone, so it could never be active again; the scrubber finishes the delete."
                )
            image.transition(Status.ACTIVE)
            image.deleted_at = None
            image.upload_worker = image.upload_lease = None

        try:
            image = self.registry.update_image(image_id, change)
        except ImageNotFound:
            if self.registry.get_image(image_id, include_deleted=True).status is Status.DELETED:
                raise gone from None  # a scrubber finished it just now
            raise
        LOG.warning("image %s: restored, active again with its %d location(s)", image_id, len(image.locations))
        notify(self.plugins, "abbild_image_activated", image=image)
        return image

    # -- a pass ---------------------------------------------------------------------------

    def _pass(self, stopping: threading.Event, delayed_too: bool) -> tuple[dict[str, int], list[str]]:
        counts = dict.fromkeys(COUNTS, 0)
        deleted: list[str] = []
        due = []
        for image in self.registry.images_in_status(Status.PENDING_DELETE.value):
            if not self._free(image):
                counts["held"] += 1
            elif not self._due(image, delayed_too):
                counts["waiting"] += 1
            elif self._retries.get(image.id, _Retry()).due > self.clock():
                counts["backing_off"] += 1
            else:
                due.append(image)
        # Deletes under way first, then the oldest delayed ones.
        due.sort(key=lambda image: (image.deleted_at is not None, image.deleted_at or utcnow(), image.id))
        for start in range(0, len(due), self.batch_size):
            if stopping.is_set():
                break
            taken = []
            for image in due[start : start + self.batch_size]:
                claimed = self._claim(image, delayed_too)
                if claimed is None:
                    counts["held"] += 1
                else:
                    taken.append(claimed)
            for image, claim in taken:
                if stopping.is_set():
                    self._release(claim)
                    continue
                outcome = self._scrub(image, claim)
                counts[outcome] += 1
                if outcome == "deleted":
                    deleted.append(image.id)
        return counts, deleted

    def _free(self, image: Image) -> bool:
        """Whether nobody deletes *image*'s data right now: it is unclaimed, its claim's
        lease ran out (a holder renews it while it works), or its holder died on this host."""
        if image.upload_worker is None:
            return True
        if image.upload_lease is None or image.upload_lease <= utcnow():
            return True
        return worker_alive(image.upload_worker) is False

    def _due(self, image: Image, delayed_too: bool) -> bool:
        if image.deleted_at is None:
            return True
        return delayed_too and image.deleted_at + self.scrub_time <= utcnow()

    def _claim(self, image: Image, delayed_too: bool) -> tuple[Image, Claim] | None:
        """Take *image* for this process if it is still free and due (the image as
        claimed, and the claim, held), else ``None``."""

        def change(current: Image) -> None:
            if current.status is not Status.PENDING_DELETE or not self._free(current):
                raise _NotTaken(image.id)
            if not self._due(current, delayed_too):  # restored and deleted again since the listing
                raise _NotTaken(image.id)
            current.upload_worker = self.claims.worker
            current.upload_lease = self.claims.lease_expiry()
            current.deleted_at = None  # its data starts going: no restore from here on

        try:
            claimed = self.registry.update_image(image.id, change)
        except (_NotTaken, ImageNotFound):
            return None
        return claimed, self.claims.hold(Claim(image.id, Status.PENDING_DELETE))

    def _scrub(self, image: Image, claim: Claim) -> str:
        """Delete the claimed image's data; what came of it (a key of :data:`COUNTS`)."""
        try:
            saved = self.service.deletes.delete_data(image, claim)
        except InUse as exc:
            LOG.warning("image %s: %s; it stays pending_delete and is tried again later", image.id, exc)
            self._release(claim)
            self._failed(image.id)
            return "in_use"
        except Gone:
            LOG.warning("image %s: another process took it over while this scrubber deleted its data", image.id)
            return "held"
        except Exception as exc:
            LOG.warning("image %s: deleting its data failed: %s", image.id, exc)
            self._release(claim)
            self._failed(image.id)
            return "failed"
        finally:
            self.claims.drop(claim)
        if saved.status is not Status.DELETED:
            self._failed(image.id)
            return "failed"
        self._retries.pop(image.id, None)
        return "deleted"  # the plugins heard of the delete when it was asked for (abbild.deletes)

    def _failed(self, image_id: str) -> None:
        retry = self._retries.setdefault(image_id, _Retry())
        retry.failures += 1
        wait = min(self.first_wait * 2 ** (retry.failures - 1), MAX_BACKOFF)
        retry.due = self.clock() + wait
        LOG.warning(
            "image %s: its data is not deleted yet (%d failure(s) in a row); this scrubber tries again in %.0f s",
            image_id,
            retry.failures,
            wait,
        )

    def _release(self, claim: Claim) -> None:
        """Give the image back, ``pending_delete`` and due at once, if still ours; a
        release that fails leaves it to the claim's lease to run out."""
        self.claims.drop(claim)

        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise _NotTaken(claim.image_id)
            image.upload_worker = image.upload_lease = None

        try:
            self.registry.update_image(claim.image_id, change)
        except (_NotTaken, ImageNotFound):
            pass
        except Exception as exc:
            LOG.warning(
                "image %s: could not give back its claim (%s); it is free once its lease ran out", claim.image_id, exc
            )
