"""The auditor and updater: one pass over the registry and the stores that finds what
went wrong while nobody looked, and repairs only what is safe to repair.

What a pass (:meth:`Auditor.run`) reports, as :class:`Finding` s:

- ``corrupt``: an active image's stored data differs from its ``size``, ``checksum``
  (md5) or ``os_hash_value`` (bit rot, a flipped byte, a truncated object);
- ``missing``: an active image's location whose data is gone;
- ``orphan``: data in a store that no image points at (a delete that failed half way,
  a crash between writing data and recording it). Only objects named like an image id
  count: abbild writes nothing else, and a shared bucket or pool may hold other data;
- ``stuck``: an image ``saving``, ``importing``, ``pending_delete`` or ``uploading``
  (while its data is being staged; staged data waiting for its import is not stuck) that has not
  changed for ``audit_stuck_after`` seconds (a running upload renews its claim, which
  changes it; a delayed delete, which waits for the scrubber, is not stuck);
- ``cache``: a copy in this node's image cache that fails the cleaner's re-hash;
- ``error``: what could not be checked (a store that does not answer).

With *repair* it also does what cannot lose data: a stuck upload whose claim is stale
goes back to ``queued`` without its partial data; an orphan older than the grace period
is deleted (younger ones are only reported: an upload may be writing it right now);
an image with corrupt data is deactivated, its data kept for whoever investigates; a
failing cache copy is removed. Data an image points at is never deleted.

With *update* it fills what older or registered images lack: ``size``,
``os_hash_algo``/``os_hash_value`` of images that have only an md5, and ``virtual_size``
(what the format inspection of an upload would have set), computed from data whose md5
was found to match, in the same read.

Reading is rate-limited (``audit_rate_limit``), so a pass can run on a live system.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

from abbild import formats
from abbild.driver import Capability, ListedObject
from abbild.errors import AbbildError, Conflict, ImageNotFound, NotFound, RegistryError, StoreError
from abbild.image import Image, Location, Status, utcnow
from abbild.plugins import notify
from abbild.registry import Viewer
from abbild.stores import Store
from abbild.streams import ImageStream

LOG = logging.getLogger(__name__)

MiB = 1 << 20
#: The kinds of :class:`Finding`, in the order a report lists them.
KINDS = ("corrupt", "missing", "orphan", "stuck", "cache", "error")
#: The lease one pass holds, so that one auditor runs per deployment at a time.
LEASE = "audit"
# The keys abbild writes are image ids: lower-case UUIDs.
_IMAGE_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_IN_FLIGHT = (Status.SAVING, Status.IMPORTING, Status.UPLOADING)
_STUCK = (Status.SAVING, Status.UPLOADING, Status.IMPORTING, Status.PENDING_DELETE)
# The auditor acts as the service itself: it sees and may deactivate every image.
_SERVICE = Viewer(is_admin=True)

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class Finding:
    """One thing found, and what ``--repair`` did about it (``action``, empty: nothing)."""

    kind: str  # one of KINDS
    detail: str
    image_id: str | None = None
    store: str | None = None
    action: str = ""


@dataclasses.dataclass
class Update:
    """What ``--update`` filled in of one image."""

    image_id: str
    fields: dict[str, object]


class Throttle:
    """Holds reading to *rate* bytes a second. Time spent not reading earns at most one
    second's worth of credit, so a pause is not followed by a burst."""

    def __init__(self, rate: float, stopping: threading.Event) -> None:
        self.rate = rate
        self.stopping = stopping
        self.paid_until = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.paid_until = max(self.paid_until, now - 1.0) + n / self.rate
        if self.paid_until > now:
            self.stopping.wait(self.paid_until - now)


class Auditor:
    """One configured auditor; :meth:`run` does a pass (the periodic task's ``run``).

    :param service: the :class:`~abbild.service.ImageService` of this process.
    :param cache: this node's :class:`~abbild.cache.ImageCache`, or ``None``.
    :param store: check this store's data and objects only (default: every store).
    :param rate: MiB per second to read image data at; 0: unlimited.
    :param grace: seconds an orphan must have existed before *repair* deletes it.
    :param stuck_after: seconds without a change after which an image is stuck.
    :param progress: ``progress(image_id, bytes_done, total)`` while data is read.
    """

    def __init__(
        self,
        service,
        *,
        cache=None,
        store: str | None = None,
        repair: bool = False,
        update: bool = False,
        rate: float = 0.0,
        grace: float = 86400,
        stuck_after: float = 3600,
        progress: Progress | None = None,
    ) -> None:
        self.service = service
        self.registry = service.registry
        self.cache = cache
        self.stores: list[Store] = [service.stores[store]] if store else list(service.stores)
        self.repair = repair
        self.update = update
        self.rate = rate
        self.grace = grace
        self.stuck_after = stuck_after
        self.progress = progress
        self.findings: list[Finding] = []
        self.updates: list[Update] = []
        self.format_settings = formats.Settings.from_conf(service.conf)
        self.checked = self.bytes_read = 0

    @classmethod
    def from_config(cls, service, cache=None, **overrides) -> Auditor:
        """An auditor with the ``audit_*`` options of *service*'s config; keyword
        arguments (those of the constructor) override them."""
        conf = service.conf
        settings = {
            "repair": conf.audit_repair,
            "update": conf.audit_update,
            "rate": conf.audit_rate_limit,
            "grace": conf.audit_orphan_grace,
            "stuck_after": conf.audit_stuck_after,
        }
        settings.update({name: value for name, value in overrides.items() if value is not None})
        return cls(service, cache=cache, **settings)

    # -- a pass ---------------------------------------------------------------------------

    def run(self, stopping: threading.Event) -> dict[str, int]:
        """One pass: the findings and updates land in :attr:`findings` and
        :attr:`updates`. Returns soon after *stopping* is set, with what was found so far.

        :returns: counts: each kind of finding, ``repaired``, ``updated``, ``checked``
            (locations whose data was read) and ``bytes`` (read in all).
        """
        self.findings, self.updates = [], []
        self.checked = self.bytes_read = 0
        throttle = Throttle(self.rate * MiB, stopping)
        # Every image, read before any store is listed: data written after this read is
        # either an upload's in flight now, or younger than the grace period.
        images = [
            image
            for status in Status
            if status is not Status.DELETED
            for image in self.registry.images_in_status(status.value)
        ]
        images.sort(key=lambda image: image.id)
        self._check_stuck(images)
        for image in images:
            if stopping.is_set():
                break
            if image.status is Status.ACTIVE:
                self._check_image(image, throttle, stopping)
        for store in self.stores:
            if stopping.is_set():
                break
            self._check_orphans(store, images, stopping)
        if self.cache is not None and not stopping.is_set():
            self._check_cache(stopping)
        counts = collections.Counter(f.kind for f in self.findings)
        result = {kind: counts[kind] for kind in KINDS}
        result.update(
            repaired=sum(1 for f in self.findings if f.action),
            updated=len(self.updates),
            checked=self.checked,
            bytes=self.bytes_read,
        )
        LOG.info("audit: %s", ", ".join(f"{k} {v}" for k, v in result.items()))
        return result

    def _found(self, finding: Finding) -> Finding:
        LOG.warning(
            "audit: %s%s%s: %s%s",
            finding.kind,
            f" image {finding.image_id}" if finding.image_id else "",
            f" in store {finding.store}" if finding.store else "",
            finding.detail,
            f" ({finding.action})" if finding.action else "",
        )
        self.findings.append(finding)
        return finding

    # -- stuck images ---------------------------------------------------------------------

    def _check_stuck(self, images: list[Image]) -> None:
        cutoff = utcnow() - datetime.timedelta(seconds=self.stuck_after)
        claims = self.service.claims
        for image in images:
            if image.status not in _STUCK or image.updated_at > cutoff:
                continue
            if image.status is Status.PENDING_DELETE and image.deleted_at is not None:
                continue  # a delayed delete: its data waits for the scrubber's scrub_time
            if image.status is Status.UPLOADING and not image.upload_worker:
                continue  # staged data waiting for its import: the owner imports or deletes it
            stale = claims.is_stale(image)
            holder = f"claimed by {image.upload_worker}" if image.upload_worker else "claimed by nobody"
            detail = (
                f"'{image.status}' without a change since {image.updated_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({holder}, {'stale' if stale else 'still held'})"
            )
            action = ""
            if self.repair and stale and image.status in (Status.UPLOADING, Status.IMPORTING):
                if self.service.imports.recover_image(image):  # staged data of glance-direct kept
                    now = self.registry.get_image(image.id).status
                    action = f"stage or import undone (now '{now}'), its partial data removed"
            elif self.repair and stale and image.status in _IN_FLIGHT and self.service.uploads.requeue(image):
                action = "queued again, its partial data removed"
            self._found(Finding("stuck", detail, image.id, action=action))

    # -- the data of active images ----------------------------------------------------------

    def _check_image(self, image: Image, throttle: Throttle, stopping: threading.Event) -> None:
        names = {store.name for store in self.stores}
        verified: list[ImageStream] = []
        corrupt: list[Finding] = []
        for location in image.locations:
            if location.store not in names:
                if self.service.stores.for_location(location.store) is None:
                    detail = f"store {location.store!r} is not configured here; its data cannot be checked"
                    self._found(Finding("error", detail, image.id, location.store))
                continue
            stream = self._read(image, location, throttle, stopping)
            if stream is None:
                continue
            wrong = _differences(image, stream)
            if wrong:
                detail = f"the data at {location.uri} differs: {'; '.join(wrong)}"
                corrupt.append(self._found(Finding("corrupt", detail, image.id, location.store)))
            else:
                verified.append(stream)
        if corrupt and self.repair:
            action = self._deactivate(image)
            for finding in corrupt:
                finding.action = action
        elif verified and self.update:
            self._update(image, verified[0])

    def _read(
        self, image: Image, location: Location, throttle: Throttle, stopping: threading.Event
    ) -> ImageStream | None:
        """Read and hash one location's data. :returns: the finished stream, or ``None``
        when it could not be read (a finding says why) or *stopping* was set."""
        store = self.service.stores.for_location(location.store)
        if image.os_hash_value:
            algorithm = image.os_hash_algo
        elif self.update and image.checksum:
            algorithm = self.service.conf.hashing_algorithm
        else:
            algorithm = None
        try:
            chunks = store.get(location.uri)
        except NotFound:
            self._found(Finding("missing", f"no data at {location.uri}", image.id, location.store))
            return None
        except StoreError as exc:
            self._found(Finding("error", f"cannot read {location.uri}: {exc}", image.id, location.store))
            return None
        checks = []
        if self.update and image.virtual_size is None:
            # Never refuses: the data is kept already; a verdict it would get today is logged.
            check = formats.FormatCheck(image.disk_format, image.container_format, self.format_settings, refuse=False)
            checks.append(check)
        stream = ImageStream(chunks, hash_algo=algorithm, checks=checks)
        done = 0
        try:
            for chunk in stream:
                done += len(chunk)
                self.bytes_read += len(chunk)
                if self.progress is not None:
                    self.progress(image.id, done, image.size or 0)
                throttle.take(len(chunk))
                if stopping.is_set():
                    return None
        except StoreError as exc:
            self._found(Finding("error", f"reading {location.uri} failed: {exc}", image.id, location.store))
            return None
        finally:
            _close(chunks)
        self.checked += 1
        return stream

    def _deactivate(self, image: Image) -> str:
        """:returns: what was done, for the report."""
        try:
            self.service.set_active(image.id, False, _SERVICE, self.cache)
        except AbbildError as exc:
            LOG.warning("audit: image %s: could not deactivate it: %s", image.id, exc)
            return ""
        return "deactivated"

    def _update(self, image: Image, stream: ImageStream) -> None:
        """Fill in the size, the os_hash and the virtual size that *image* lacks, from
        *stream*, whose data matched every hash the image has."""
        fill: dict[str, object] = {}
        if image.size is None:
            fill["size"] = stream.size
        if image.virtual_size is None and stream.findings.get("virtual_size") is not None:
            fill["virtual_size"] = stream.findings["virtual_size"]
        if image.os_hash_value is None and image.checksum and stream.os_hash_value:
            fill["os_hash_algo"] = stream.hash_algo
            fill["os_hash_value"] = stream.os_hash_value
        if not fill:
            return

        def change(current: Image) -> None:
            # The same data as read: still active with the same md5, nothing filled meanwhile.
            if current.status is not Status.ACTIVE or current.checksum != image.checksum:
                raise Conflict(f"image {image.id} changed while its data was read")
            for name, value in fill.items():
                if getattr(current, name) is None:
                    setattr(current, name, value)

        try:
            updated = self.registry.update_image(image.id, change)
        except (Conflict, ImageNotFound):
            return  # deleted, deactivated or re-uploaded meanwhile: the next pass sees it
        self.updates.append(Update(image.id, fill))
        LOG.info("audit: image %s: filled in %s", image.id, ", ".join(fill))
        notify(self.service.plugins, "abbild_image_updated", image=updated)

    # -- orphans --------------------------------------------------------------------------

    def _check_orphans(self, store: Store, images: list[Image], stopping: threading.Event) -> None:
        if Capability.LIST not in store.capabilities:
            return
        in_flight = {image.id for image in images if image.status in _IN_FLIGHT}
        try:
            # Every location, whatever store it names: two stores may share a place.
            referenced = {store.key_of(loc.uri) for image in images for loc in image.locations}
            now = time.time()
            for obj in store.list_objects():
                if stopping.is_set():
                    return
                if not _IMAGE_KEY.fullmatch(obj.key) or obj.key in referenced or obj.key in in_flight:
                    continue
                age = now - obj.modified
                detail = f"{obj.uri} ({obj.size} bytes, written {_age(age)} ago) belongs to no image"
                action = ""
                if age < self.grace:
                    detail += "; younger than the grace period, kept"
                elif self.repair and self._still_orphan(store, obj):
                    store.delete(obj.uri)
                    action = "deleted"
                self._found(Finding("orphan", detail, obj.key, store.name, action))
        except (StoreError, RegistryError) as exc:
            self._found(Finding("error", f"cannot list the store's objects: {exc}", store=store.name))

    def _still_orphan(self, store: Store, obj: ListedObject) -> bool:
        """Ask the registry again, right before deleting: the image named like the
        object (if any) may have taken it since the pass began."""
        try:
            image = self.registry.get_image(obj.key)
        except ImageNotFound:
            return True
        if image.status in _IN_FLIGHT:
            return False
        return all(store.key_of(loc.uri) != obj.key for loc in image.locations)

    # -- the cache ------------------------------------------------------------------------

    def _check_cache(self, stopping: threading.Event) -> None:
        try:
            failed = self.cache.verify(stopping, remove=self.repair)
        except (OSError, RegistryError) as exc:
            self._found(Finding("error", f"cannot check the image cache {self.cache.directory}: {exc}"))
            return
        for image_id, verdict in sorted(failed.items()):
            what = "is gone" if verdict == "orphans" else "differs from its cache entry"
            detail = f"the cached copy in {self.cache.directory} (node {self.cache.node}) {what}"
            self._found(Finding("cache", detail, image_id, action="removed" if self.repair else ""))


def _differences(image: Image, stream: ImageStream) -> list[str]:
    wrong = []
    if image.size is not None and stream.size != image.size:
        wrong.append(f"{stream.size} bytes, not {image.size}")
    if image.checksum and stream.checksum != image.checksum:
        wrong.append(f"md5 {stream.checksum}, not {image.checksum}")
    if image.os_hash_value and stream.os_hash_value != image.os_hash_value:
        wrong.append(f"{image.os_hash_algo} {stream.os_hash_value}, not {image.os_hash_value}")
    return wrong


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _close(chunks: Iterable[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
