"""An upload end to end (:class:`Uploads`): who is writing an image's data, how it is
streamed into a store and activated, and what happens when that writer fails.

An upload (``PUT .../file``), a location import (``POST .../locations``) and a delete
each work on an image's data outside the registry's transactions, for as long as the
data takes. While they do, the image carries a *claim*: ``upload_worker``, the
identity of the process doing the work (``host:pid:start-time``), and
``upload_lease``, until when the claim holds if nobody renews it.

1. :meth:`Claims.take` moves the image (``queued -> saving`` for an upload) with a
   compare-and-swap, so a second writer gets 409 instead of a share of the data.
2. While the work runs, the lease keeper renews every claim this process holds every
   third of ``upload_lease_seconds``, whatever pace the client sends at, and marks a
   claim lost when the image changed hands (deleted, recovered by another host): the
   work checks :meth:`Claim.check` between chunks and stops with
   :class:`~abbild.errors.Gone`.
3. The work ends by saving the image (:meth:`Uploads.activate`: ``saving -> active``,
   with its size, hashes and location, in the transaction that checks the owner's
   storage quota) or by :meth:`Claims.release` (back to ``queued``; when the registry is
   unreachable, retried in the background for as long as a lease would last).
4. :meth:`Claims.stale` finds the claims of processes that died: on this host, a
   process that no longer runs; elsewhere, a lease that ran out. Start-up recovery
   (:meth:`Uploads.recover`, and :mod:`abbild.deletes` for deletes) undoes or finishes
   their work.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from abbild.driver import StoredObject
from abbild.errors import (
    Busy,
    Conflict,
    Gone,
    ImageNotFound,
    InvalidTransition,
    QuotaExceeded,
    RegistryUnavailable,
    SizeLimitExceeded,
    UnsupportedOperation,
)
from abbild.image import Image, Location, Status, utcnow
from abbild.plugins import notify
from abbild.quotas import check_location_added
from abbild.registry import Registry, Viewer
from abbild.stores import Store
from abbild.streams import DataCheck, ImageStream

if TYPE_CHECKING:
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)


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


@dataclasses.dataclass
class Claim:
    """This process's hold on one image's data."""

    image_id: str
    status: Status  # the status the image keeps while the claim holds
    lost: bool = False

    def check(self, _progress: int = 0) -> None:
        """Stop the work if the image changed hands.

        :raises abbild.errors.Gone:
        """
        if self.lost:
            raise Gone(self.image_id)


class Claims:
    """The claims of this process, and the thread that keeps their leases."""

    def __init__(self, registry: Registry, lease_seconds: int, plugins, jobs) -> None:
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.plugins = plugins
        self.jobs = jobs
        self.worker = worker_identity()
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def lease_expiry(self) -> datetime.datetime:
        return utcnow() + datetime.timedelta(seconds=self.lease_seconds)

    def mark(self, image: Image, status: Status) -> None:
        """Move *image* to *status* and claim it for this process (inside a change)."""
        image.transition(status)
        image.upload_worker = self.worker
        image.upload_lease = self.lease_expiry()

    def ours(self, image: Image, claim: Claim) -> bool:
        return image.status is claim.status and image.upload_worker == self.worker

    def take(self, image_id: str) -> Claim:
        """Claim a ``queued`` image for an upload: ``queued -> saving``.

        :raises abbild.errors.Conflict: it is not queued (another upload has it, or
            it has data already).
        """

        def change(image: Image) -> None:
            if image.status is not Status.QUEUED:
                raise Conflict(
                    f"Image {image_id} has status '{image.status}'; data can only be uploaded to a 'queued' image"
                )
            self.mark(image, Status.SAVING)

        self.registry.update_image(image_id, change)
        return self.hold(Claim(image_id, Status.SAVING))

    def hold(self, claim: Claim) -> Claim:
        """Keep renewing *claim*'s lease until :meth:`drop`."""
        with self._lock:
            self._held[claim.image_id] = claim
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(target=self._keep_leases, name="abbild-leases", daemon=True)
                self._keeper.start()
        return claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            if self._held.get(claim.image_id) is claim:
                del self._held[claim.image_id]

    def _keep_leases(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            time.sleep(interval)
            with self._lock:
                claims = list(self._held.values())
                if not claims:
                    self._keeper = None
                    return
            for claim in claims:
                self.renew(claim)

    def renew(self, claim: Claim) -> None:
        """Push the claim's lease out; mark it lost if the image changed hands."""

        def change(image: Image) -> None:
            if not self.ours(image, claim):
                raise Gone(claim.image_id)
            image.upload_lease = self.lease_expiry()

        try:
            self.registry.update_image(claim.image_id, change)
        except (Gone, ImageNotFound):
            LOG.warning("image %s changed hands while this process worked on its data", claim.image_id)
            claim.lost = True
        except Exception as exc:  # the next round tries again; the lease has room for two misses
            LOG.warning("image %s: could not renew the lease of its claim: %s", claim.image_id, exc)

    def release(self, claim: Claim, error: BaseException) -> None:
        """Undo an upload's claim after it failed: back to ``queued``, if still ours.

        When the registry cannot be reached (often the very reason the upload failed),
        keep trying in the background for as long as the claim's lease would last, so
        the image does not stay ``saving`` until recovery.
        """
        self.drop(claim)
        if self._release(claim, error):
            return
        LOG.warning("image %s: registry unavailable; will retry returning it to 'queued'", claim.image_id)

        def retry() -> None:
            deadline = time.monotonic() + self.lease_seconds
            delay = 1.0
            while time.monotonic() < deadline and not self.jobs.closing.wait(delay):
                delay = min(delay * 2, 30.0)
                if self._release(claim, error):
                    return
            LOG.error(
                "image %s: still 'saving'; recovery returns it to 'queued' once its lease ran out", claim.image_id
            )

        try:
            self.jobs.submit(retry)
        except Exception as exc:
            LOG.error("image %s: cannot retry the release (%s); recovery will", claim.image_id, exc)

    def _release(self, claim: Claim, error: BaseException) -> bool:
        """:returns: False if the registry could not be reached."""

        def change(image: Image) -> None:
            if self.ours(image, claim):
                image.transition(Status.QUEUED)
                image.upload_worker = image.upload_lease = None

        try:
            image = self.registry.update_image(claim.image_id, change)
        except ImageNotFound:
            return True
        except RegistryUnavailable:
            return False
        except Exception:
            LOG.exception("image %s: could not return it to 'queued' after a failed upload", claim.image_id)
            return True
        notify(self.plugins, "abbild_image_upload_failed", image=image, error=error)
        return True

    def is_stale(self, image: Image) -> bool:
        """Whether nobody works on *image* any more: unclaimed, or claimed by a process
        that died (on this host) or whose lease ran out (elsewhere)."""
        if image.upload_worker == self.worker:
            return False
        alive = worker_alive(image.upload_worker or "")
        if alive is None and image.upload_worker and image.upload_lease:
            return image.upload_lease <= utcnow()
        return not alive

    def stale(self, status: Status) -> list[Image]:
        """The images in *status* that nobody works on any more (:meth:`is_stale`)."""
        return [image for image in self.registry.images_in_status(status.value) if self.is_stale(image)]


class Uploads:
    """An upload from its claim to its end (the module docstring)."""

    def __init__(self, service: ImageService) -> None:
        self.service = service
        self.registry, self.stores, self.claims = service.registry, service.stores, service.claims
        self.plugins, self.jobs, self.conf = service.plugins, service.jobs, service.conf

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
        image = self.service.authorized("upload_image", image_id, viewer)
        store = self._store_for(image, store_name)
        max_size, limit_name = self.limit(image)
        if declared_size is not None and declared_size > max_size:
            raise SizeLimitExceeded(max_size, limit_name)
        # Before the claim: a check that refuses the image outright (a signature that
        # cannot be verified) leaves it queued, untouched.
        checks = self.checks(image, "upload")
        claim = self.claims.take(image_id)
        notify(
            self.plugins, "abbild_image_preparing", image=dataclasses.replace(image, status=Status.SAVING), store=store
        )
        try:
            stream = ImageStream(
                chunks,
                hash_algo=self.conf.hashing_algorithm,
                max_size=max_size,
                limit_name=limit_name,
                declared_size=declared_size,
                on_progress=claim.check,
                progress_every=1,
                checks=checks,
            )
            try:
                stored = store.put(image_id, stream, declared_size)
            except BaseException as exc:
                self.claims.release(claim, exc)
                raise
            try:
                image = self.activate(claim, store, stored, stream)
            except BaseException as exc:
                # The metadata never pointed at this data: remove it, or it is orphaned.
                store.delete_orphan(stored.uri)
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

    def activate(self, claim: Claim, store: Store, stored: StoredObject, stream: ImageStream) -> Image:
        """``saving -> active`` with the data's size, hashes and location, if the claim
        is still ours and the owner's storage quota has room for it.

        :raises abbild.errors.InvalidTransition: the image changed hands.
        :raises abbild.errors.QuotaExceeded:
        """

        def change(image: Image) -> None:
            if not self.claims.ours(image, claim):
                raise InvalidTransition(image.id, image.status.value, Status.ACTIVE.value)
            check_location_added(image, self.conf.image_location_quota)
            image.size = stream.size
            image.checksum = stream.checksum
            image.os_hash_algo = stream.hash_algo
            image.os_hash_value = stream.os_hash_value
            image.virtual_size = stream.findings.get("virtual_size", image.virtual_size)
            image.locations.append(Location(store.name, stored.uri, stored.size, "active", dict(stored.extra)))
            image.upload_worker = image.upload_lease = None
            image.transition(Status.ACTIVE)

        return self.registry.update_image(claim.image_id, change, storage_limit=self.storage_limit())

    def checks(self, image: Image, purpose: str) -> list[DataCheck]:
        """The plugins' checks of new data for *image* (the ``abbild_data_checks`` hook);
        *purpose*: ``upload``, ``stage`` or ``import``."""
        return [c for c in self.plugins.hook.abbild_data_checks(image=image, purpose=purpose) if c is not None]

    def limit(self, image: Image) -> tuple[int, str]:
        """How many bytes new data for *image* may have, and which limit says so. The
        final word is the registry's, when the image is activated (uploads running
        side by side each see the room the others are filling).

        :raises abbild.errors.QuotaExceeded: the owner has no room left.
        """
        if not self.service.storage_quota or image.owner is None:
            return self.conf.image_size_cap, "image_size_cap"
        used = self.registry.usage(image.owner).size
        if used > self.service.storage_quota:
            raise QuotaExceeded(
                f"Project {image.owner} stores {used} bytes of image data; "
                f"user_storage_quota allows {self.service.storage_quota}."
            )
        room = self.service.storage_quota - used
        if room < self.conf.image_size_cap:
            return room, f"room left under user_storage_quota ({self.service.storage_quota} bytes, {used} used)"
        return self.conf.image_size_cap, "image_size_cap"

    def storage_limit(self) -> int | None:
        return self.service.storage_quota or None

    def _store_for(self, image: Image, store_name: str | None) -> Store:
        if store_name is None:
            writable = {s.name: s for s in self.stores if not s.read_only}
            store_name = self.plugins.hook.abbild_select_store(image=image, stores=writable)
            if store_name is None:
                raise UnsupportedOperation(self.stores.default.name, "writing (no writable store)")
        store = self.stores[store_name]
        if store.read_only:
            raise UnsupportedOperation(store.name, "writing")
        return store

    def checker(self, claim: Claim) -> Callable[[int], None]:
        """Between chunks: stop when the claim was lost or the server is shutting down."""

        def check(_progress: int) -> None:
            claim.check()
            if self.jobs.stopping.is_set():
                raise Busy("This server is shutting down; the import stopped and can be started again.")

        return check

    def recover(self) -> list[str]:
        """Return the images a dead process left ``saving`` to ``queued``, without
        whatever data their upload wrote.

        :returns: the ids of the images recovered.
        """
        return [image.id for image in self.claims.stale(Status.SAVING) if self.requeue(image)]

    def requeue(self, image: Image) -> bool:
        """Return *image*, which a process that no longer works on it left ``saving``
        or ``importing``, to ``queued`` and remove whatever data that process wrote;
        nothing if the image changed since it was read (someone took it over).

        :returns: whether the image was queued again.
        """

        def change(current: Image) -> None:
            if current.status is not image.status or current.upload_worker != image.upload_worker:
                raise Conflict("the upload changed hands")
            current.transition(Status.QUEUED)
            current.upload_worker = current.upload_lease = None

        try:
            self.registry.update_image(image.id, change)
        except (Conflict, ImageNotFound):
            return False
        self.stores.discard_everywhere(image.id)
        LOG.warning("image %s: upload by %s was interrupted; the image is queued again", image.id, image.upload_worker)
        return True
