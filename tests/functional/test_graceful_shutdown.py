"""``abbild api`` stops gracefully on SIGTERM: it stops accepting connections, lets an
upload in progress finish within ``graceful_shutdown_timeout``, and rolls back one that
is still running after that (image back to 'queued', no partial data) instead of being
killed in the middle of it.

Also covers what ``abbild api`` logs: oslo.log's OpenStack format, and access lines
carrying the request id."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import re
import select
import signal
import sqlite3
import time

import pytest
import requests

from tests.functional.conftest import ApiProcess, free_port
from tests.functional.helpers import serving, wait_for, who

BLOCK = os.urandom(64 << 10)


class API(ApiProcess):
    """An ``abbild api`` process with its own config dir (SQLite + filesystem store)."""

    def __init__(self, base, graceful_shutdown_timeout: int, more: str = "", flavor: str = "noauth") -> None:
        port = free_port()
        super().__init__(
            base,
            port,
            f"[DEFAULT]\nbind_port = {port}\nworkers = 1\n"
            f"graceful_shutdown_timeout = {graceful_shutdown_timeout}\n"
            f"log_file = {base}/abbild-api.log\n"
            f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n"
            f"[paste_deploy]\nflavor = {flavor}\n"
            f"[local]\ndatadir = {base}/images\n{more}",
        )

    def status(self, image_id: str) -> str:
        """Read from the database itself: the server may be gone."""
        with sqlite3.connect(self.base / "abbild.sqlite") as db:
            return db.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()[0]

    def data_files(self) -> list[str]:
        return os.listdir(self.base / "images") if (self.base / "images").exists() else []


@pytest.fixture
def start_api(tmp_path):
    apis = []

    def start(graceful_shutdown_timeout: int, **kwargs) -> API:
        apis.append(API(tmp_path, graceful_shutdown_timeout, **kwargs))
        return apis[-1]

    yield start
    for api in apis:
        api.stop(signal.SIGKILL)


class SlowUpload:
    """A PUT of *total* bytes sent in 64 KiB blocks, one every *pause* seconds, that
    stops early if the server answers before the body is complete."""

    def __init__(self, url: str, image_id: str, total: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.putrequest("PUT", f"/v2/images/{image_id}/file")
        self.conn.putheader("Content-Type", "application/octet-stream")
        self.conn.putheader("Content-Length", str(total))
        self.conn.endheaders()
        self.total, self.sent, self.sha512 = total, 0, hashlib.sha512()

    def send(self, nbytes: int, pause: float) -> bool:
        """Send up to *nbytes* more; False once the server has answered."""
        end = min(self.total, self.sent + nbytes)
        while self.sent < end:
            if select.select([self.conn.sock], [], [], 0)[0]:
                return False
            block = BLOCK[: end - self.sent]
            self.conn.send(block)
            self.sha512.update(block)
            self.sent += len(block)
            time.sleep(pause)
        return True

    def response(self) -> http.client.HTTPResponse:
        return self.conn.getresponse()


def create_image(url: str) -> str:
    resp = requests.post(f"{url}/v2/images", json={"name": "slow", "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_sigterm_lets_a_running_upload_finish(start_api):
    api = start_api(graceful_shutdown_timeout=30)
    image_id = create_image(api.url)
    upload = SlowUpload(api.url, image_id, total=4 << 20)
    upload.send(1 << 20, pause=0.01)
    wait_for(lambda: api.status(image_id) == "saving", 10)

    api.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: not api.healthy(), 10, "refusing connections after SIGTERM")
    assert upload.send(upload.total, pause=0.02), "the server cut the upload short"
    resp = upload.response()
    assert resp.status == 204, resp.read()
    assert api.proc.wait(30) == 0
    assert api.status(image_id) == "active"
    with sqlite3.connect(api.base / "abbild.sqlite") as db:
        [(stored_hash,)] = db.execute("SELECT os_hash_value FROM images WHERE id = ?", (image_id,))
    assert stored_hash == upload.sha512.hexdigest()


def test_upload_still_running_after_the_timeout_is_rolled_back(start_api):
    api = start_api(graceful_shutdown_timeout=2)
    image_id = create_image(api.url)
    upload = SlowUpload(api.url, image_id, total=1 << 30)  # would take hours at this pace
    upload.send(1 << 20, pause=0.01)
    wait_for(lambda: api.status(image_id) == "saving", 10)
    wait_for(lambda: any(image_id in f for f in api.data_files()), 10, "partial data written")

    terminated = time.monotonic()
    api.proc.send_signal(signal.SIGTERM)
    assert not upload.send(upload.total, pause=0.05), "the upload was never aborted"
    aborted_after = time.monotonic() - terminated
    resp = upload.response()
    assert resp.status == 400, resp.read()  # the body ended short of its Content-Length
    assert 2 <= aborted_after < 6
    assert api.proc.wait(10) == 0
    # Rolled back by the worker itself, not left for crash recovery at the next start.
    assert api.status(image_id) == "queued"
    assert [f for f in api.data_files() if image_id in f] == []
    assert "aborting 1 upload(s)" in api.log() and "SIGKILL" not in api.log()


def test_log_lines_are_in_openstack_format_with_request_ids(start_api):
    api = start_api(graceful_shutdown_timeout=1)
    requests.get(
        f"{api.url}/v2/images/00000000-0000-0000-0000-000000000000",
        headers={"x-openstack-request-id": "req-graceful-test"},
    )
    api.proc.send_signal(signal.SIGTERM)
    assert api.proc.wait(20) == 0
    line = next(line for line in api.log().splitlines() if "req-graceful-test" in line)
    # asctime.msecs pid LEVEL logger [global_request_id request_id user_identity] message
    pattern = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \d+ INFO gunicorn\.access \[- req-graceful-test [^]]*\] "
    assert re.match(pattern + r'127\.0\.0\.1 "GET /v2/images/0{8}-0{4}-0{4}-0{4}-0{12} HTTP/1\.1" status: 404', line)


class _SlowWeb(http.server.BaseHTTPRequestHandler):
    """Serves 4 MiB at every path, 256 KiB every 0.2 s (about 3 s in all)."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(4 << 20))
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()
        for _ in range(16):
            self.wfile.write(b"w" * (256 << 10))
            time.sleep(0.2)


@pytest.fixture
def slow_web():
    with serving(_SlowWeb) as url:
        yield url


WEB_STORE = (
    "[DEFAULT]\nenabled_backends = local:filesystem, web:http\ndefault_backend = local\n"
    "[web]\nallowed_networks = 127.0.0.1/32\n"
)


@pytest.mark.parametrize("grace, outcome", [(30, "active"), (1, "queued")])
def test_sigterm_waits_for_background_imports_or_rolls_them_back(start_api, slow_web, grace, outcome):
    """A location import (POST .../locations, answered 202) goes on after its request:
    shutdown lets it finish within the grace period, else stops and rolls it back
    itself, leaving nothing for the next start to recover."""
    api = start_api(graceful_shutdown_timeout=grace, more=WEB_STORE, flavor="trusted-headers")
    owner = who("p-graceful")
    resp = requests.post(f"{api.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=owner)
    image_id = resp.json()["id"]
    resp = requests.post(
        f"{api.url}/v2/images/{image_id}/locations", json={"url": f"{slow_web}/{image_id}.img"}, headers=owner
    )
    assert resp.status_code == 202, resp.text
    wait_for(lambda: api.status(image_id) == "saving", 10)
    api.proc.send_signal(signal.SIGTERM)
    assert api.proc.wait(grace + 30) == 0
    assert api.status(image_id) == outcome
