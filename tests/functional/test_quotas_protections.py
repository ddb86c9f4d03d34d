"""Quotas (413 with a message naming the limit), ``/v2/info/usage`` and property
protections, over HTTP against a real server (trusted-headers flavour)."""

from __future__ import annotations

import os
import uuid

import pytest
import requests

from tests.functional.helpers import server_config, who

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}

PROTECTIONS = """
[^x_billing_]
create = admin
read = admin,billing
update = admin
delete = admin

[.*]
create = @
read = @
update = @
delete = @
"""


@pytest.fixture(scope="module")
def url(server_factory, tmp_path_factory):
    rules = tmp_path_factory.mktemp("protections") / "property-protections.conf"
    rules.write_text(PROTECTIONS)
    limits = (
        f"image_property_quota = 3\nimage_tag_quota = 2\nuser_storage_quota = 1MB\nproperty_protection_file = {rules}"
    )
    srv = server_factory("quotas", server_config(flavor="trusted-headers", default=limits))
    srv.images = srv.data_dir + "/images"
    return srv


def new_image(url, headers, **body):
    resp = requests.post(
        f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare", **body}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_property_quota_is_413(url, project):
    resp = requests.post(f"{url.url}/v2/images", json={"a": "1", "b": "2", "c": "3", "d": "4"}, headers=who(project))
    assert resp.status_code == 413
    assert "image_property_quota" in resp.text
    image_id = new_image(url.url, who(project), a="1", b="2", c="3")
    resp = requests.patch(
        f"{url.url}/v2/images/{image_id}",
        json=[{"op": "add", "path": "/d", "value": "4"}],
        headers={**who(project), **PATCH},
    )
    assert resp.status_code == 413 and "at most 3" in resp.text


def test_tag_quota_is_413_on_put_and_patch(url, project):
    image_id = new_image(url.url, who(project), tags=["a", "b"])
    resp = requests.put(f"{url.url}/v2/images/{image_id}/tags/c", headers=who(project))
    assert resp.status_code == 413 and "image_tag_quota" in resp.text
    resp = requests.patch(
        f"{url.url}/v2/images/{image_id}",
        json=[{"op": "replace", "path": "/tags", "value": ["a", "b", "c"]}],
        headers={**who(project), **PATCH},
    )
    assert resp.status_code == 413
    assert requests.put(f"{url.url}/v2/images/{image_id}/tags/a", headers=who(project)).status_code == 204


def test_storage_quota_stops_a_chunked_upload_and_keeps_nothing(url, project):
    first = new_image(url.url, who(project))
    resp = requests.put(f"{url.url}/v2/images/{first}/file", data=b"x" * 700_000, headers={**who(project), **OCTET})
    assert resp.status_code == 204
    second = new_image(url.url, who(project))

    def body():
        for _ in range(10):
            yield b"y" * 100_000

    resp = requests.put(f"{url.url}/v2/images/{second}/file", data=body(), headers={**who(project), **OCTET})
    assert resp.status_code == 413
    assert "user_storage_quota" in resp.text
    image = requests.get(f"{url.url}/v2/images/{second}", headers=who(project)).json()
    assert image["status"] == "queued" and image["size"] is None
    assert sorted(os.listdir(url.images)) == [first]  # nothing left of the cut-off upload
    usage = requests.get(f"{url.url}/v2/info/usage", headers=who(project)).json()["usage"]
    assert usage["image_size_total"] == {"limit": 1, "usage": 0}
    assert usage["image_count_total"] == {"limit": -1, "usage": 2}
    assert usage["image_count_uploading"] == {"limit": -1, "usage": 0}
    # Another project has its own room.
    other = f"p-{uuid.uuid4().hex[:8]}"
    third = new_image(url.url, who(other))
    resp = requests.put(f"{url.url}/v2/images/{third}/file", data=b"z" * 700_000, headers={**who(other), **OCTET})
    assert resp.status_code == 204


def test_declared_size_over_quota_is_refused_before_reading(url, project):
    image_id = new_image(url.url, who(project))
    resp = requests.put(
        f"{url.url}/v2/images/{image_id}/file", data=b"x" * ((1 << 20) + 1), headers={**who(project), **OCTET}
    )
    assert resp.status_code == 413


def test_protected_property_hidden_and_guarded(url, project):
    admin, member, billing = who(project, "admin", "member", "reader"), who(project), who(project, "billing", "reader")
    resp = requests.post(f"{url.url}/v2/images", json={"x_billing_code": "42"}, headers=member)
    assert resp.status_code == 403 and "x_billing_code" in resp.text
    image_id = new_image(url.url, admin, x_billing_code="42", note="open")
    shown = requests.get(f"{url.url}/v2/images/{image_id}", headers=member).json()
    assert "x_billing_code" not in shown and shown["note"] == "open"
    assert requests.get(f"{url.url}/v2/images/{image_id}", headers=billing).json()["x_billing_code"] == "42"
    listed = requests.get(f"{url.url}/v2/images", headers=member).json()["images"]
    assert all("x_billing_code" not in i for i in listed)
    resp = requests.patch(
        f"{url.url}/v2/images/{image_id}",
        json=[{"op": "replace", "path": "/x_billing_code", "value": "43"}],
        headers={**member, **PATCH},
    )
    assert resp.status_code == 403
    resp = requests.patch(
        f"{url.url}/v2/images/{image_id}",
        json=[{"op": "replace", "path": "/note", "value": "x"}],
        headers={**member, **PATCH},
    )
    assert resp.status_code == 200 and "x_billing_code" not in resp.json()
    assert requests.get(f"{url.url}/v2/images/{image_id}", headers=admin).json()["x_billing_code"] == "42"


def test_concurrent_uploads_stay_within_the_storage_quota(url, project):
    """Four uploads that each fit alone, finishing at the same moment: only as many as
    the quota holds become active, the others are 413 and leave nothing behind."""
    import concurrent.futures
    import threading

    piece = 200 << 10  # 4 x 400 KiB against 1 MiB: two fit
    images = [new_image(url.url, who(project)) for _ in range(4)]
    all_sent_but_the_end = threading.Barrier(4)

    def body():
        yield b"x" * piece
        all_sent_but_the_end.wait(30)
        yield b"y" * piece

    def upload(image_id):
        return requests.put(
            f"{url.url}/v2/images/{image_id}/file", data=body(), headers={**who(project), **OCTET}
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(upload, images))
    assert statuses == [204, 204, 413, 413]
    shown = [requests.get(f"{url.url}/v2/images/{i}", headers=who(project)).json() for i in images]
    assert sum(image["size"] or 0 for image in shown if image["status"] == "active") == 4 * piece
    assert sorted(image["status"] for image in shown) == ["active", "active", "queued", "queued"]
    files = set(os.listdir(url.images))
    assert {i["id"] for i in shown if i["status"] == "active"} <= files
    assert not {i["id"] for i in shown if i["status"] == "queued"} & files
