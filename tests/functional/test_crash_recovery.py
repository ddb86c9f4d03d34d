"""A kill -9 of the server in the middle of an upload: no active image with partial
data, and after a restart no image stuck in 'saving' and no orphaned data."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time

import requests


def _create(url: str) -> str:
    resp = requests.post(f"{url}/v2/images", json={"name": "crash", "disk_format": "raw", "container_format": "bare"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _files(data_dir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(data_dir, "images")))


def _slow_upload(url: str, image_id: str, total: int, sent: threading.Event) -> None:
    """Send part of a *total*-byte body, then keep the connection open until killed."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("PUT", f"/v2/images/{image_id}/file")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(total))
    conn.endheaders()
    block = os.urandom(1 << 20)
    try:
        for _ in range(8):
            conn.send(block)
        sent.set()
        while True:  # the server dies under us
            time.sleep(0.05)
            conn.send(block[:1024])
    except OSError:
        pass
    finally:
        sent.set()
        conn.close()


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_mid_upload_then_restart(make_server, tmp_path):
    data_dir = str(tmp_path / "data")
    srv = make_server(data_dir=data_dir).start()
    image_id = _create(srv.url)
    sent = threading.Event()
    uploader = threading.Thread(target=_slow_upload, args=(srv.url, image_id, 1 << 30, sent), daemon=True)
    uploader.start()
    assert sent.wait(30)
    assert _wait_for(lambda: requests.get(f"{srv.url}/v2/images/{image_id}").json()["status"] == "saving")
    assert _wait_for(lambda: any(image_id in f for f in _files(data_dir))), "no partial data was written"

    srv.kill()  # SIGKILL to master and worker: nothing gets to clean up
    uploader.join(10)
    assert any(image_id in f for f in _files(data_dir)), "the partial file should survive the kill"

    srv = make_server(data_dir=data_dir).start()
    image = requests.get(f"{srv.url}/v2/images/{image_id}").json()
    assert image["status"] == "queued"
    assert image["size"] is None and image["checksum"] is None
    assert [f for f in _files(data_dir) if image_id in f] == [], "orphaned data left behind"

    # The image is usable again: a full upload activates it with the right hashes.
    payload = os.urandom(3 << 20)
    resp = requests.put(
        f"{srv.url}/v2/images/{image_id}/file", data=payload, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status_code == 204, resp.text
    image = requests.get(f"{srv.url}/v2/images/{image_id}").json()
    assert image["status"] == "active"
    assert image["checksum"] == hashlib.md5(payload).hexdigest()
    assert requests.get(f"{srv.url}/v2/images/{image_id}/file").content == payload
