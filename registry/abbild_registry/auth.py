"""Who may talk to the registry, and for whom: the auth filter of the registry
pipeline, and the refusal to serve anyone beyond loopback without authentication
(at start-up, and in the filter for servers that bind elsewhere: mod_wsgi, uWSGI).

``hmac``: the API nodes sign each request with the shared secret and name the caller
in it; whoever holds the secret may act for anyone. ``keystone``: each request carries
the user's token (``X-Auth-Token``) and the API node's service token
(``X-Service-Token``, which must have a role of ``[keystone_authtoken]
service_token_roles``); keystonemiddleware validates both and the caller is what the
user's token says, so an API node can reach no more than its users could.
"""

from __future__ import annotations

import io
import json
import logging

from abbild import registry_wire as wire
from abbild.config import is_loopback, is_loopback_address
from abbild.errors import ConfigError, SignatureError
from abbild.registry import Viewer
from abbild_registry.app import CALLER_KEY, path_qs, pipeline_conf

LOG = logging.getLogger(__name__)


def check_auth_config(conf) -> None:
    """:raises abbild.errors.ConfigError: hmac without a secret, keystone without
    keystonemiddleware."""
    server = conf.registry_server
    if server.auth_strategy == "keystone":
        try:
            import keystonemiddleware  # noqa: F401
        except ImportError:
            raise ConfigError(
                "[registry_server] auth_strategy = keystone needs keystonemiddleware: pip install 'abbild[keystone]'"
            ) from None
    if server.auth_strategy == "hmac" and not server.shared_secret:
        raise ConfigError(
            "abbild-registry authenticates its callers with [registry_server] shared_secret, which is "
            "not set: set it (and the same value in the API nodes' [registry_client] shared_secret), "
            "or set auth_strategy = noauth for a registry on a loopback address"
        )


def check_bind(host: str, conf) -> None:
    """Refuse to serve anyone but this machine without authentication.

    :raises abbild.errors.ConfigError:
    """
    check_auth_config(conf)
    if conf.registry_server.auth_strategy == "noauth" and not is_loopback(host):
        raise ConfigError(
            f"abbild-registry will not listen on {host} without authentication: anyone who reaches it "
            f"could read and change every image. Listen on 127.0.0.1, or set [registry_server] "
            f"auth_strategy = keystone (with [keystone_authtoken]), or hmac and shared_secret"
        )


def _refuse(start_response, status: str, reason: str, kind: str = "Unauthorized"):
    body = json.dumps({"error": {"type": kind, "message": reason, "args": {}}}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Refused(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _from_loopback(environ) -> None:
    """:raises Refused: 403 for a client beyond loopback (noauth)."""
    address = environ.get("REMOTE_ADDR")
    if not is_loopback_address(address):
        raise Refused(
            "403 Forbidden",
            f"[registry_server] auth_strategy = noauth serves this machine only "
            f"(loopback), and {address or 'this client'} is not: set auth_strategy = "
            f"keystone (with [keystone_authtoken]) or hmac (with shared_secret) to "
            f"serve the API nodes",
        )


def read_body(environ, limit: int) -> bytes:
    """The request body, at most *limit* bytes, read once and put back for the app.

    :raises Refused: 413 for a larger body (before reading it when its
        Content-Length says so, else once the limit is passed), 400 for a malformed
        Content-Length.
    """
    too_large = Refused(
        "413 Request Entity Too Large",
        f"the body is larger than {limit} bytes ([registry_server] max_request_body_size)",
    )
    length = environ.get("CONTENT_LENGTH")
    if length:
        if not length.isascii() or not length.isdigit():
            raise Refused("400 Bad Request", f"malformed Content-Length {length!r}")
        if int(length) > limit:
            raise too_large
        body = environ["wsgi.input"].read(int(length))
    elif environ.get("wsgi.input_terminated"):
        # A chunked body (the server de-chunks it and ends the input where it ends).
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise too_large
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _refused(start_response, environ, refusal: Refused):
    LOG.warning("refused a request from %s: %s", environ.get("REMOTE_ADDR"), refusal.reason)
    kind = {"401": "Unauthorized", "403": "Unauthorized", "413": "RequestTooLarge"}.get(refusal.status[:3], "Invalid")
    return _refuse(start_response, refusal.status, f"registry request refused: {refusal.reason}", kind)


def _roles(header: str | None) -> tuple[str, ...]:
    return tuple(r.strip().lower() for r in (header or "").split(",") if r.strip())


def keystone_caller(environ, service_roles) -> wire.Caller:
    """The caller, from what keystonemiddleware's auth_token found in the tokens (it
    removes any such header the client sent): never from the API node's word.

    :param service_roles: a service token needs one of these.
    :returns: the user of ``X-Auth-Token``; without one, a caller for the service
        jobs only.
    :raises Refused: 401 for a missing or invalid token, 403 for a service token
        without a service role.
    """
    # Absent without a service token; "Invalid" with a bad one and, since
    # service_token_roles_required is on by default, with one lacking the roles.
    if environ.get("HTTP_X_SERVICE_IDENTITY_STATUS") != "Confirmed":
        raise Refused(
            "401 Unauthorized",
            f"an X-Service-Token (the API's service user) is required, valid and "
            f"with one of the roles {', '.join(service_roles)}",
        )
    # Checked here too, for a [keystone_authtoken] with service_token_roles_required off.
    if not set(service_roles) & set(_roles(environ.get("HTTP_X_SERVICE_ROLES"))):
        raise Refused("403 Forbidden", f"the X-Service-Token has none of the roles {', '.join(service_roles)}")
    if not (environ.get("HTTP_X_AUTH_TOKEN") or environ.get("HTTP_X_STORAGE_TOKEN")):
        return wire.Caller(None, jobs_only=True)
    if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
        raise Refused("401 Unauthorized", "the X-Auth-Token (the user's) is invalid or expired")
    roles = _roles(environ.get("HTTP_X_ROLES"))
    return wire.Caller(
        Viewer(
            project_id=environ.get("HTTP_X_PROJECT_ID"),
            user_id=environ.get("HTTP_X_USER_ID"),
            roles=roles,
            is_admin="admin" in roles,
        )
    )


def keystone_middleware(app, conf, body_limit: int = 1 << 20):
    """Puts :func:`keystone_caller` into the environ (then reads the body, at most
    *body_limit* bytes), or refuses the request. Goes behind keystonemiddleware's
    auth_token, which registers (and reads) ``[keystone_authtoken]`` of *conf*."""

    def middleware(environ, start_response):
        try:
            environ[CALLER_KEY] = keystone_caller(environ, conf.keystone_authtoken.service_token_roles)
            read_body(environ, body_limit)
        except Refused as refusal:
            return _refused(start_response, environ, refusal)
        return app(environ, start_response)

    return middleware


def _keystone_filter(conf):
    """keystonemiddleware's auth_token, configured from ``[keystone_authtoken]`` in the
    registry's config files, in front of :func:`keystone_middleware`."""
    from keystonemiddleware import auth_token

    def make(app):
        # The decision is ours, so that a missing user token can still mean a service
        # job, and a missing service role can be told from a bad token.
        return auth_token.AuthProtocol(
            keystone_middleware(app, conf, conf.registry_server.max_request_body_size),
            {"oslo_config_config": conf, "delay_auth_decision": "true"},
        )

    return make


def filter_factory(global_conf, **local_conf):
    """Authenticates each request (``[registry_server] auth_strategy``) and puts the
    caller it acts for into the environ. Unsigned, altered, stale and replayed
    requests get 401, as do requests without valid Keystone tokens; with noauth,
    requests from beyond loopback get 403. Bodies beyond ``max_request_body_size``
    get 413. What the headers decide is decided before the body is read."""
    conf = pipeline_conf(global_conf)
    check_auth_config(conf)
    if conf.registry_server.auth_strategy == "keystone":
        return _keystone_filter(conf)
    server = conf.registry_server
    verifier = wire.Verifier(server.shared_secret, server.max_clock_skew) if server.auth_strategy == "hmac" else None

    def make(app):
        def middleware(environ, start_response):
            if environ.get("PATH_INFO") == "/healthcheck":
                return app(environ, start_response)
            headers = {
                name: environ.get("HTTP_" + name.upper().replace("-", "_"))
                for name in (wire.CALLER_HEADER, wire.TIMESTAMP_HEADER, wire.NONCE_HEADER, wire.SIGNATURE_HEADER)
            }
            try:
                if verifier is None:
                    _from_loopback(environ)
                else:
                    verifier.check_headers(headers)
                # Read here (it is small JSON) because the signature covers it.
                body = read_body(environ, server.max_request_body_size)
                if verifier is not None:
                    verifier.verify(environ["REQUEST_METHOD"], path_qs(environ), headers, body)
            except SignatureError as error:
                return _refused(start_response, environ, Refused("401 Unauthorized", str(error)))
            except Refused as refusal:
                return _refused(start_response, environ, refusal)
            try:
                environ[CALLER_KEY] = wire.caller_from_header(headers[wire.CALLER_HEADER] or "")
            except (ValueError, TypeError):
                return _refuse(start_response, "400 Bad Request", f"{wire.CALLER_HEADER} header missing or malformed")
            return app(environ, start_response)

        return middleware

    return make
