"""Who may talk to the registry, and for whom: the auth filter of the registry
pipeline, and the refusal to listen beyond loopback without authentication."""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import urllib.parse

from abbild import registry_wire as wire
from abbild.errors import ConfigError
from abbild_registry.app import CALLER_KEY, config_files, load_conf

LOG = logging.getLogger(__name__)


def check_auth_config(conf) -> None:
    """:raises abbild.errors.ConfigError: hmac without a secret."""
    server = conf.registry_server
    if server.auth_strategy == "hmac" and not server.shared_secret:
        raise ConfigError(
            "abbild-registry authenticates its callers with [registry_server] shared_secret, which is "
            "not set: set it (and the same value in the API nodes' [registry_client] shared_secret), "
            "or set auth_strategy = noauth for a registry on a loopback address"
        )


def is_loopback(host: str) -> bool:
    """True when every address *host* resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, conf) -> None:
    """Refuse to serve anyone but this machine without authentication.

    :raises abbild.errors.ConfigError:
    """
    check_auth_config(conf)
    if conf.registry_server.auth_strategy == "noauth" and not is_loopback(host):
        raise ConfigError(
            f"abbild-registry will not listen on {host} without authentication: anyone who reaches it "
            f"could read and change every image. Listen on 127.0.0.1, or set [registry_server] "
            f"auth_strategy = hmac and shared_secret"
        )


def _path_qs(environ) -> str:
    """The path and query as the client sent (and signed) them."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return raw
    path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1").decode()
    query = environ.get("QUERY_STRING")
    return urllib.parse.quote(path, safe="/") + (f"?{query}" if query else "")


def _refuse(start_response, status: str, reason: str):
    body = f'{{"error": {{"type": "Unauthorized", "message": "{reason}", "args": {{}}}}}}'.encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def filter_factory(global_conf, **local_conf):
    """Authenticates each request (``[registry_server] auth_strategy``) and puts the
    caller it acts for into the environ. Unsigned, altered, stale and replayed
    requests get 401."""
    conf = load_conf(config_files(global_conf))
    check_auth_config(conf)
    server = conf.registry_server
    verifier = wire.Verifier(server.shared_secret, server.max_clock_skew) if server.auth_strategy == "hmac" else None

    def make(app):
        def middleware(environ, start_response):
            if environ.get("PATH_INFO") == "/healthcheck":
                return app(environ, start_response)
            # The body is read here (it is small JSON) because the signature covers it.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            headers = {
                name: environ.get("HTTP_" + name.upper().replace("-", "_"))
                for name in (wire.CALLER_HEADER, wire.TIMESTAMP_HEADER, wire.NONCE_HEADER, wire.SIGNATURE_HEADER)
            }
            if verifier is not None:
                try:
                    verifier.verify(environ["REQUEST_METHOD"], _path_qs(environ), headers, body)
                except wire.SignatureError as error:
                    LOG.warning("refused a request from %s: %s", environ.get("REMOTE_ADDR"), error)
                    return _refuse(start_response, "401 Unauthorized", f"registry request refused: {error}")
            try:
                environ[CALLER_KEY] = wire.caller_from_header(headers[wire.CALLER_HEADER] or "")
            except ValueError:
                return _refuse(start_response, "400 Bad Request", f"{wire.CALLER_HEADER} header missing or malformed")
            return app(environ, start_response)

        return middleware

    return make
