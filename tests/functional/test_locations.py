"""Images registered by URL: the http store, the legacy PATCH location API (```glance
location-add``, ``location-delete``), API 2.17's ``POST/GET .../locations``,
``?prefer=`` between stores, and the guard against server-side request forgery."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import subprocess
import threading
import time

import pytest
import requests

from tests.functional.helpers import server_config, who
from tests.functional.test_clients_cli import executable

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}
PAYLOAD = os.urandom(3 << 20)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at every path, with HEAD and single Range support; counts GETs."""

    gets: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, body: bool) -> None:
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        start, end = 0, len(PAYLOAD) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), int(m.group(2) or end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.gets.append(self.path)
            self.wfile.write(PAYLOAD[start:end + 1])

    def do_HEAD(self):
        self._send(False)

    def do_GET(self):
        self._send(True)


@pytest.fixture(scope="module")
def web():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


# The test's own server runs on loopback, which the guard denies by default.
WEB_STORE = "[web]\nallowed_networks = 127.0.0.1/32\n"


@pytest.fixture(scope="module")
def url(server_factory, web):
    config = server_config(flavor="trusted-headers", default="show_multiple_locations = true",
                           extra_backends="web:http", stores=WEB_STORE)  # fmt: skip
    return server_factory("locations", config).url


def new_image(url, headers):
    resp = requests.post(f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def add_location(url, image_id, headers, location_url, **extra):
    change = {"op": "add", "path": "/locations/-", "value": {"url": location_url, "metadata": {}, **extra}}
    return requests.patch(f"{url}/v2/images/{image_id}", json=[change], headers={**headers, **PATCH})


def test_location_added_by_patch_activates_and_serves_the_data(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    resp = add_location(url, image_id, headers, f"{web}/cirros.img")
    assert resp.status_code == 200, resp.text
    image = resp.json()
    assert image["status"] == "active" and image["size"] == len(PAYLOAD)
    assert image["locations"] == [{"url": f"{web}/cirros.img", "metadata": {"store": "web"}}]
    data = requests.get(f"{url}/v2/images/{image_id}/file", headers=headers)
    assert data.status_code == 200 and data.content == PAYLOAD
    part = requests.get(f"{url}/v2/images/{image_id}/file", headers={**headers, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == PAYLOAD[10:20]


@pytest.fixture(scope="module")
def noauth_url(server_factory):
    config = server_config(default="show_multiple_locations = true", extra_backends="web:http", stores=WEB_STORE)
    return server_factory("locations-noauth", config).url


def test_glance_cli_location_commands_on_a_noauth_server(noauth_url, web, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)
    glance = [executable("glance"), "--os-image-url", noauth_url, "--os-auth-token", "x"]

    def run(*args):
        proc = subprocess.run(glance + list(args), env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # (glance image-create would upload its stdin, which is not a terminal here)
    image_id = new_image(noauth_url, {})
    out = run("location-add", image_id, "--url", f"{web}/by-url.img")
    assert re.search(r"\| status\s+\| active", out) and re.search(rf"\| size\s+\| {len(PAYLOAD)}", out)
    run("location-add", image_id, "--url", f"{web}/mirror.img")
    shown = requests.get(f"{noauth_url}/v2/images/{image_id}").json()
    assert [loc["url"] for loc in shown["locations"]] == [f"{web}/by-url.img", f"{web}/mirror.img"]
    run("location-delete", image_id, "--url", f"{web}/by-url.img")
    shown = requests.get(f"{noauth_url}/v2/images/{image_id}").json()
    assert [loc["url"] for loc in shown["locations"]] == [f"{web}/mirror.img"]
    out = tmp_path / "back.img"
    run("image-download", image_id, "--file", str(out))
    assert out.read_bytes() == PAYLOAD


def test_last_location_cannot_be_removed(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    assert add_location(url, image_id, headers, f"{web}/a.img").status_code == 200
    resp = requests.patch(f"{url}/v2/images/{image_id}", json=[{"op": "remove", "path": "/locations/0"}],
                          headers={**who(project, "admin"), **PATCH})  # fmt: skip
    assert resp.status_code == 403 and "last location" in resp.text


def test_location_with_another_size_conflicts(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    requests.put(f"{url}/v2/images/{image_id}/file", data=b"other data", headers={**headers, **OCTET})
    resp = add_location(url, image_id, headers, f"{web}/a.img")
    assert resp.status_code == 409 and "bytes" in resp.text


@pytest.mark.parametrize(
    "location, refusal",
    [
        ("http://169.254.169.254/latest/meta-data/", "Location refused"),
        ("http://127.0.0.2:9/x", "Location refused"),
        ("http://user:secret@example.invalid/x", "Location refused"),
        ("file:///etc/passwd", "No store here may read file URLs"),
        ("rbd://fsid/pool/image/snap", "No store here may read rbd URLs"),
    ],
)
def test_urls_a_user_may_not_register_are_400(url, project, location, refusal):
    image_id = new_image(url, who(project))
    resp = add_location(url, image_id, who(project), location)
    assert resp.status_code == 400, resp.text
    # Users learn that the URL was refused, not what the service's network looks like.
    assert refusal in resp.text
    assert "secret" not in resp.text and "denied network" not in resp.text and "127.0.0" not in resp.text
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(project)).json()["status"] == "queued"


def test_location_that_does_not_exist_is_404_and_image_stays_queued(url, web, project):
    image_id = new_image(url, who(project))
    resp = add_location(url, image_id, who(project), f"{web}/missing.img")
    assert resp.status_code == 404
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(project)).json()["status"] == "queued"


def _wait_for(url, image_id, headers, status, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = requests.get(f"{url}/v2/images/{image_id}", headers=headers).json()
        if image["status"] == status:
            return image
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} is {image['status']}, not {status}")


def test_post_locations_hashes_in_the_background(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    body = {"url": f"{web}/posted.img",
            "validation_data": {"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(PAYLOAD).hexdigest()}}
    resp = requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    image = _wait_for(url, image_id, headers, "active")
    assert image["size"] == len(PAYLOAD)
    assert image["os_hash_algo"] == "sha256" and image["os_hash_value"] == body["validation_data"]["os_hash_value"]
    assert image["checksum"] == hashlib.md5(PAYLOAD).hexdigest()
    # Locations are for services: a project member may read the image, not its locations.
    assert requests.get(f"{url}/v2/images/{image_id}/locations", headers=headers).status_code == 403
    service = who(project, "service")
    locations = requests.get(f"{url}/v2/images/{image_id}/locations", headers=service)
    assert locations.status_code == 200 and locations.json()[0]["url"] == body["url"]
    again = requests.post(f"{url}/v2/images/{image_id}/locations", json={"url": body["url"]}, headers=headers)
    assert again.status_code == 409  # only queued images


def test_post_locations_with_wrong_hash_leaves_the_image_queued(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    body = {"url": f"{web}/bad.img", "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "0" * 64}}
    assert requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=headers).status_code == 202
    time.sleep(1)
    _wait_for(url, image_id, headers, "queued")


@pytest.mark.parametrize(
    "body",
    [{}, {"url": ""}, {"url": "http://x", "extra": 1}, {"url": "http://x", "validation_data": {"os_hash_algo": "sha256"}},
     {"url": "http://x", "validation_data": {"os_hash_algo": "crc32", "os_hash_value": "00"}}],
)  # fmt: skip
def test_post_locations_bad_body_is_400(url, project, body):
    image_id = new_image(url, who(project))
    resp = requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=who(project))
    assert resp.status_code == 400, resp.text


def test_prefer_picks_the_store_to_read_from(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    assert requests.put(f"{url}/v2/images/{image_id}/file", data=PAYLOAD, headers={**headers, **OCTET}).status_code == 204
    path = f"/preferred-{image_id}.img"
    assert add_location(url, image_id, headers, web + path).status_code == 200
    assert _Handler.gets.count(path) == 1  # read once, to check it holds the image's data
    assert requests.get(f"{url}/v2/images/{image_id}/file", headers=headers).content == PAYLOAD
    assert _Handler.gets.count(path) == 1  # the local store comes first by default
    resp = requests.get(f"{url}/v2/images/{image_id}/file", params={"prefer": "web"}, headers=headers)
    assert resp.content == PAYLOAD and _Handler.gets.count(path) == 2
    bad = requests.get(f"{url}/v2/images/{image_id}/file", params={"prefer": "nowhere"}, headers=headers)
    assert bad.status_code == 400 and "nowhere" in bad.text


def test_a_service_registers_only_files_inside_a_store(noauth_url, server_factory):
    """noauth callers are administrators, whom the policy treats as services: they may
    register file:// locations, but only of files directly in a store's datadir."""
    image_id = new_image(noauth_url, {})
    resp = add_location(noauth_url, image_id, {}, "file:///etc/passwd")
    assert resp.status_code == 400 and "Location refused" in resp.text
    donor = new_image(noauth_url, {})
    assert requests.put(f"{noauth_url}/v2/images/{donor}/file", data=b"donor data", headers=OCTET).status_code == 204
    [location] = requests.get(f"{noauth_url}/v2/images/{donor}").json()["locations"]
    resp = add_location(noauth_url, image_id, {}, location["url"] + "/../../../../etc/passwd")
    assert resp.status_code == 400
    resp = add_location(noauth_url, image_id, {}, location["url"])
    assert resp.status_code == 200 and resp.json()["size"] == len(b"donor data")
