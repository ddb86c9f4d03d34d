"""The API and abbild-registry as separate processes: a kill -9 of the registry (also in
the middle of an upload) gives clear 503s and never an active image with partial data;
after a restart of the registry the API carries on."""

from __future__ import annotations

import hashlib
import http.client
import os
import time

import requests

API_CONFIG = """\
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local

[database]
connection = sqlite:///{dir}/abbild.sqlite

[local]
datadir = {dir}/images
"""

JSON_PATCH = "application/openstack-images-v2.1-json-patch"


def _create(url: str, name: str) -> str:
    resp = requests.post(f"{url}/v2/images", json={"name": name, "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _upload(url: str, image_id: str, payload: bytes) -> requests.Response:
    return requests.put(
        f"{url}/v2/images/{image_id}/file", data=payload, headers={"Content-Type": "application/octet-stream"}
    )


def _files(data_dir) -> list[str]:
    return sorted(os.listdir(os.path.join(data_dir, "images")))


def _assert_unavailable(resp: requests.Response) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.text)
    assert "registry is unavailable" in resp.text, resp.text


def test_registry_killed_and_restarted(make_server, make_registry, tmp_path):
    data_dir = tmp_path / "data"
    os.makedirs(data_dir / "images")
    api_conf = data_dir / "abbild-api.conf"
    api_conf.write_text(API_CONFIG.format(dir=data_dir))
    registry = make_registry(data_dir, [str(api_conf)])
    # Fail fast while the registry is down: one retry, short pauses.
    registry.client_options = "retries = 1\nretry_backoff = 0.05\ntimeout = 10\n"
    registry.start()
    srv = make_server("--config-file", str(api_conf), "--config-file", registry.client_config(), data_dir=data_dir)
    srv.registry = registry  # with ABBILD_TEST_REGISTRY=http: this one, not a second
    srv.start()
    url = srv.url

    kept = os.urandom(1 << 20)
    kept_id = _create(url, "kept")
    assert _upload(url, kept_id, kept).status_code == 204

    # -- a kill -9 in the middle of an upload ------------------------------------------
    cut_id = _create(url, "cut")
    total, first = 12 << 20, 8 << 20
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.putrequest("PUT", f"/v2/images/{cut_id}/file")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(total))
    conn.endheaders()
    conn.send(os.urandom(first))
    assert requests.get(f"{url}/v2/images/{cut_id}").json()["status"] == "saving"
    registry.kill()
    conn.send(os.urandom(total - first))
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 503, body
    assert "registry is unavailable" in body, body
    assert not [f for f in _files(data_dir) if cut_id in f], "the upload's data must be removed"

    # -- while it is down: every call that needs metadata is a clear 503 ---------------
    _assert_unavailable(requests.get(f"{url}/v2/images"))
    _assert_unavailable(requests.get(f"{url}/v2/images/{kept_id}"))
    _assert_unavailable(requests.get(f"{url}/v2/images/{kept_id}/file"))
    _assert_unavailable(requests.post(f"{url}/v2/images", json={"name": "during"}))
    _assert_unavailable(requests.patch(f"{url}/v2/images/{kept_id}", data="[]", headers={"Content-Type": JSON_PATCH}))
    assert requests.get(f"{url}/healthcheck").status_code == 200  # the API itself lives on

    # -- back: the API carries on, on the connections it reopens ------------------------
    registry.start()
    images = {i["id"]: i for i in requests.get(f"{url}/v2/images").json()["images"]}
    assert images[kept_id]["status"] == "active"
    assert images[kept_id]["checksum"] == hashlib.md5(kept).hexdigest()
    assert requests.get(f"{url}/v2/images/{kept_id}/file").content == kept
    # Never active on partial data; the API returns the interrupted image to 'queued'
    # by itself once the registry answers again (it kept retrying in the background).
    cut = requests.get(f"{url}/v2/images/{cut_id}").json()
    assert cut["status"] != "active" and cut["size"] is None and cut["checksum"] is None
    later = _create(url, "later")
    assert _upload(url, later, b"after the outage").status_code == 204
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/v2/images/{cut_id}").json()["status"] != "queued":
        assert time.monotonic() < deadline, "the interrupted image stayed 'saving'"
        time.sleep(0.5)
    payload = os.urandom(2 << 20)
    assert _upload(url, cut_id, payload).status_code == 204
    cut = requests.get(f"{url}/v2/images/{cut_id}").json()
    assert cut["status"] == "active" and cut["checksum"] == hashlib.md5(payload).hexdigest()
    assert requests.get(f"{url}/v2/images/{cut_id}/file").content == payload
