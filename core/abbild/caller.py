"""Who the code running now acts for.

The service hands a viewer to the registry only where the registry interface asks
for one (``list_images``). A registry that must decide visibility itself (the
``http`` driver, whose server trusts no caller blindly) reads the rest from here:
the API binds each request's viewer around its handler.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from abbild.registry import Viewer

_current: contextvars.ContextVar[Viewer | None] = contextvars.ContextVar("abbild_caller", default=None)


@contextlib.contextmanager
def acting_as(viewer: Viewer | None) -> Iterator[None]:
    """Run the block on behalf of *viewer* (``None``: the service itself)."""
    token = _current.set(viewer)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Viewer | None:
    """The viewer bound by :func:`acting_as`; ``None`` outside any request (start-up
    recovery, periodic jobs), which registries treat as the service itself."""
    return _current.get()
