"""Gives every request an id (``req-<uuid>``), reusing a sane client-supplied one, and
returns it as ``x-openstack-request-id`` on every response."""

from __future__ import annotations

import uuid

HEADER = "x-openstack-request-id"
MAX_LENGTH = 64


def filter_factory(global_conf, **local_conf):
    def make(app):
        def middleware(environ, start_response):
            request_id = environ.get("HTTP_X_OPENSTACK_REQUEST_ID") or f"req-{uuid.uuid4()}"
            if len(request_id) > MAX_LENGTH:
                body = f"x-openstack-request-id is longer than {MAX_LENGTH} characters".encode()
                start_response(
                    "431 Request Header Fields Too Large",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                )
                return [body]
            if not request_id.startswith("req-"):
                request_id = f"req-{request_id}"
            environ["abbild.request_id"] = request_id

            def start(status, headers, exc_info=None):
                headers = [(k, v) for k, v in headers if k.lower() != HEADER]
                headers.append((HEADER, request_id))
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            return app(environ, start)

        return middleware

    return make
