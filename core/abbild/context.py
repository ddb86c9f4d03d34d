"""The request context: who is calling. Built by the auth filter of the pipeline and
read by the API from ``environ["abbild.context"]``."""

from __future__ import annotations

import dataclasses
import functools

from abbild.registry import Viewer

ENVIRON_KEY = "abbild.context"


@dataclasses.dataclass(frozen=True)
class RequestContext:
    request_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    roles: tuple[str, ...] = ()
    is_admin: bool = False
    anonymous: bool = False
    user_domain_id: str | None = None
    project_domain_id: str | None = None
    service_catalog: tuple = ()  # the token's catalog entries, for calls to other services
    # The caller's Keystone token, forwarded to a registry that checks it itself. A
    # credential: kept out of repr() and so out of logs.
    auth_token: str | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property  # read several times a request; the context never changes
    def viewer(self) -> Viewer:
        return Viewer(
            project_id=self.project_id,
            is_admin=self.is_admin,
            user_id=self.user_id,
            roles=self.roles,
            anonymous=self.anonymous,
        )
