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


def wait_import_done(url: str, image_id: str, headers: dict | None = None, timeout: float = 60) -> dict:
    """The image once its import has ended: no lock holds it, and its tasks have
    settled. The task settles last (the job ends the import while its task is still
    at work, the only time a keystone-mode registry lets it), so a client waits for
    both."""
    import requests

    def get(path: str) -> dict:
        resp = requests.get(f"{url}/v2/images/{image_id}{path}", headers=headers or {}, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def ended() -> bool:
        if get("").get("os_glance_import_task"):
            return False
        return all(task["status"] in ("success", "failure") for task in get("/tasks")["tasks"])

    wait_for(ended, timeout, f"the import of image {image_id} to end")
    return get("")


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
