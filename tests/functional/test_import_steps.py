"""Import steps in a real ``abbild serve`` over HTTP: with ``image_decompression,
image_conversion, inject_image_metadata`` and the example plugin's
``example_checksum_property`` (tests/example_plugin, found by its name through its
entry point), a gzip-compressed qcow2 imported with ``glance image-create-via-import``
becomes an active raw image holding what ``qemu-img convert`` makes of it, on the
filesystem store and on Ceph RBD (raw is what RBD needs for copy-on-write clones); a
qcow2 with a backing file is refused through glance-direct and web-download, and the
image ends queued with nothing kept."""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import subprocess

import pytest
import requests

from abbild import config
from abbild.service import load_registry
from abbild.testing.backends import backend_unavailable, read_env_file
from tests.functional.clis import executable
from tests.functional.helpers import serving, wait_import_done
from tests.functional.test_import import handler

MIB = 1 << 20
OCTET = {"Content-Type": "application/octet-stream"}
INJECTED = {"hw_firmware_type": "uefi", "os_audited": "yes"}

STEPS_CONFIG = """
[DEFAULT]
enabled_backends = local:{driver}
default_backend = local
node_staging_uri = file://{{dir}}/staging
show_image_direct_url = true
[database]
connection = sqlite:///{{dir}}/abbild.sqlite
[local]
{store}
[image_import_opts]
image_import_plugins = image_decompression, image_conversion, inject_image_metadata, example_checksum_property
[image_conversion]
output_format = raw
[inject_metadata_properties]
inject = hw_firmware_type:uefi, os_audited:yes
# noauth callers are administrators, whose imports are left alone by default (admin)
ignore_user_roles =
[os_glance_web_download]
allowed_networks = 127.0.0.1/32
"""


def tasks_of(srv, image_id: str) -> list:
    """The image's tasks with their input, read from the server's own database."""
    files = [srv.args[i + 1] for i, a in enumerate(srv.args) if a == "--config-file"]
    registry = load_registry(config.load(files[:1] or [os.path.join(srv.data_dir, "abbild-api.conf")]))
    try:
        return registry.tasks_of_image(image_id)
    finally:
        registry.close()


def store_section(driver: str) -> str:
    if driver == "filesystem":
        return "datadir = {dir}/images"
    env = read_env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh")
    env.update({k: v for k, v in os.environ.items() if k.startswith("CEPH_")})
    if "CEPH_CONF" not in env:
        backend_unavailable("Ceph is not running (tools/ceph-up.sh)")
    return (
        f"pool = {env.get('CEPH_RBD_POOL', 'images')}\nuser = {env.get('CEPH_USER', 'admin')}\n"
        f"ceph_conf = {env['CEPH_CONF']}\nkeyring = {env['CEPH_ADMIN_KEYRING']}"
    )


@pytest.fixture(scope="module", params=["filesystem", pytest.param("rbd", marks=pytest.mark.backend("rbd"))])
def steps(request, server_factory):
    if shutil.which("qemu-img") is None:
        backend_unavailable("qemu-img is not installed (Debian: qemu-utils; make install-test installs it)")
    driver = request.param
    text = STEPS_CONFIG.format(driver=driver, store=store_section(driver))
    return server_factory(f"import-steps-{driver}", text)


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A qcow2 of 6 MiB of disk (random stretches between zeros), the same gzip-compressed,
    what qemu-img converts it to, and a qcow2 whose backing file is /etc/passwd."""
    base = tmp_path_factory.mktemp("disk")
    raw = bytearray(6 * MIB)
    for offset in range(0, len(raw), MIB):
        raw[offset : offset + 128 * 1024] = os.urandom(128 * 1024)
    (base / "disk.raw").write_bytes(raw)

    def qemu_img(*args):
        subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)

    qemu_img("convert", "-f", "raw", "-O", "qcow2", base / "disk.raw", base / "disk.qcow2")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", base / "disk.qcow2", base / "expected.raw")
    (base / "disk.qcow2.gz").write_bytes(gzip.compress((base / "disk.qcow2").read_bytes()))
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", base / "evil.qcow2")
    return {p.name: p for p in base.iterdir()}


def get(url: str, image_id: str) -> dict:
    resp = requests.get(f"{url}/v2/images/{image_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def create(url: str, disk_format: str = "qcow2") -> str:
    body = {"name": "steps", "disk_format": disk_format, "container_format": "bare"}
    resp = requests.post(f"{url}/v2/images", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def staged_files(srv) -> list[str]:
    staging = pathlib.Path(srv.data_dir) / "staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def stored_files(srv) -> list[str]:
    images = pathlib.Path(srv.data_dir) / "images"
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


def test_a_gzipped_qcow2_becomes_the_raw_image_qemu_img_makes(steps, disk, tmp_path):
    expected = disk["expected.raw"].read_bytes()
    argv = [executable("glance"), "--os-image-url", steps.url, "--os-auth-token", "x", "image-create-via-import"]
    argv += ["--name", "compressed", "--disk-format", "qcow2", "--container-format", "bare"]
    argv += ["--import-method", "glance-direct"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)
    # The data on stdin: glance refuses --file when stdin is no terminal, as under a test.
    with open(disk["disk.qcow2.gz"], "rb") as stdin:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [image_id] = [line.split("|")[2].strip() for line in proc.stdout.splitlines() if line.startswith("| id ")]
    image = wait_import_done(steps.url, image_id)
    assert image["status"] == "active", image
    assert image["disk_format"] == "raw"
    assert image["size"] == image["virtual_size"] == len(expected)
    assert image["checksum"] == hashlib.md5(expected).hexdigest()
    assert {k: image.get(k) for k in INJECTED} == INJECTED
    assert image["example_sha256"] == hashlib.sha256(expected).hexdigest()  # the third-party step ran
    resp = requests.get(f"{steps.url}/v2/images/{image_id}/file", timeout=60)
    assert resp.status_code == 200 and resp.content == expected
    assert image["direct_url"].startswith("rbd://" if "rbd" in steps.data_dir else "file://")
    assert image_id not in "".join(staged_files(steps))


def refused_and_nothing_kept(srv, image_id: str) -> dict:
    image = get(srv.url, image_id)
    assert image["status"] == "queued", image
    assert image["size"] is None and image.get("direct_url") is None
    assert not [name for name in staged_files(srv) if image_id in name]
    assert not [name for name in stored_files(srv) if image_id in name]
    return image


def test_a_qcow2_with_a_backing_file_via_glance_direct_is_refused(steps, disk):
    image_id = create(steps.url)
    staged = requests.put(
        f"{steps.url}/v2/images/{image_id}/stage", data=disk["evil.qcow2"].read_bytes(), headers=OCTET, timeout=30
    )
    if staged.status_code == 204:  # the stage took it: the import's steps must refuse it
        resp = requests.post(f"{steps.url}/v2/images/{image_id}/import", json={"method": {"name": "glance-direct"}})
        assert resp.status_code == 202, resp.text
        wait_import_done(steps.url, image_id)
        [task] = tasks_of(steps, image_id)
        assert task.status.value == "failure" and "backing file" in task.message, task.message
    else:
        assert staged.status_code == 415, staged.text
        assert "backing" in staged.text
    refused_and_nothing_kept(steps, image_id)


@pytest.mark.parametrize("compressed", [False, True], ids=["qcow2", "gzipped qcow2"])
def test_a_qcow2_with_a_backing_file_via_web_download_is_refused(steps, disk, compressed):
    evil = disk["evil.qcow2"].read_bytes()
    image_id = create(steps.url)
    with serving(handler(gzip.compress(evil) if compressed else evil)) as base:
        body = {"method": {"name": "web-download", "uri": f"{base}/evil.qcow2"}}
        resp = requests.post(f"{steps.url}/v2/images/{image_id}/import", json=body, timeout=30)
        assert resp.status_code == 202, resp.text
        wait_import_done(steps.url, image_id)
    refused_and_nothing_kept(steps, image_id)
    [task] = tasks_of(steps, image_id)
    assert task.status.value == "failure"
    assert "backing file" in task.message, task.message
