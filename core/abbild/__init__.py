"""abbild: a virtual-machine image service, wire-compatible with the OpenStack Image API v2.

Plugins import ``hookimpl`` from here; drivers import ``Driver``, ``Capability``,
``StoredObject``, ``ListedObject`` and the errors.
"""

__version__ = "0.1.0"

from abbild.driver import Capability, Driver, ListedObject, StoredObject  # noqa: E402
from abbild.errors import (  # noqa: E402
    AbbildError,
    AccessDenied,
    AlreadyExists,
    BackendUnavailable,
    ConfigError,
    InUse,
    NotFound,
    SizeMismatch,
    StoreError,
    StoreFull,
    UnsupportedOperation,
)
from abbild.plugins import hookimpl  # noqa: E402

__all__ = [
    "AbbildError",
    "AccessDenied",
    "AlreadyExists",
    "BackendUnavailable",
    "Capability",
    "ConfigError",
    "Driver",
    "InUse",
    "ListedObject",
    "NotFound",
    "SizeMismatch",
    "StoreError",
    "StoreFull",
    "StoredObject",
    "UnsupportedOperation",
    "hookimpl",
]
