"""Who the code running now acts for.

The service hands a viewer to the registry only where the registry interface asks
for one (``list_images``). A registry that must decide visibility itself (the
``http`` driver, whose server trusts no caller blindly) reads the rest from here:
the API binds each request's viewer, and the user's Keystone token, around its
handler.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from abbild.registry import Viewer

# (viewer, the user's auth token). New threads start without it: what they do is
# the service's own work (a background import, a retried release).
_current: contextvars.ContextVar[tuple[Viewer | None, str | None]] = contextvars.ContextVar(
    "abbild_caller", default=(None, None)
)


@contextlib.contextmanager
def acting_as(viewer: Viewer | None, auth_token: str | None = None) -> Iterator[None]:
    """Run the block on behalf of *viewer* (``None``: the service itself).

    :param auth_token: the user's Keystone token, for a registry that checks the
        user itself (``[registry_client] auth_strategy = keystone``).
    """
    token = _current.set((viewer, auth_token))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Viewer | None:
    """The viewer bound by :func:`acting_as`; ``None`` outside any request (start-up
    recovery, periodic jobs), which registries treat as the service itself."""
    return _current.get()[0]


def auth_token() -> str | None:
    """The user's token bound by :func:`acting_as`, or ``None``."""
    return _current.get()[1]
