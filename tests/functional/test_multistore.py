"""Two named filesystem stores: store choice on upload, /v2/info/stores, and deleting an
image's data from one store."""

from __future__ import annotations

import os
import pathlib

import pytest
import requests

OCTET = {"Content-Type": "application/octet-stream"}


CONFIG = """
[DEFAULT]
enabled_backends = fast:filesystem, slow:filesystem
default_backend = slow
[database]
connection = sqlite:///{dir}/abbild.sqlite
[fast]
datadir = {dir}/fast
description = Fast disks
weight = 10
[slow]
datadir = {dir}/slow
"""


@pytest.fixture(scope="module")
def two_stores(server_factory):
    srv = server_factory("multistore", CONFIG)
    return srv, pathlib.Path(srv.data_dir)


def _image(url: str) -> str:
    return requests.post(f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()["id"]


def test_info_stores_lists_both_with_the_default(two_stores):
    srv, _ = two_stores
    stores = requests.get(f"{srv.url}/v2/info/stores").json()["stores"]
    assert stores == [
        {"id": "fast", "description": "Fast disks"},
        {"id": "slow", "description": "", "default": "true"},
    ]
    detail = {s["id"]: s for s in requests.get(f"{srv.url}/v2/info/stores/detail").json()["stores"]}
    assert detail["fast"]["type"] == "filesystem" and detail["fast"]["weight"] == 10
    assert detail["fast"]["properties"]["data_dir"].endswith("/fast")


def test_create_announces_the_store_ids(two_stores):
    srv, _ = two_stores
    resp = requests.post(f"{srv.url}/v2/images", json={})
    assert resp.headers["OpenStack-image-store-ids"] == "fast,slow"


@pytest.mark.parametrize("header,store", [({}, "slow"), ({"X-Image-Meta-Store": "fast"}, "fast")])
def test_upload_goes_to_the_chosen_store(two_stores, header, store):
    srv, base = two_stores
    image_id = _image(srv.url)
    resp = requests.put(f"{srv.url}/v2/images/{image_id}/file", data=b"abc", headers={**OCTET, **header})
    assert resp.status_code == 204
    assert requests.get(f"{srv.url}/v2/images/{image_id}").json()["stores"] == store
    assert os.path.exists(base / store / image_id)


def test_unknown_store_is_400_and_the_image_stays_queued(two_stores):
    srv, _ = two_stores
    image_id = _image(srv.url)
    resp = requests.put(
        f"{srv.url}/v2/images/{image_id}/file", data=b"abc", headers={**OCTET, "X-Image-Meta-Store": "nope"}
    )
    assert resp.status_code == 400 and "nope" in resp.text
    assert requests.get(f"{srv.url}/v2/images/{image_id}").json()["status"] == "queued"


def test_delete_from_store_rules(two_stores):
    srv, base = two_stores
    image_id = _image(srv.url)
    assert requests.delete(f"{srv.url}/v2/stores/slow/{image_id}").status_code == 409  # not active
    requests.put(f"{srv.url}/v2/images/{image_id}/file", data=b"abc", headers=OCTET)
    assert requests.delete(f"{srv.url}/v2/stores/nope/{image_id}").status_code == 409  # unknown store
    assert requests.delete(f"{srv.url}/v2/stores/fast/{image_id}").status_code == 404  # no data there
    resp = requests.delete(f"{srv.url}/v2/stores/slow/{image_id}")  # the only copy
    assert resp.status_code == 403 and "delete the image instead" in resp.text
    assert os.path.exists(base / "slow" / image_id)
    assert requests.delete(f"{srv.url}/v2/stores/slow/{'0' * 8}-0000-0000-0000-{'0' * 12}").status_code == 404
