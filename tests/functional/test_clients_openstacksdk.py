"""openstacksdk against a real ``abbild serve`` over HTTP, connected without Keystone.

Every test works on images carrying its own unique tag, so tests can share the
session's server (and run in any order, on any xdist worker)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import openstack
import pytest
from openstack import exceptions
from openstack.image.v2.image import Image

from tests import disk_images

SIZE = 2 * 1024 * 1024 + 321

# The SDK warns about its own deprecations (RemovedInSDK*Warning are PendingDeprecationWarnings).
pytestmark = [
    pytest.mark.filterwarnings("ignore::openstack.warnings.OpenStackDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]


@pytest.fixture(scope="module")
def conn(server):
    return openstack.connect(auth_type="none", auth={"endpoint": server.url})


@pytest.fixture(scope="module")
def payload():
    return os.urandom(SIZE)


@pytest.fixture(scope="module")
def payload_file(payload, tmp_path_factory):
    path = tmp_path_factory.mktemp("sdk") / "disk.raw"
    path.write_bytes(payload)
    return path


@pytest.fixture
def tag():
    return f"sdk-{uuid.uuid4().hex}"


def create(conn, tag, **attrs):
    """A queued image, created as the SDK's own create_image() does, without its extra properties."""
    attrs.setdefault("name", tag)
    attrs.setdefault("disk_format", "raw")
    attrs.setdefault("container_format", "bare")
    return Image.new(tags=[tag], **attrs).create(conn.image)


@pytest.fixture
def active_image(conn, tag, payload_file):
    """An image created and uploaded from a file; the SDK checks abbild's md5 against the file's."""
    image = conn.image.create_image(
        tag,
        filename=str(payload_file),
        disk_format="raw",
        container_format="bare",
        tags=[tag],
        properties={"foo": "bar"},
        validate_checksum=True,
    )
    return conn.image.get_image(image.id)


def stored_file(server, image_id) -> Path:
    [path] = [p for p in Path(server.data_dir).rglob(image_id) if p.is_file()]
    return path


# -- connecting and discovery -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        lambda url: dict(auth_type="none", auth={"endpoint": url}),
        lambda url: dict(auth_type="none", image_endpoint_override=url),
        # README.md's snippet
        lambda url: dict(auth_type="admin_token", auth={"endpoint": url, "token": "x"}, image_endpoint_override=url),
    ],
    ids=["none", "none+override", "admin_token"],
)
def test_connect_without_keystone_discovers_v2(server, tag, kwargs):
    conn = openstack.connect(**kwargs(server.url))
    assert conn.image.get_endpoint() == f"{server.url}/v2/"  # found through the 300 versions document
    assert conn.image.get_api_major_version() == (2, 0)
    image = create(conn, tag)
    assert [i.id for i in conn.image.images(tag=tag)] == [image.id]


def test_schemas(conn):
    image = conn.image.get_image_schema()
    assert image.properties["min_ram"] == {
        "type": "integer",
        "minimum": 0,
        "description": "Amount of ram (in MB) required to boot image.",
    }
    assert image.additional_properties == {"type": "string"}
    assert conn.image.get_images_schema().properties["images"]["type"] == "array"
    assert conn.image.get_member_schema().properties["status"]["enum"] == ["pending", "accepted", "rejected"]


def test_stores_and_import_info(conn):
    [store] = conn.image.stores()
    assert (store.id, store.is_default) == ("local", True)
    assert conn.image.get_import_info().import_methods["value"] == ["glance-direct", "web-download", "copy-image"]


# -- create, upload, download -----------------------------------------------------------------


def test_create_with_properties(conn, tag):
    image = create(
        conn,
        tag,
        min_disk=3,
        min_ram=256,
        visibility="private",
        is_protected=False,
        os_distro="cirros",
        properties={"color": "red"},
    )
    image = conn.image.get_image(image.id)
    assert (image.status, image.visibility, image.min_disk, image.min_ram) == ("queued", "private", 3, 256)
    assert (image.os_distro, image.properties["color"], image.tags) == ("cirros", "red", [tag])
    assert image.size is None and image.checksum is None


def test_create_image_from_file(active_image, payload):
    image = active_image
    assert (image.status, image.size, image.disk_format, image.container_format) == ("active", SIZE, "raw", "bare")
    assert image.checksum == hashlib.md5(payload).hexdigest()
    assert (image.hash_algo, image.hash_value) == ("sha512", hashlib.sha512(payload).hexdigest())
    assert image.properties["foo"] == "bar" and image.properties["stores"] == "local"
    assert image.properties["owner_specified.openstack.md5"] == image.checksum


def test_create_image_from_bytes(conn, tag, tmp_path):
    data = disk_images.qcow2(tmp_path)  # real qcow2: uploads are inspected
    created = conn.image.create_image(
        tag, data=data, disk_format="qcow2", container_format="bare", tags=[tag], validate_checksum=True
    )
    image = conn.image.get_image(created.id)
    assert (image.status, image.size, image.checksum) == ("active", len(data), hashlib.md5(data).hexdigest())
    assert image.virtual_size == 1 << 20
    assert conn.image.download_image(image).content == data


def test_download_verifies_hash(conn, active_image, payload, tmp_path):
    resp = conn.image.download_image(active_image)
    assert resp.status_code == 200 and resp.content == payload
    assert resp.headers["Content-MD5"] == active_image.checksum
    out = tmp_path / "out.raw"
    conn.image.download_image(active_image, output=str(out))
    assert out.read_bytes() == payload


@pytest.mark.local_files
def test_download_detects_corruption(conn, server, active_image, payload):
    with stored_file(server, active_image.id).open("r+b") as f:
        f.write(bytes([payload[0] ^ 0xFF]))
    with pytest.raises(exceptions.InvalidResponse, match=f"checksum mismatch \\(sha512\\): {active_image.hash_value}"):
        conn.image.download_image(active_image)


@pytest.mark.parametrize("header, start, stop", [("bytes=0-99", 0, 100), ("bytes=-10", SIZE - 10, SIZE)])
def test_range_download(conn, active_image, payload, header, start, stop):
    # download_image() has no range parameter; use the SDK's own image endpoint adapter.
    resp = conn.image.get(f"images/{active_image.id}/file", headers={"Range": header})
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert resp.content == payload[start:stop]


def test_upload_to_active_image_conflicts(conn, active_image):
    active_image.data = b"again"
    with pytest.raises(exceptions.ConflictException):
        exceptions.raise_from_response(active_image.upload(conn.image))


# -- update and tags --------------------------------------------------------------------------


def test_update_image_with_extra_property(conn, active_image):
    """update_image() diffs the whole flattened body, so it PATCHes ``remove /stores`` too."""
    updated = conn.image.update_image(active_image, name="renamed", min_ram=2048, color="blue")
    for image in (updated, conn.image.get_image(active_image.id)):
        assert (image.name, image.min_ram, image.properties["color"]) == ("renamed", 2048, "blue")
        assert image.properties["stores"] == "local" and image.checksum == active_image.checksum


def test_update_image_properties_merges(conn, active_image):
    assert conn.image.update_image_properties(active_image, color="green", min_disk=4)
    image = conn.image.get_image(active_image.id)
    assert (image.properties["color"], image.properties["foo"], image.min_disk) == ("green", "bar", 4)


def test_update_read_only_attribute_is_forbidden(conn, active_image):
    with pytest.raises(exceptions.ForbiddenException, match="403"):
        conn.image.update_image(active_image, disk_format="qcow2")
    assert conn.image.get_image(active_image.id).disk_format == "raw"


def test_tags(conn, active_image, tag):
    conn.image.add_tag(active_image, "blue")
    assert sorted(conn.image.get_image(active_image.id).tags) == sorted([tag, "blue"])
    conn.image.remove_tag(active_image, "blue")
    assert conn.image.get_image(active_image.id).tags == [tag]
    with pytest.raises(exceptions.NotFoundException):
        conn.image.remove_tag(active_image, "blue")


# -- list -------------------------------------------------------------------------------------


@pytest.fixture
def five_images(conn, tag):
    return [create(conn, tag, name=f"{tag}-{i}", min_ram=i, is_protected=(i == 2)).id for i in range(5)]


@pytest.mark.parametrize(
    "query, expected",
    [
        (dict(sort="name:asc", limit=2), ["0", "1", "2", "3", "4"]),  # follows the next links
        (dict(sort_key="name", sort_dir="desc", limit=2), ["4", "3", "2", "1", "0"]),
        (dict(sort="name:asc", protected=True), ["2"]),
        (dict(sort="name:asc", name="in:{tag}-3,{tag}-1"), ["1", "3"]),
        (dict(sort="name:desc", status="queued", visibility="shared"), ["4", "3", "2", "1", "0"]),
        (dict(status="active"), []),
    ],
)
def test_list_filters_sort_and_paging(conn, tag, five_images, query, expected):
    query = {k: v.format(tag=tag) if isinstance(v, str) else v for k, v in query.items()}
    assert [i.name[-1] for i in conn.image.images(tag=tag, **query)] == expected


def test_list_one_page(conn, tag, five_images):
    images = list(conn.image.images(tag=tag, sort="name:asc", limit=2, paginated=False))
    assert [i.name[-1] for i in images] == ["0", "1"]


# -- actions and delete -----------------------------------------------------------------------


def test_deactivate_and_reactivate(conn, active_image, payload, tag):
    conn.image.deactivate_image(active_image)
    assert conn.image.get_image(active_image.id).status == "deactivated"
    assert conn.image.download_image(active_image).content == payload  # noauth callers are admins
    conn.image.reactivate_image(active_image)
    assert conn.image.get_image(active_image.id).status == "active"
    queued = create(conn, tag)
    conn.image.reactivate_image(queued)  # the SDK ignores the action's status code ...
    assert conn.image.get_image(queued.id).status == "queued"
    assert conn.image.post(f"images/{queued.id}/actions/reactivate").status_code == 403  # ... which is 403


def test_protected_image_cannot_be_deleted(conn, tag):
    image = create(conn, tag, is_protected=True)
    with pytest.raises(exceptions.ForbiddenException, match="is protected"):
        conn.image.delete_image(image, ignore_missing=False)
    conn.image.update_image(image, is_protected=False)
    conn.image.delete_image(image, ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image(image.id)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.delete_image(image, ignore_missing=False)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c, t: create(c, t, min_ram=-1), "less than the minimum of 0"),
        (lambda c, t: create(c, t, visibility="bogus"), "is not one of"),
        (lambda c, t: create(c, t, disk_format="floppy"), "is not one of"),
        (lambda c, t: list(c.image.images(tag=t, sort_key="bogus")), "Invalid sort key"),
        (lambda c, t: list(c.image.images(tag=t, sort="name:sideways")), "Invalid sort direction"),
        (lambda c, t: list(c.image.images(tag=t, visibility="bogus")), "Invalid visibility value"),
        (lambda c, t: list(c.image.images(tag=t, size_min="big")), "expected an integer"),
    ],
    ids=["min_ram", "visibility", "disk_format", "sort_key", "sort_dir", "list-visibility", "size_min"],
)
def test_bad_input_is_400(conn, tag, call, message):
    with pytest.raises(exceptions.BadRequestException) as error:
        call(conn, tag)
    assert message in str(error.value).replace("&#x27;", "'")
    assert list(conn.image.images(tag=tag)) == []
