"""Version negotiation: maps ``/v2.N/...`` (or an ``application/vnd.openstack.images-v2.N``
Accept header) onto ``/v2/...``, and answers anything else with the versions document."""

from __future__ import annotations

import json

from abbild import config
from abbild_paste import http_proxy

# Every minor version, newest first, with the feature a client expects once it sees the
# id (glanceclient's has_version gates image tasks on 2.12, the cache API on 2.14 and
# 2.18, the location API on 2.17). An id is listed only when abbild serves its feature:
# None means served. 2.9, 2.11, 2.13 and 2.15 changed nothing a client can see. Glance
# lists 2.8 and 2.10-2.13 only with several stores; abbild always names its stores.
HISTORY = (
    ("2.18", "cache"),
    ("2.17", None),
    ("2.16", "cache"),
    ("2.15", None),
    ("2.14", "cache"),
    ("2.13", None),
    ("2.12", "image tasks"),
    ("2.11", None),
    ("2.10", None),
    ("2.9", None),
    ("2.8", None),
    ("2.7", None),
    ("2.6", None),
    ("2.5", None),
    ("2.4", None),
    ("2.3", None),
    ("2.2", None),
    ("2.1", None),
    ("2.0", None),
)
# What every configuration serves: image tasks (2.12, GET /v2/images/{id}/tasks); the
# cache's versions only where image_cache_dir turns it on (as Glance).
SERVED_FEATURES: frozenset[str] = frozenset({"image tasks"})
CACHE_FEATURES: frozenset[str] = SERVED_FEATURES | {"cache"}


def served_versions(features: frozenset[str] = SERVED_FEATURES) -> tuple[str, ...]:
    """The minor versions a configuration serving *features* lists, newest (CURRENT) first."""
    return tuple(version for version, feature in HISTORY if feature is None or feature in features)


def features_of(conf) -> frozenset[str]:
    """What a service configured by *conf* serves."""
    return CACHE_FEATURES if conf.image_cache_dir else SERVED_FEATURES


VERSIONS = served_versions()
ACCEPT_PREFIX = "application/vnd.openstack.images-"


def versions_document(base_url: str, versions: tuple[str, ...] = VERSIONS) -> bytes:
    href = base_url.rstrip("/") + "/v2/"
    return json.dumps(
        {
            "versions": [
                {
                    "id": f"v{v}",
                    "status": "CURRENT" if v == versions[0] else "SUPPORTED",
                    "links": [{"rel": "self", "href": href}],
                }
                for v in versions
            ]
        }
    ).encode()


def _base_url(environ, public_endpoint: str | None) -> str:
    """``public_endpoint``, else the address this connection really reached (or the
    one a trusted proxy forwarded): never the ``Host`` header, which any client
    sets, and which would otherwise become the links clients follow."""
    if public_endpoint:
        return public_endpoint
    scheme = environ.get("wsgi.url_scheme")
    scheme = scheme if scheme in http_proxy.SCHEMES else "http"
    host = environ.get(http_proxy.FORWARDED_HOST) or _local_address(environ)
    prefix = environ.get("SCRIPT_NAME", "")
    return f"{scheme}://{host}{prefix if http_proxy.valid_prefix(prefix) else ''}"


def _local_address(environ) -> str:
    """host:port of the listening socket the request came in on."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            address = sock.getsockname()
        except OSError:
            address = None
        if isinstance(address, tuple):
            return _authority(address[0], address[1])
        return "localhost"  # a unix socket: only public_endpoint or a proxy can tell
    if environ.get("SERVER_ADDR"):  # Apache: the local address; its SERVER_PORT may come from Host
        return _authority(environ["SERVER_ADDR"], environ.get("mod_wsgi.listener_port") or environ["SERVER_PORT"])
    return _authority(environ["SERVER_NAME"], environ["SERVER_PORT"])


def _authority(host: str, port) -> str:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return authority if http_proxy.valid_authority(authority) else "localhost"


def filter_factory(global_conf, **local_conf):
    conf = config.for_pipeline(global_conf)
    public_endpoint = local_conf.get("public_endpoint") or conf.public_endpoint
    versions = served_versions(features_of(conf))
    known = frozenset({"v2"} | {f"v{v}" for v in versions})

    def make(app):
        def middleware(environ, start_response):
            path = environ.get("PATH_INFO", "") or "/"
            first, _, rest = path.lstrip("/").partition("/")
            if first == "versions" and not rest:
                return _versions(environ, start_response, "200 OK")
            accept = environ.get("HTTP_ACCEPT", "")
            if accept.startswith(ACCEPT_PREFIX):
                version, rest = accept[len(ACCEPT_PREFIX) :], path.lstrip("/")
            else:
                version = first
            if version not in known:
                return _versions(environ, start_response, "300 Multiple Choices")
            environ["PATH_INFO"] = "/v2/" + rest if rest else "/v2"
            environ["abbild.api_version"] = version
            return app(environ, start_response)

        def _versions(environ, start_response, status):
            body = versions_document(_base_url(environ, public_endpoint), versions)
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        return middleware

    return make
