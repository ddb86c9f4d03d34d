"""python-glanceclient, used as a library, against a real ``abbild serve`` over HTTP.

Every test works on images carrying its own unique tag, so tests can share the
session's server (and run in any order, on any xdist worker)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest
import requests
from glanceclient import Client, exc
from glanceclient.common import utils as glance_utils

SIZE = 2 * 1024 * 1024 + 123  # a few chunks and an odd tail

# README.md shows Client("2", endpoint=...), which glanceclient calls deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def glance(server):
    return Client("2", endpoint=server.url, token="x")


@pytest.fixture(scope="module")
def payload():
    return os.urandom(SIZE)


@pytest.fixture
def tag():
    return f"gc-{uuid.uuid4().hex}"


def create(glance, tag, **attrs):
    attrs.setdefault("name", tag)
    attrs.setdefault("disk_format", "raw")
    attrs.setdefault("container_format", "bare")
    return glance.images.create(tags=[tag], **attrs)


@pytest.fixture
def active_image(glance, tag, payload, tmp_path):
    """An image uploaded from a file with ``images.upload``; it carries ``foo=bar``."""
    path = tmp_path / "disk.raw"
    path.write_bytes(payload)
    image = create(glance, tag, foo="bar")
    with path.open("rb") as f:
        glance.images.upload(image.id, f, image_size=SIZE)
    return glance.images.get(image.id)


def stored_file(server, image_id) -> Path:
    """The filesystem store's file holding *image_id*'s data."""
    [path] = [p for p in Path(server.data_dir).rglob(image_id) if p.is_file()]
    return path


# -- discovery ------------------------------------------------------------------------------


def test_versions_list_and_has_version(glance):
    versions = glance.versions.list()
    ids = [v["id"] for v in versions]
    assert ids[0] == "v2.17" and "v2.0" in ids and "v2.3" in ids
    assert [v["id"] for v in versions if v["status"] == "CURRENT"] == ["v2.17"]
    # glanceclient gates features on exact ids: multi-store needs v2.8 and v2.10,
    # image tasks v2.12, locations v2.17; the cache API (v2.14, v2.18) is served only
    # with the cache on.
    for present in ("v2.8", "v2.10", "v2.12", "v2.17"):
        assert glance_utils.has_version(glance.http_client, present)
    for absent in ("v2.14", "v2.16", "v2.18"):
        assert not glance_utils.has_version(glance.http_client, absent)


def test_image_schema_is_fetched_and_drives_validation(glance, server):
    schema = glance.schemas.get("image")
    assert schema.raw() == requests.get(f"{server.url}/v2/schemas/image", timeout=10).json()
    assert schema.raw()["properties"]["min_ram"]["minimum"] == 0
    assert not schema.is_base_property("os_distro") and schema.is_base_property("name")
    # The client validates new images against the schema it fetched from abbild.
    with pytest.raises(TypeError, match="less than the minimum of 0"):
        glance.images.create(name="bad", min_ram=-1)
    with pytest.raises(TypeError, match="'bogus' is not one of"):
        glance.images.create(name="bad", visibility="bogus")
    assert glance.schemas.get("images").raw()["properties"]["images"]["type"] == "array"


def test_stores_and_import_info(glance):
    [store] = glance.images.get_stores_info()["stores"]
    assert (store["id"], store["default"]) == ("local", "true")
    assert glance.images.get_import_info()["import-methods"]["value"] == ["glance-direct", "web-download", "copy-image"]


# -- create, upload, download ---------------------------------------------------------------


def test_create_with_properties(glance, tag):
    image = create(glance, tag, min_disk=2, min_ram=512, os_distro="cirros", foo="bar", visibility="private")
    assert (image.status, image.visibility, image.min_disk, image.min_ram) == ("queued", "private", 2, 512)
    assert (image.os_distro, image.foo, image.tags) == ("cirros", "bar", [tag])
    assert image.size is None and image.checksum is None and image.os_hash_value is None
    shown = glance.images.get(image.id)
    assert dict(shown) == dict(image)
    assert [i.id for i in glance.images.list(filters={"tag": [tag]})] == [image.id]


def test_upload_from_file_sets_size_and_hashes(active_image, payload):
    assert (active_image.status, active_image.size, active_image.stores) == ("active", SIZE, "local")
    assert active_image.checksum == hashlib.md5(payload).hexdigest()
    assert active_image.os_hash_algo == "sha512"
    assert active_image.os_hash_value == hashlib.sha512(payload).hexdigest()


def test_upload_to_a_named_store(glance, tag):
    """``backend=`` sends ``X-Image-Meta-Store``; an unknown store is a 400 and the image stays queued."""
    unknown, local = create(glance, tag), create(glance, tag)
    with pytest.raises(exc.HTTPBadRequest):
        glance.images.upload(unknown.id, io.BytesIO(b"data"), backend="nope")
    assert glance.images.get(unknown.id).status == "queued"
    glance.images.upload(local.id, io.BytesIO(b"data"), backend="local")
    assert (glance.images.get(local.id).stores, glance.images.get(local.id).size) == ("local", 4)


def test_upload_to_active_image_conflicts(glance, active_image):
    with pytest.raises(exc.HTTPConflict):
        glance.images.upload(active_image.id, io.BytesIO(b"again"))


def test_download_round_trip(glance, active_image, payload):
    body = glance.images.data(active_image.id)
    assert len(body) == SIZE
    data = b"".join(body)
    assert hashlib.sha512(data).hexdigest() == active_image.os_hash_value
    assert data == payload


@pytest.mark.local_files
def test_download_verifies_os_hash_value(glance, server, active_image, payload):
    """glanceclient checks the data against the image's sha512 ``os_hash_value``."""
    with stored_file(server, active_image.id).open("r+b") as f:
        f.seek(SIZE // 2)
        f.write(bytes([payload[SIZE // 2] ^ 0xFF]))
    expected = f"Corrupt image download. Hash was [0-9a-f]{{128}} expected {active_image.os_hash_value}"
    with pytest.raises(IOError, match=expected):
        b"".join(glance.images.data(active_image.id))
    unchecked = b"".join(glance.images.data(active_image.id, do_checksum=False))
    assert len(unchecked) == SIZE and unchecked != payload


def test_download_of_queued_image_is_none(glance, tag):
    image = create(glance, tag)
    assert glance.images.data(image.id).__wrapped__ is None


@pytest.mark.parametrize(
    "header, start, stop",
    [("bytes=0-9", 0, 10), ("bytes=1000-", 1000, SIZE), ("bytes=-7", SIZE - 7, SIZE), (f"bytes=5-{SIZE * 2}", 5, SIZE)],
)
def test_range_download(server, active_image, payload, header, start, stop):
    # glanceclient's images.data() has no byte-range parameter; ask abbild directly.
    resp = requests.get(f"{server.url}/v2/images/{active_image.id}/file", headers={"Range": header}, timeout=10)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert resp.content == payload[start:stop]


def test_unsatisfiable_range_is_416(server, active_image):
    url = f"{server.url}/v2/images/{active_image.id}/file"
    resp = requests.get(url, headers={"Range": f"bytes={SIZE}-"}, timeout=10)
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"


# -- update and tags ------------------------------------------------------------------------


def test_update_sets_and_removes_properties(glance, active_image):
    updated = glance.images.update(
        active_image.id, remove_props=["foo"], name="renamed", min_ram=1024, os_distro="debian", color="blue"
    )
    for image in (updated, glance.images.get(active_image.id)):
        assert (image.name, image.min_ram, image.os_distro, image.color) == ("renamed", 1024, "debian", "blue")
        assert "foo" not in image
        assert image.checksum == active_image.checksum


def test_update_disk_format_of_active_image_is_forbidden(glance, active_image):
    with pytest.raises(exc.HTTPForbidden, match="can be only replaced for a queued image"):
        glance.images.update(active_image.id, disk_format="qcow2")
    assert glance.images.get(active_image.id).disk_format == "raw"


def test_tags_add_and_delete(glance, active_image, tag):
    glance.image_tags.update(active_image.id, "blue")
    glance.image_tags.update(active_image.id, "blue")  # idempotent
    assert sorted(glance.images.get(active_image.id).tags) == sorted([tag, "blue"])
    assert [i.id for i in glance.images.list(filters={"tag": [tag, "blue"]})] == [active_image.id]
    glance.image_tags.delete(active_image.id, "blue")
    assert glance.images.get(active_image.id).tags == [tag]
    with pytest.raises(exc.HTTPNotFound):
        glance.image_tags.delete(active_image.id, "blue")


# -- list -----------------------------------------------------------------------------------


@pytest.fixture
def five_images(glance, tag):
    """Five queued images tagged *tag*, named ``<tag>-0`` .. ``<tag>-4``, with a parity property."""
    return [create(glance, tag, name=f"{tag}-{i}", parity=("odd", "even")[i % 2 == 0]).id for i in range(5)]


def names(images):
    return [i.name[-1] for i in images]


def test_list_follows_next_links(glance, tag, five_images, monkeypatch):
    pages = []
    get = glance.http_client.get
    monkeypatch.setattr(glance.http_client, "get", lambda url, **kw: pages.append(url) or get(url, **kw))
    images = list(glance.images.list(filters={"tag": [tag]}, sort_key="name", sort_dir="asc", page_size=2))
    assert names(images) == ["0", "1", "2", "3", "4"]
    assert len(pages) == 3 and all("limit=2" in p for p in pages)
    assert "marker=" not in pages[0] and f"marker={images[3].id}" in pages[2]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(filters={"parity": "even"}, sort="name:desc"), ["4", "2", "0"]),
        (dict(filters={"parity": "odd"}, sort_key="name", sort_dir="asc"), ["1", "3"]),
        (dict(sort_key="name", sort_dir="desc", limit=3, page_size=2), ["4", "3", "2"]),
        (dict(filters={"name": "in:{tag}-1,{tag}-3"}, sort="name:asc"), ["1", "3"]),
        (dict(filters={"parity": "none"}), []),
    ],
)
def test_list_filters_and_sort(glance, tag, five_images, kwargs, expected):
    filters = {k: v.format(tag=tag) for k, v in kwargs.pop("filters", {}).items()}
    images = glance.images.list(filters={"tag": [tag], **filters}, **kwargs)
    assert names(images) == expected


# -- actions, delete ------------------------------------------------------------------------


def test_deactivate_and_reactivate(glance, active_image, payload, tag):
    glance.images.deactivate(active_image.id)
    assert glance.images.get(active_image.id).status == "deactivated"
    assert b"".join(glance.images.data(active_image.id)) == payload  # noauth callers are admins
    glance.images.deactivate(active_image.id)  # a no-op when already deactivated
    glance.images.reactivate(active_image.id)
    assert glance.images.get(active_image.id).status == "active"
    queued = create(glance, tag)
    with pytest.raises(exc.HTTPForbidden):
        glance.images.deactivate(queued.id)


def test_protected_image_cannot_be_deleted(glance, tag):
    image = create(glance, tag, protected=True)
    with pytest.raises(exc.HTTPForbidden):
        glance.images.delete(image.id)
    assert glance.images.get(image.id).status == "queued"
    glance.images.update(image.id, protected=False)
    glance.images.delete(image.id)
    with pytest.raises(exc.HTTPNotFound):
        glance.images.get(image.id)
    with pytest.raises(exc.HTTPNotFound):
        glance.images.delete(image.id)
    assert list(glance.images.list(filters={"tag": [tag]})) == []


@pytest.mark.local_files
def test_delete_removes_data(glance, server, active_image):
    path = stored_file(server, active_image.id)
    glance.images.delete(active_image.id)
    assert not path.exists()
    with pytest.raises(exc.HTTPNotFound):
        glance.images.data(active_image.id)


# -- bad input ------------------------------------------------------------------------------


def _post(glance, body):
    return glance.http_client.post("/v2/images", data=body)  # skips the client-side schema check


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: _post(g, {"name": "x", "min_ram": -1}), "less than the minimum of 0"),
        (lambda g: _post(g, {"name": "x", "visibility": "bogus"}), "is not one of"),
        (lambda g: _post(g, {"name": "x", "color": 5}), "is not of type"),
        (lambda g: list(g.images.list(sort_key="bogus")), "Invalid sort key"),
        (lambda g: list(g.images.list(filters={"visibility": "bogus"})), "Invalid visibility value"),
        (lambda g: list(g.images.list(filters={"size_min": "big"})), "expected an integer"),
        (lambda g: list(g.images.list(filters={"changes-since": "2020-01-01"})), "changes-since"),
    ],
    ids=["min_ram", "visibility", "non-string-extra", "sort_key", "list-visibility", "size_min", "changes-since"],
)
def test_bad_input_is_400(glance, call, message):
    with pytest.raises(exc.HTTPBadRequest) as error:
        call(glance)
    assert message in str(error.value).replace("&#x27;", "'")
