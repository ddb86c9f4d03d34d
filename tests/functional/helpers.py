"""Small helpers shared by functional test modules (import them; this is no test module)."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator


def server_config(*, flavor: str = "noauth", default: str = "", stores: str = "", extra_backends: str = "") -> str:
    """An abbild-api.conf for ``server_factory``: SQLite and the filesystem store ``local``
    in the server's own ``{dir}``. *default* adds ``[DEFAULT]`` lines, *extra_backends*
    more ``enabled_backends`` (``"web:http"``), *stores* their sections."""
    backends = ", ".join(b for b in ("local:filesystem", extra_backends) if b)
    return f"""
[DEFAULT]
enabled_backends = {backends}
default_backend = local
node_staging_uri = file://{{dir}}/staging
{default}
[database]
connection = sqlite:///{{dir}}/abbild.sqlite
[paste_deploy]
flavor = {flavor}
[local]
datadir = {{dir}}/images
{stores}
"""


def who(project: str, *roles: str) -> dict:
    """The trusted headers of a caller of *project* (a project member by default)."""
    return {
        "X-Identity-Status": "Confirmed",
        "X-User-Id": f"u-{project}",
        "X-Project-Id": project,
        "X-Roles": ",".join(roles or ("member", "reader")),
    }


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll *condition* until it holds; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threading HTTP server on a free loopback port answering with *handler*: its URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
