"""``GET /healthcheck``: 200 ``OK`` while the node should take traffic, 503 while the
operator's disable file exists (to drain a node behind a load balancer)."""

from __future__ import annotations

import os


def filter_factory(global_conf, **local_conf):
    disable_file = local_conf.get("disable_by_file_path")

    def make(app):
        def middleware(environ, start_response):
            if environ.get("PATH_INFO") != "/healthcheck":
                return app(environ, start_response)
            if disable_file and os.path.exists(disable_file):
                status, body = "503 Service Unavailable", b"DISABLED BY FILE"
            else:
                status, body = "200 OK", b"OK"
            start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

        return middleware

    return make
