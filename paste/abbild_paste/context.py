"""Auth filters that put a :class:`abbild.context.RequestContext` into the environ."""

from __future__ import annotations

from abbild.context import ENVIRON_KEY, RequestContext


def noauth_filter_factory(global_conf, **local_conf):
    """Every caller is an administrator without a project, as Glance's
    unauthenticated-context: for local use, never on a network others can reach."""

    def make(app):
        def middleware(environ, start_response):
            environ[ENVIRON_KEY] = RequestContext(
                request_id=environ.get("abbild.request_id"), roles=("admin",), is_admin=True
            )
            return app(environ, start_response)

        return middleware

    return make
