"""abbild-api deployed under Apache httpd + mod_wsgi (``abbild_cmd.wsgi:application``),
driven by python-glanceclient: a chunked upload of 1 GiB made up on the fly, then its
download, hashed on both sides while the bytes stream; and some of the glanceclient
tests, pointed at Apache.

tools/apache-up.sh installs what is missing and starts Apache on a loopback port; the
session's fixture stops it. Without Apache the tests skip, except under CI=true.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from glanceclient import Client

REPO = Path(__file__).resolve().parents[2]
BIG = 1 << 30
BLOCK = 1 << 20

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


class Apache:
    """The running deployment: its URL and the data dir the tests may look into."""

    def __init__(self, url: str, scratch: str) -> None:
        self.url = url
        self.data_dir = os.path.join(scratch, "data")


@pytest.fixture(scope="module")
def server():
    # Each xdist worker gets its own Apache (port and scratch dir), so neither stops
    # the other's.
    worker_id = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker_id.removeprefix("gw"))
    env = dict(
        os.environ,
        ABBILD_APACHE_PORT=str(9480 + index),
        ABBILD_APACHE_DIR=f"/tmp/abbild-apache-{worker_id}",
        PYTHON=sys.executable,
    )
    up = subprocess.run(["bash", REPO / "tools/apache-up.sh"], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        reason = f"Apache + mod_wsgi could not be started (tools/apache-up.sh):\n{up.stderr[-3000:]}"
        subprocess.run(["bash", REPO / "tools/apache-down.sh"], env=env, timeout=60)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    values = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    yield Apache(values["ABBILD_APACHE_URL"], values["ABBILD_APACHE_DIR"])
    subprocess.run(["bash", REPO / "tools/apache-down.sh"], env=env, timeout=60)


@pytest.fixture(scope="module")
def glance(server):
    return Client("2", endpoint=server.url, token="x")


class GeneratedImage(io.RawIOBase):
    """*size* bytes made up while they are read (never held in memory), hashed as they
    go. Each 1 MiB block starts with its number, so a lost, repeated or reordered
    block changes the hashes. *halfway* runs once, when half the bytes are read."""

    def __init__(self, size: int, halfway) -> None:
        self.size, self.position, self.halfway = size, 0, halfway
        self.noise = os.urandom(BLOCK)
        self.sha256, self.sha512 = hashlib.sha256(), hashlib.sha512()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.halfway and self.position >= self.size // 2:
            self.halfway, halfway = None, self.halfway
            halfway()
        n = min(BLOCK - self.position % BLOCK, self.size - self.position, BLOCK if n < 0 else n)
        if n <= 0:
            return b""
        block_number, offset = divmod(self.position, BLOCK)
        block = (block_number.to_bytes(8, "big") + self.noise[8:])[offset : offset + n]
        self.sha256.update(block)
        self.sha512.update(block)
        self.position += n
        return block


def test_chunked_1gib_upload_and_download(glance, server):
    image = glance.images.create(name="apache-1gib", disk_format="raw", container_format="bare")
    seen_while_sending = {}

    def look_at_the_server():
        # If Apache or mod_wsgi buffered the chunked body, abbild would not have seen a
        # byte yet: the image would still be 'queued' with no data on disk.
        seen_while_sending["status"] = requests.get(f"{server.url}/v2/images/{image.id}", timeout=10).json()["status"]
        seen_while_sending["on_disk"] = sum(p.stat().st_size for p in Path(server.data_dir).rglob(f"*{image.id}*"))

    source = GeneratedImage(BIG, halfway=look_at_the_server)
    started = time.monotonic()
    # No image_size: glanceclient sends the file object as a chunked body.
    glance.images.upload(image.id, source)
    upload_seconds = time.monotonic() - started

    assert seen_while_sending["status"] == "saving"
    assert seen_while_sending["on_disk"] > 0
    uploaded = glance.images.get(image.id)
    assert (uploaded.status, uploaded.size) == ("active", BIG)
    assert uploaded.os_hash_algo == "sha512" and uploaded.os_hash_value == source.sha512.hexdigest()

    started, received, sha256 = time.monotonic(), 0, hashlib.sha256()
    for chunk in glance.images.data(image.id):  # glanceclient checks os_hash_value as it goes
        sha256.update(chunk)
        received += len(chunk)
    download_seconds = time.monotonic() - started

    assert received == BIG
    assert sha256.hexdigest() == source.sha256.hexdigest()
    print(
        f"\nApache + mod_wsgi, 1 GiB: chunked upload {upload_seconds:.1f} s ({BIG / upload_seconds / 2**20:.0f} MiB/s), "
        f"download {download_seconds:.1f} s ({BIG / download_seconds / 2**20:.0f} MiB/s)"
    )
    glance.images.delete(image.id)


def test_request_ids_reach_the_access_log(server):
    resp = requests.get(f"{server.url}/v2/images", headers={"x-openstack-request-id": "req-through-apache"}, timeout=10)
    assert resp.headers["x-openstack-request-id"] == "req-through-apache"
    access_log = Path(server.data_dir).parent / "server" / "access_log"
    deadline = time.monotonic() + 5
    while "req-through-apache" not in access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "req-through-apache" in access_log.read_text()


def test_versions_links_ignore_the_host_header(server):
    """Apache derives SERVER_NAME, and SERVER_PORT, from the Host header a client sends
    (UseCanonicalName Off); the links name the address and port it really listens on."""
    headers = {"Host": "evil.example:666", "X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.example"}
    for path in ("/", "/versions"):
        resp = requests.get(f"{server.url}{path}", headers=headers, timeout=10)
        assert {link["href"] for v in resp.json()["versions"] for link in v["links"]} == {f"{server.url}/v2/"}


# -- the glanceclient tests, against Apache ---------------------------------------------------
# The module is loaded again under another name, so its tests and fixtures run here with
# this module's ``server`` fixture (Apache) instead of ``abbild serve``.

_spec = importlib.util.spec_from_file_location(
    "glanceclient_tests_on_apache", Path(__file__).with_name("test_clients_glanceclient.py")
)
_glanceclient_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_glanceclient_tests)

payload, tag, active_image, five_images = (
    _glanceclient_tests.payload,
    _glanceclient_tests.tag,
    _glanceclient_tests.active_image,
    _glanceclient_tests.five_images,
)
test_versions_list_and_has_version = _glanceclient_tests.test_versions_list_and_has_version
test_stores_and_import_info = _glanceclient_tests.test_stores_and_import_info
test_create_with_properties = _glanceclient_tests.test_create_with_properties
test_upload_from_file_sets_size_and_hashes = _glanceclient_tests.test_upload_from_file_sets_size_and_hashes
test_download_round_trip = _glanceclient_tests.test_download_round_trip
test_range_download = _glanceclient_tests.test_range_download
test_download_verifies_os_hash_value = _glanceclient_tests.test_download_verifies_os_hash_value
test_list_follows_next_links = _glanceclient_tests.test_list_follows_next_links
test_delete_removes_data = _glanceclient_tests.test_delete_removes_data
