"""Options of ``abbild-registry`` (``[registry_server]`` in abbild-registry.conf)."""

from __future__ import annotations

from oslo_config import cfg

GROUP = "registry_server"

server_opts = [
    cfg.HostAddressOpt(
        "bind_host",
        default="127.0.0.1",
        help="Address to listen on. Anything but a loopback address needs "
        "auth_strategy = keystone, or hmac and a shared_secret.",
    ),
    cfg.PortOpt("bind_port", default=9191, help="Port to listen on."),
    cfg.StrOpt(
        "auth_strategy",
        default="hmac",
        choices=[
            ("hmac", "every request is signed with the shared secret; its holders (the API nodes) may act for anyone"),
            (
                "keystone",
                "every request carries the user's Keystone token and the API node's "
                "service token; the registry acts for the user the token names, so "
                "an API node reaches no more than its users could",
            ),
            ("noauth", "no authentication: loopback only, for development"),
        ],
        help="How callers (the API nodes) prove who they are, and whom they act for.\n\n"
        "keystone validates tokens with keystonemiddleware, configured in "
        "[keystone_authtoken] of this file; a service token needs one of its "
        "service_token_roles (default: service). The API nodes set [registry_client] "
        "auth_strategy = keystone.\n\n"
        "Related options: shared_secret",
    ),
    cfg.StrOpt(
        "shared_secret",
        secret=True,
        help="Key of the HMAC-SHA256 request signatures; the API nodes have the same "
        "value in [registry_client] shared_secret. Use a long random string, for "
        "example the output of ``openssl rand -hex 32``.",
    ),
    cfg.StrOpt(
        "paste_config_file",
        help="Paste ini of the registry pipeline; default: the abbild-registry-paste.ini shipped with abbild.",
    ),
    cfg.IntOpt(
        "max_clock_skew",
        default=60,
        min=1,
        help="Seconds a signed request stays valid; older ones, and a second use of "
        "the same request within this window, are refused.",
    ),
    cfg.IntOpt(
        "max_request_body_size",
        default=16 << 20,
        min=1024,
        help="Largest request body, in bytes, the registry reads: its requests are JSON "
        "documents (an image's metadata). A larger one is refused with 413, before it is "
        "read when its Content-Length says so. The default holds an image with the API's "
        "default limits filled (image_property_quota = 128 values of "
        "max_property_value_length = 65,535 ASCII characters); raise it with those: an "
        "image whose metadata does not fit cannot be changed through the registry (the "
        "API answers 413 and says so).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(server_opts, group=GROUP)


def list_opts():
    return [(GROUP, server_opts)]
