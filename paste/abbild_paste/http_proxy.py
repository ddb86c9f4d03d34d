"""Forwarded headers from a reverse proxy, trusted only when the operator says so.

oslo.middleware's HTTPProxyToWSGI does the parsing (``Forwarded``, or
``X-Forwarded-Proto``, ``-Host``, ``-For`` and ``-Prefix``), switched on by
``[oslo_middleware] enable_proxy_headers_parsing`` in abbild's own config files
(default off: anyone can send these headers). Around it, values that cannot be
part of a URL abbild hands out are dropped: a scheme other than http or https, a
host that is not a host[:port], a prefix that is not a path. The request's own
values stay then.

The versions document takes its host from :data:`FORWARDED_HOST`, which only a
valid forwarded host sets, never from the ``Host`` header a client sent.
"""

from __future__ import annotations

import ipaddress
import re

#: environ key of the host[:port] a trusted proxy forwarded, once checked.
FORWARDED_HOST = "abbild.forwarded_host"
SCHEMES = ("http", "https")

_ORIGINAL = "abbild.before_proxy_headers"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_AUTHORITY = re.compile(rf"(?P<host>{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")


def valid_authority(value: str) -> bool:
    """Whether *value* is a URL's host[:port]: a DNS name, an IPv4 address or a
    bracketed IPv6 address, and a port from 1 to 65535."""
    match = _AUTHORITY.fullmatch(value)
    if not match or len(match["host"]) > 255:
        return False
    if match["host"].startswith("["):
        try:
            ipaddress.IPv6Address(match["host"][1:-1])
        except ValueError:
            return False
    return match["port"] is None or 0 < int(match["port"]) < 65536


def valid_prefix(value: str) -> bool:
    """Whether *value* can stand between a URL's host[:port] and ``/v2/``: empty, or
    a path of URL characters starting with ``/``."""
    return _PATH.fullmatch(value) is not None


def filter_factory(global_conf, **local_conf):
    from oslo_middleware import http_proxy_to_wsgi

    from abbild import config

    conf = config.for_pipeline(global_conf)
    conf.register_opts(http_proxy_to_wsgi.OPTS, group="oslo_middleware")
    if not conf.oslo_middleware.enable_proxy_headers_parsing:
        return lambda app: app

    def make(app):
        def keep_valid(environ, start_response):
            original = environ.pop(_ORIGINAL)
            if environ.get("wsgi.url_scheme") not in SCHEMES:
                environ["wsgi.url_scheme"] = original["wsgi.url_scheme"]
            forwarded_host = environ.pop("HTTP_HOST", None)  # only a forwarded one is here
            if forwarded_host is not None and valid_authority(forwarded_host):
                environ["HTTP_HOST"] = environ[FORWARDED_HOST] = forwarded_host
            elif original["HTTP_HOST"] is not None:
                environ["HTTP_HOST"] = original["HTTP_HOST"]
            if not valid_prefix(environ.get("SCRIPT_NAME", "")):
                environ["SCRIPT_NAME"] = original["SCRIPT_NAME"]
            return app(environ, start_response)

        parser = http_proxy_to_wsgi.HTTPProxyToWSGI(keep_valid, conf)

        def middleware(environ, start_response):
            environ[_ORIGINAL] = {
                "wsgi.url_scheme": environ["wsgi.url_scheme"],
                "HTTP_HOST": environ.pop("HTTP_HOST", None),
                "SCRIPT_NAME": environ.get("SCRIPT_NAME", ""),
            }
            return parser(environ, start_response)

        return middleware

    return make
