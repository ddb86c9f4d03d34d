"""Images registered by URL whose web server answers oddly, seen through the API."""

from __future__ import annotations

import http.server
import os
import re

import pytest
import requests

from tests.functional.helpers import server_config, serving

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
PAYLOAD = os.urandom(100_000)


class _SuperscriptLength(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD (Range-capable), every answer with ``Content-Length: ²``:
    ``str.isdigit()`` says yes to it, ``int()`` does not."""

    def log_message(self, *args):
        pass

    def _answer(self, body: bool) -> None:
        data = PAYLOAD
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match[1]), int(match[2] or len(PAYLOAD) - 1)
            data = PAYLOAD[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "²")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@pytest.fixture(scope="module")
def odd_web():
    with serving(_SuperscriptLength) as url:
        yield url


@pytest.fixture(scope="module")
def url(server_factory):
    config = server_config(
        default="show_multiple_locations = true",
        extra_backends="web:http",
        stores="[web]\nallowed_networks = 127.0.0.1/32\n",
    )
    return server_factory("locations-odd", config).url


def test_superscript_content_length_is_no_length_not_a_500(url, odd_web):
    image_id = requests.post(f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()["id"]
    change = [{"op": "add", "path": "/locations/-", "value": {"url": f"{odd_web}/img", "metadata": {}}}]
    resp = requests.patch(f"{url}/v2/images/{image_id}", json=change, headers=PATCH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "active" and resp.json()["size"] == len(PAYLOAD)
    data = requests.get(f"{url}/v2/images/{image_id}/file")
    assert data.status_code == 200 and data.content == PAYLOAD
