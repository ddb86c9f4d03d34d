"""The periodic processes inside the API process: with their intervals set, an
``abbild serve`` scrubs delayed deletes, purges old rows and audits by itself, without
a cron command, and reports each pass in its log."""

from __future__ import annotations

import os
import sqlite3

import requests

from tests.functional.helpers import server_config, wait_for


def test_the_api_process_scrubs_and_purges_by_itself(server_factory):
    settings = "delayed_delete = true\nscrub_time = 1\nscrub_interval = 1\npurge_interval = 1\npurge_age_in_days = 0\naudit_interval = 1\n"
    srv = server_factory("periodic", server_config(default=settings))
    resp = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"})
    image_id = resp.json()["id"]
    data = os.urandom(100_000)
    headers = {"Content-Type": "application/octet-stream"}
    assert requests.put(f"{srv.url}/v2/images/{image_id}/file", data=data, headers=headers).status_code == 204
    data_file = os.path.join(srv.data_dir, "images", image_id)
    assert os.path.exists(data_file)

    assert requests.delete(f"{srv.url}/v2/images/{image_id}").status_code == 204
    assert requests.get(f"{srv.url}/v2/images/{image_id}").status_code == 404
    assert os.path.exists(data_file), "a delayed delete keeps the data until the scrubber comes"

    def row() -> tuple | None:
        with sqlite3.connect(os.path.join(srv.data_dir, "abbild.sqlite")) as db:
            return db.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()

    # The scrubber deletes the data and the image; then the purge removes its row and
    # keeps its id taken.
    wait_for(lambda: not os.path.exists(data_file), timeout=30, what="the scrubber deleting the data")
    wait_for(lambda: row() is None, timeout=30, what="the purge removing the row")
    again = requests.post(
        f"{srv.url}/v2/images", json={"id": image_id, "disk_format": "raw", "container_format": "bare"}
    )
    assert again.status_code == 409
    log = open(srv.log).read()
    assert "scrub: " in log and "purge: " in log and "audit: " in log
