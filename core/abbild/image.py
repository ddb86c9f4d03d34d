"""The image: a plain value object, and the one status-transition table."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import enum
from typing import Any

from abbild.errors import Invalid, InvalidTransition


class Status(str, enum.Enum):
    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"
    IMPORTING = "importing"
    ACTIVE = "active"
    KILLED = "killed"
    DEACTIVATED = "deactivated"
    PENDING_DELETE = "pending_delete"
    DELETED = "deleted"

    def __str__(self) -> str:
        return self.value


S = Status
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.QUEUED: frozenset({S.SAVING, S.UPLOADING, S.IMPORTING, S.ACTIVE, S.DELETED}),
    S.SAVING: frozenset({S.ACTIVE, S.KILLED, S.DELETED, S.QUEUED}),
    S.UPLOADING: frozenset({S.IMPORTING, S.QUEUED, S.DELETED}),
    # Beyond Glance's table: a failed glance-direct import keeps its staged data, and
    # the image returns to 'uploading' so that the import can be tried again.
    S.IMPORTING: frozenset({S.ACTIVE, S.DELETED, S.QUEUED, S.UPLOADING}),
    S.ACTIVE: frozenset({S.PENDING_DELETE, S.DELETED, S.DEACTIVATED}),
    S.KILLED: frozenset({S.DELETED}),
    S.PENDING_DELETE: frozenset({S.DELETED, S.ACTIVE, S.DEACTIVATED}),
    S.DELETED: frozenset(),
    # Beyond Glance's table: a deactivated image's data is deleted like an active one's,
    # after the image left every caller's view (and it returns if the store refuses).
    S.DEACTIVATED: frozenset({S.ACTIVE, S.DELETED, S.PENDING_DELETE}),
}
# Leaving these for a data-bearing status needs both formats set.
_NEEDS_FORMATS = frozenset({S.SAVING, S.ACTIVE, S.IMPORTING})

VISIBILITIES = ("public", "private", "shared", "community")
#: The hash algorithms an image's os_hash_value may be in, and their hex lengths.
HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")


def utcnow() -> datetime.datetime:
    # Whole seconds: the wire format has no fractions, and equal values must compare
    # equal after a round trip through any of the three databases.
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)


@dataclasses.dataclass
class Location:
    store: str
    uri: str
    size: int | None = None
    status: str = "active"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Image:
    id: str
    name: str | None = None
    status: Status = Status.QUEUED
    visibility: str = "shared"
    protected: bool = False
    os_hidden: bool = False
    owner: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    created_at: datetime.datetime = dataclasses.field(default_factory=utcnow)
    updated_at: datetime.datetime = dataclasses.field(default_factory=utcnow)
    deleted_at: datetime.datetime | None = None
    tags: set[str] = dataclasses.field(default_factory=set)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    locations: list[Location] = dataclasses.field(default_factory=list)
    # Internal, never on the wire: the process writing this image's data, and until
    # when its claim holds (crash recovery resets uploads whose claim ran out).
    upload_worker: str | None = None
    upload_lease: datetime.datetime | None = None
    # Bumped by the registry on every write; the compare-and-swap token.
    version: int = 0

    def copy(self) -> Image:
        """A copy whose tags, properties and locations change apart from this one's
        (field by field: deepcopy walked every datetime and string, on every read)."""
        image = copy.copy(self)
        image.tags = set(self.tags)
        image.properties = dict(self.properties)
        image.locations = [copy.copy(loc) for loc in self.locations]
        for location in image.locations:
            location.metadata = copy.deepcopy(location.metadata)  # may nest (validation data)
        return image

    def transition(self, target: Status) -> None:
        """Move to *target* through the one transition table.

        :raises abbild.errors.InvalidTransition: *target* is not reachable.
        :raises abbild.errors.Invalid: the formats are missing for a data-bearing status.
        """
        target = Status(target)
        if target not in TRANSITIONS[self.status]:
            raise InvalidTransition(self.id, self.status.value, target.value)
        if target in _NEEDS_FORMATS and self.status in (S.QUEUED, S.UPLOADING):
            for attr in ("disk_format", "container_format"):
                if getattr(self, attr) is None:
                    raise Invalid(f"Property {attr} must be set prior to saving data.")
        if target is S.QUEUED:
            self.size = self.virtual_size = None
            self.checksum = self.os_hash_algo = self.os_hash_value = None
        self.status = target
