"""Who is writing an image's data, and what happens when that writer fails.

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
3. The work ends by saving the image (``saving -> active``, with its size, hashes and
   location) or by :meth:`Claims.release` (back to ``queued``; when the registry is
   unreachable, retried in the background for as long as a lease would last).
4. :meth:`Claims.stale` finds the claims of processes that died: on this host, a
   process that no longer runs; elsewhere, a lease that ran out. Start-up recovery
   (:meth:`abbild.service.ImageService.recover`) undoes or finishes their work.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
import time

from abbild.errors import Conflict, Gone, ImageNotFound, RegistryUnavailable
from abbild.image import Image, Status, utcnow
from abbild.plugins import notify
from abbild.registry import Registry

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
                raise Conflict(f"Image {image_id} has status '{image.status}'; data can only be uploaded "
                               f"to a 'queued' image")  # fmt: skip
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
            LOG.error("image %s: still 'saving'; recovery returns it to 'queued' once its lease ran out",
                      claim.image_id)  # fmt: skip

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
