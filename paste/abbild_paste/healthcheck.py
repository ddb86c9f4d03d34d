"""``GET /healthcheck``: 200 ``OK`` while the node should take traffic, 503 while the
operator's disable file exists (to drain a node behind a load balancer)."""

from __future__ import annotations

import os

from abbild import config

DEFAULT_DISABLE_FILE = "healthcheck_disable"


def filter_factory(global_conf, **local_conf):
    # The drain file lives with the rest of the node's configuration, wherever
    # $ABBILD_CONFIG_DIR puts it; a relative path in the paste ini is taken from there too.
    disable_file = os.path.join(config.config_dir(), local_conf.get("disable_by_file_path") or DEFAULT_DISABLE_FILE)

    def make(app):
        def middleware(environ, start_response):
            if environ.get("PATH_INFO") != "/healthcheck":
                return app(environ, start_response)
            if os.path.exists(disable_file):
                status, body = "503 Service Unavailable", b"DISABLED BY FILE"
            else:
                status, body = "200 OK", b"OK"
            start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

        return middleware

    return make
