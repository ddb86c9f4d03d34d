"""The error hierarchy. Every error keeps its context as attributes and builds
its message once, in its constructor; the API maps classes to HTTP statuses in
one table (``abbild_api.errors``)."""

from __future__ import annotations


class AbbildError(Exception):
    """Root of every error abbild raises on purpose."""


class ConfigError(AbbildError):
    """The configuration cannot work; raised at start-up, never swallowed."""


class Invalid(AbbildError):
    """The caller's input is wrong (HTTP 400)."""


class Forbidden(AbbildError):
    """The caller may not do this (HTTP 403)."""


class Conflict(AbbildError):
    """The request conflicts with the resource's current state (HTTP 409)."""


class Gone(Conflict):
    """The image was deleted while its data was being written (HTTP 410)."""

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        super().__init__(f"Image {image_id} was deleted during the upload; its data was removed")


class Busy(AbbildError):
    """No room for more background work now (HTTP 503): try again later."""


class TooManyJobs(Busy):
    """The caller's project has as much background work running as it may (HTTP 429)."""


class UnsupportedOperation(AbbildError):
    """The store cannot do this (for example write to a read-only store)."""

    def __init__(self, store: str, operation: str) -> None:
        self.store, self.operation = store, operation
        super().__init__(f"store {store!r} does not support {operation}")


class InvalidImageData(AbbildError):
    """The data is not what the image's ``disk_format`` says, or is unsafe to hand to a
    hypervisor (a qcow2 with a backing file, a VMDK naming other files): HTTP 415."""


class ImageSignatureInvalid(Invalid):
    """The data does not match the image's ``img_signature``, or the signature cannot
    be checked (unknown certificate, bad parameters): HTTP 400."""


class SizeLimitExceeded(AbbildError):
    """More bytes arrived than a limit allows (HTTP 413)."""

    def __init__(self, limit: int, what: str = "image_size_cap") -> None:
        self.limit, self.what = limit, what
        super().__init__(f"Image exceeds the {what} of {limit} bytes.")


class QuotaExceeded(AbbildError):
    """A per-image or per-project limit is reached (HTTP 413)."""


# -- data stores ------------------------------------------------------------------------


class StoreError(AbbildError):
    """A store driver failed; drivers raise only subclasses of this."""


class NotFound(StoreError):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(f"No image data found at {uri}")


class AlreadyExists(StoreError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"Image data for {key} already exists in the store")


class SizeMismatch(StoreError):
    def __init__(self, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            f"Size mismatch: the request declared {expected} bytes but {actual} arrived"
            if actual < expected
            else f"Size mismatch: the request declared {expected} bytes but more arrived"
        )


class StoreFull(StoreError):
    def __init__(self, store: str, reason: str = "no space left") -> None:
        self.store, self.reason = store, reason
        super().__init__(f"Store {store!r} is full: {reason}")


class AccessDenied(StoreError):
    def __init__(self, store: str, reason: str) -> None:
        self.store, self.reason = store, reason
        super().__init__(f"Store {store!r} denied access: {reason}")


class BackendUnavailable(StoreError):
    """Transient: the backend did not answer; safe to retry."""

    def __init__(self, store: str, reason: str) -> None:
        self.store, self.reason = store, reason
        super().__init__(f"Store {store!r} is unavailable: {reason}")


class BackendError(StoreError):
    """The backend failed in a way none of the other errors describes (an I/O error)."""

    def __init__(self, store: str, reason: str) -> None:
        self.store, self.reason = store, reason
        super().__init__(f"Store {store!r} failed: {reason}")


class InUse(StoreError):
    def __init__(self, uri: str, reason: str = "in use") -> None:
        self.uri, self.reason = uri, reason
        super().__init__(f"Image data at {uri} cannot be deleted: {reason}")


# -- metadata registry ------------------------------------------------------------------


class RegistryError(AbbildError):
    """The metadata registry failed."""


class ImageNotFound(RegistryError):
    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        super().__init__(f"No image found with ID {image_id}")


class DuplicateImage(RegistryError):
    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        super().__init__(f"An image with identifier {image_id} already exists")


class TaskNotFound(RegistryError):
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"Task with identifier {task_id} not found")


class MetadefNotFound(RegistryError):
    """A metadata definition (namespace, object, property, tag, resource type or
    association) that does not exist, or that the caller may not see (HTTP 404)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class MemberNotFound(RegistryError):
    def __init__(self, image_id: str, member_id: str) -> None:
        self.image_id, self.member_id = image_id, member_id
        super().__init__(f"Project {member_id} is not a member of image {image_id}")


class ConcurrentUpdate(RegistryError):
    """Someone else changed the image between our read and our write."""

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        super().__init__(f"Image {image_id} was changed concurrently; try again")


class InvalidTransition(RegistryError):
    def __init__(self, image_id: str, current: str, target: str) -> None:
        self.image_id, self.current, self.target = image_id, current, target
        super().__init__(f"Image {image_id} cannot go from status {current} to {target}")


class RegistryUnavailable(RegistryError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"The image registry is unavailable: {reason}")


class SignatureError(AbbildError):
    """A registry request is not authentic; the message says why (for the log and the 401)."""
