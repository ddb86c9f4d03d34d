"""Auth filters that put a :class:`abbild.context.RequestContext` into the environ."""

from __future__ import annotations

import json

from abbild.config import is_loopback_address
from abbild.context import ENVIRON_KEY, RequestContext


def noauth_filter_factory(global_conf, **local_conf):
    """Every caller is an administrator without a project, as Glance's
    unauthenticated-context: for local use, never on a network others can reach. So a
    client that is not on this machine gets 403, whatever server runs the pipeline
    (``abbild serve`` refuses to listen beyond loopback too, but mod_wsgi or uWSGI
    listen where they are told)."""

    def make(app):
        def middleware(environ, start_response):
            if not is_loopback_address(environ.get("REMOTE_ADDR")):
                return _plain(
                    start_response,
                    "403 Forbidden",
                    "This image service runs without authentication (noauth) and answers clients on its "
                    "own machine only.",
                )
            environ[ENVIRON_KEY] = RequestContext(
                request_id=environ.get("abbild.request_id"), roles=("admin",), is_admin=True
            )
            return app(environ, start_response)

        return middleware

    return make


def authtoken_filter_factory(global_conf, **local_conf):
    """keystonemiddleware's auth_token, configured from ``[keystone_authtoken]`` in
    abbild's own config files. The decision is delayed: a request without a valid
    token goes on with ``X-Identity-Status: Invalid`` and the ``context`` filter
    after it answers 401 (or lets it read anonymously, if so configured)."""
    from abbild import config
    from abbild.errors import ConfigError

    try:
        from keystonemiddleware import auth_token
    except ImportError:
        raise ConfigError("the keystone flavour needs keystonemiddleware: pip install 'abbild[keystone]'") from None
    conf = config.for_pipeline(global_conf)

    def make(app):
        return auth_token.AuthProtocol(app, {"oslo_config_config": conf, "delay_auth_decision": "true", **local_conf})

    return make


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(r.strip().lower() for r in (value or "").split(",") if r.strip())


def _catalog(header: str | None) -> tuple:
    """The JSON service catalog keystonemiddleware passes on (a list of services)."""
    if not header:
        return ()
    catalog = json.loads(header)
    if not isinstance(catalog, list):
        raise ValueError("expected a JSON list")
    return tuple(catalog)


def _plain(start_response, status: str, message: str):
    body = f"{status}\n\n{message}\n".encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def context_filter_factory(global_conf, **local_conf):
    """The caller as an authentication layer in front described it, in the headers
    keystonemiddleware sets (``X-Identity-Status: Confirmed``, ``X-User-Id``,
    ``X-Project-Id``, ``X-Roles``, ...). Used behind keystonemiddleware's auth_token,
    or, in the ``trusted-headers`` flavour, behind a gateway that already authenticated
    the caller. Anything else is anonymous: 401 unless ``allow_anonymous_access``.
    """
    from abbild import config

    allow_anonymous = config.for_pipeline(global_conf).allow_anonymous_access

    def make(app):
        def middleware(environ, start_response):
            request_id = environ.get("abbild.request_id")
            if environ.get("HTTP_X_IDENTITY_STATUS") == "Confirmed":
                roles = _split(environ.get("HTTP_X_ROLES"))
                try:
                    catalog = _catalog(environ.get("HTTP_X_SERVICE_CATALOG"))
                except ValueError as exc:
                    return _plain(start_response, "400 Bad Request", f"Invalid X-Service-Catalog header: {exc}")
                ctx = RequestContext(
                    request_id=request_id,
                    user_id=environ.get("HTTP_X_USER_ID"),
                    project_id=environ.get("HTTP_X_PROJECT_ID") or environ.get("HTTP_X_TENANT_ID"),
                    roles=roles,
                    is_admin="admin" in roles,
                    user_domain_id=environ.get("HTTP_X_USER_DOMAIN_ID"),
                    project_domain_id=environ.get("HTTP_X_PROJECT_DOMAIN_ID"),
                    service_catalog=catalog,
                    auth_token=environ.get("HTTP_X_AUTH_TOKEN"),
                )
            elif allow_anonymous:
                ctx = RequestContext(request_id=request_id, anonymous=True)
            else:
                return _plain(start_response, "401 Unauthorized", "Authentication required: send a valid X-Auth-Token.")
            environ[ENVIRON_KEY] = ctx
            return app(environ, start_response)

        return middleware

    return make
