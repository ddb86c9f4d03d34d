"""Format inspection of uploads through a real ``abbild serve``, driven with
python-glanceclient: the data must be what its disk_format says and safe for a
hypervisor to open, or the upload is refused with 415, the image stays ``queued`` and
no byte of it stays in the store."""

from __future__ import annotations

import html
import io
import os
import time
import uuid
from pathlib import Path

import pytest
import requests
from glanceclient import Client, exc

from tests import disk_images
from tests.functional.helpers import server_config

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def srv(server_factory):
    """A server with the default ``[image_format]`` options and its filesystem store in
    its own directory, so that a test can look at what the store holds."""
    return server_factory("formats", server_config())


@pytest.fixture(scope="module")
def lax(server_factory):
    return server_factory("formats-lax", server_config(stores="[image_format]\nrequire_image_format_match = false\n"))


def client(server) -> Client:
    return Client("2", endpoint=server.url, token="x")


def stored(server) -> list[Path]:
    """Every file in the server's filesystem store."""
    return [p for p in (Path(server.data_dir) / "images").rglob("*") if p.is_file()]


def upload(server, data: bytes, disk_format: str, container_format: str = "bare"):
    glance = client(server)
    tag = f"fmt-{uuid.uuid4().hex}"
    image = glance.images.create(name=tag, tags=[tag], disk_format=disk_format, container_format=container_format)
    try:
        glance.images.upload(image.id, io.BytesIO(data), image_size=len(data))
    except exc.HTTPException as error:
        return glance.images.get(image.id), error
    return glance.images.get(image.id), None


def refused(server, data: bytes, disk_format: str, container_format: str = "bare") -> str:
    """Upload *data* with glanceclient and expect a refusal that leaves the image queued
    and the store as it was; the error's message. glanceclient has no class for 415 (it
    raises a bare HTTPException), so the status is asserted on the wire too."""
    before = set(stored(server))
    image, error = upload(server, data, disk_format, container_format)
    assert error is not None, f"{disk_format} upload was accepted"
    assert image.status == "queued" and image.size is None and image.checksum is None
    assert set(stored(server)) == before, "the refused data stayed in the store"
    resp = requests.put(
        f"{server.url}/v2/images/{image.id}/file",
        data=data,
        headers={"Content-Type": "application/octet-stream", "Accept": "application/json"},
    )
    assert resp.status_code == 415, resp.text
    message = resp.json()["message"].split("<br />")[0]
    assert message.startswith("Image data refused: ") and message in html.unescape(error.details)
    assert client(server).images.get(image.id).status == "queued"
    assert set(stored(server)) == before
    return message


def test_qcow2_declared_qcow2_is_active_with_its_virtual_size(srv, tmp_path):
    data = disk_images.qcow2(tmp_path, "5M")
    image, error = upload(srv, data, "qcow2")
    assert error is None
    assert image.status == "active" and image.size == len(data)
    assert image.virtual_size == 5 * disk_images.MIB


@pytest.mark.parametrize(
    ("fmt", "disk_format", "options"),
    [
        ("vmdk", "vmdk", ("-o", "subformat=streamOptimized")),
        ("vmdk", "vmdk", ("-o", "subformat=monolithicSparse")),
        ("vpc", "vhd", ()),
        ("vpc", "vhd", ("-o", "subformat=fixed")),
        ("vhdx", "vhdx", ()),
        ("vdi", "vdi", ()),
    ],
    ids=["vmdk-streamOptimized", "vmdk-monolithicSparse", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi"],
)
def test_other_formats_declared_right_get_their_virtual_size(srv, tmp_path, fmt, disk_format, options):
    path = disk_images.qemu_img(tmp_path, fmt, "3M", *options)
    image, error = upload(srv, path.read_bytes(), disk_format)
    assert error is None, error
    assert image.status == "active"
    assert image.virtual_size == disk_images.virtual_size(path, fmt)  # what qemu-img says


def test_iso_declared_iso(srv, tmp_path):
    data = disk_images.hybrid_iso(tmp_path).read_bytes()  # also a GPT disk: still an ISO
    image, error = upload(srv, data, "iso")
    assert error is None, error
    assert image.status == "active" and image.virtual_size == len(data)


def test_raw_upload_gets_virtual_size_equal_to_its_size(srv):
    data = os.urandom(3 * disk_images.MIB + 17)
    image, error = upload(srv, data, "raw")
    assert error is None
    assert image.status == "active" and image.size == image.virtual_size == len(data)


def test_raw_declared_gpt_disk_is_a_raw_disk(srv, tmp_path):
    data = disk_images.gpt(tmp_path).read_bytes()
    image, error = upload(srv, data, "raw")
    assert error is None
    assert image.status == "active" and image.virtual_size == len(data)


def test_qcow2_with_backing_file_declared_raw_is_refused(srv, tmp_path):
    # Declared raw, the hypervisor would still open it as raw; but a tool that probes
    # it (qemu-img without -f, an older Nova) would read /etc/passwd of its host.
    data = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    message = refused(srv, data, "raw")
    assert "a qcow2 image that fails the safety check backing_file" in message and "/etc/passwd" in message
    assert "whatever its disk_format (raw)" in message and "qemu-img convert" in message


def test_qcow2_with_external_data_file_is_refused(srv, tmp_path):
    data = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-o", f"data_file={tmp_path}/outside.raw").read_bytes()
    message = refused(srv, data, "qcow2")
    assert "safety check data_file" in message and "outside.raw" in message


def test_qcow2_declared_vmdk_is_refused(srv, tmp_path):
    message = refused(srv, disk_images.qcow2(tmp_path), "vmdk")
    assert "it is a qcow2 image, but the disk_format of the image is vmdk" in message
    assert "[image_format] require_image_format_match" in message


def test_raw_data_declared_qcow2_is_refused(srv):
    message = refused(srv, os.urandom(100_000), "qcow2")
    assert "raw data" in message and "disk_format of the image is qcow2" in message


def test_vmdk_naming_a_host_file_as_extent_is_refused(srv):
    message = refused(srv, disk_images.vmdk_descriptor("monolithicFlat", "/etc/passwd"), "vmdk")
    assert "vmdk image that fails the safety check descriptor" in message
    assert "create type monolithicFlat is not allowed ([image_format] vmdk_allowed_types" in message
    assert "/etc/passwd" in message


def test_qed_is_refused(srv, tmp_path):
    message = refused(srv, disk_images.qemu_img(tmp_path, "qed", "1M").read_bytes(), "raw")
    assert "a qed image that fails the safety check banned" in message


def test_safety_checks_apply_to_other_container_formats_too(srv, tmp_path):
    data = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    assert "safety check backing_file" in refused(srv, data, "qcow2", container_format="ovf")


def test_mismatch_is_only_checked_for_bare_images(srv, tmp_path):
    image, error = upload(srv, disk_images.qcow2(tmp_path), "vmdk", container_format="ova")
    assert error is None and image.status == "active" and image.virtual_size is None


def test_mismatch_is_accepted_when_not_required(lax, tmp_path):
    image, error = upload(lax, disk_images.qcow2(tmp_path), "vmdk")
    assert error is None
    assert image.status == "active" and image.virtual_size is None


def test_unsafe_data_is_refused_even_when_a_match_is_not_required(lax, tmp_path):
    data = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    refused(lax, data, "qcow2")


def test_the_refused_image_takes_the_right_data_afterwards(srv, tmp_path):
    glance = client(srv)
    data = disk_images.qcow2(tmp_path)
    image = glance.images.create(name="retry", disk_format="vmdk", container_format="bare")
    with pytest.raises(exc.HTTPException, match="it is a qcow2 image, but the disk_format of the image is vmdk"):
        glance.images.upload(image.id, io.BytesIO(data), image_size=len(data))
    glance.images.update(image.id, disk_format="qcow2")
    glance.images.upload(image.id, io.BytesIO(data), image_size=len(data))
    image = glance.images.get(image.id)
    assert image.status == "active" and image.virtual_size == disk_images.MIB
    assert b"".join(glance.images.data(image.id)) == data


def test_a_large_upload_is_refused_early_and_the_client_gets_the_415(srv):
    """64 MiB of raw data declared qcow2: refused once the inspectors saw its start, and
    the client still reads the answer."""
    data = os.urandom(64 * disk_images.MIB)
    message = refused(srv, data, "qcow2")
    assert "raw data" in message


# -- interoperable import (glance-direct) ------------------------------------------------------


def staged(server) -> list[Path]:
    return [p for p in (Path(server.data_dir) / "staging").rglob("*") if p.is_file()]


def wait_import_ended(glance, image_id: str):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        image = glance.images.get(image_id)
        if not image.get("os_glance_import_task") and image.status != "importing":
            return image
        time.sleep(0.1)
    raise AssertionError("the import did not end")


def test_an_unsafe_image_is_refused_when_it_is_staged(srv, tmp_path):
    glance = client(srv)
    image = glance.images.create(name="stage-evil", disk_format="qcow2", container_format="bare")
    evil = disk_images.qemu_img(tmp_path, "qcow2", "1M", "-b", "/etc/passwd", "-F", "raw").read_bytes()
    with pytest.raises(exc.HTTPException, match="fails the safety check backing_file"):
        glance.images.stage(image.id, io.BytesIO(evil), len(evil))
    assert glance.images.get(image.id).status == "queued"
    assert staged(srv) == []


def test_staged_data_is_judged_in_full_when_imported(srv, tmp_path):
    """Staged data may still be decompressed by an import step, so only its safety counts
    at stage; what the import writes must be its disk_format."""
    glance = client(srv)
    before = set(stored(srv))
    image = glance.images.create(name="import-mismatch", disk_format="vmdk", container_format="bare")
    data = disk_images.qcow2(tmp_path)
    glance.images.stage(image.id, io.BytesIO(data), len(data))
    glance.images.image_import(image.id, method="glance-direct")
    image = wait_import_ended(glance, image.id)
    assert image.status != "active" and image.virtual_size is None
    assert set(stored(srv)) == before
    [task] = [t for t in glance.images.get_associated_image_tasks(image.id)["tasks"]]
    assert task["status"] == "failure" and "disk_format of the image is vmdk" in task["message"]

    image = glance.images.create(name="import-right", disk_format="qcow2", container_format="bare")
    glance.images.stage(image.id, io.BytesIO(data), len(data))
    glance.images.image_import(image.id, method="glance-direct")
    image = wait_import_ended(glance, image.id)
    assert image.status == "active" and image.virtual_size == disk_images.MIB
