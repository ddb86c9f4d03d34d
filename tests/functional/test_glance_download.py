"""glance-download with a real Keystone (``tools/keystone-up.sh``) whose catalog has a
second region: its image service is a second ``abbild serve`` holding the source image.
python-glanceclient asks the import; everything remote happens with the caller's own
token, so a user imports only what they could download there themselves."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest
import requests

from abbild import config as abbild_config
from abbild.service import load_registry
from abbild.testing.backends import backend_unavailable
from tests.functional import helpers
from tests.functional import keystone as ks

PASSWORD = "abbild-test-pw"
SERVICE_USER, SERVICE_PROJECT = "abbild-service", "service"
OCTET = {"Content-Type": "application/octet-stream"}

CONFIG = """
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
node_staging_uri = file://{{dir}}/staging
{methods}
[database]
connection = sqlite:///{{dir}}/abbild.sqlite
[paste_deploy]
flavor = keystone
[local]
datadir = {{dir}}/images
[glance_download_properties]
extra_properties = hw_, trait:, os_distro, os_secure_boot, os_type
[keystone_authtoken]
www_authenticate_uri = {auth_url}
auth_url = {auth_url}
auth_type = password
username = {user}
password = {password}
project_name = {project}
user_domain_id = default
project_domain_id = default
"""


def tasks_of(srv, image_id: str) -> list:
    """The image's tasks with their input, read from the server's own database."""
    files = [srv.args[i + 1] for i, a in enumerate(srv.args) if a == "--config-file"]
    registry = load_registry(abbild_config.load(files[:1] or [os.path.join(srv.data_dir, "abbild-api.conf")]))
    try:
        return registry.tasks_of_image(image_id)
    finally:
        registry.close()


def config(methods: str = "") -> str:
    return CONFIG.format(
        methods=methods, auth_url=ks.auth_url(), user=SERVICE_USER, password=PASSWORD, project=SERVICE_PROJECT
    )


@pytest.fixture(scope="module")
def keystone():
    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    ks.ensure_user(SERVICE_USER, PASSWORD, SERVICE_PROJECT, ["service"])
    return ks


@pytest.fixture(scope="module")
def source(keystone, server_factory):
    """The other region's image service: a default abbild (glance-download not enabled)."""
    return server_factory("gd-source", config())


@pytest.fixture(scope="module")
def target(keystone, server_factory):
    return server_factory("gd-target", config("enabled_import_methods = glance-direct, glance-download"))


@pytest.fixture(scope="module")
def region(keystone, source):
    """A region of its own in Keystone's catalog whose image service is *source*; gone
    afterwards (other tests reach their servers by URL, never through the catalog)."""
    client = ks.admin_client()
    name = f"abbild-gd-{uuid.uuid4().hex[:8]}"
    client.regions.create(id=name, description="glance-download tests")
    service = client.services.create(name=name, type="image", description="glance-download tests")
    endpoint = client.endpoints.create(service=service, url=source.url, interface="public", region=name)
    try:
        yield name
    finally:
        client.endpoints.delete(endpoint)
        client.services.delete(service)
        client.regions.delete(name)


def login(user: str, project: str) -> tuple[str, str]:
    ks.ensure_user(user, PASSWORD, project, ["member"])
    token, project_id, _ = ks.token_for(user, PASSWORD, project)
    return token, project_id


@pytest.fixture(scope="module")
def alice():
    return login("abbild-gd-alice", "abbild-gd-alpha")


@pytest.fixture(scope="module")
def bob():
    return login("abbild-gd-bob", "abbild-gd-beta")


def glance(url: str, token: str):
    from glanceclient import Client

    return Client(endpoint=f"{url}/v2", token=token)


@pytest.fixture(scope="module")
def remote_image(source, alice):
    """Alice's private image in the other region, with properties some of which are copied."""
    data = os.urandom(3 * (1 << 20) + 17)
    client = glance(source.url, alice[0])
    image = client.images.create(
        name="remote",
        disk_format="raw",
        container_format="bare",
        hw_disk_bus="scsi",
        os_distro="debian",
        **{"trait:CUSTOM_FAST": "required"},
        not_copied="stays there",
    )
    client.images.upload(image.id, io.BytesIO(data))
    return client.images.get(image.id), data


def local_image(url: str, token: str) -> str:
    return glance(url, token).images.create(name="local", disk_format="raw", container_format="bare").id


def wait_import_done(url: str, token: str, image_id: str, timeout: float = 60):
    helpers.wait_import_done(url, image_id, {"X-Auth-Token": token}, timeout)
    return glance(url, token).images.get(image_id)


def test_the_remote_image_is_imported_with_its_properties(target, region, remote_image, alice):
    remote, data = remote_image
    image_id = local_image(target.url, alice[0])
    glance(target.url, alice[0]).images.image_import(
        image_id, method="glance-download", remote_region=region, remote_image_id=remote.id
    )
    image = wait_import_done(target.url, alice[0], image_id)
    assert image.status == "active", image
    assert (image.size, image.checksum, image.os_hash_value) == (remote.size, remote.checksum, remote.os_hash_value)
    assert image["hw_disk_bus"] == "scsi" and image["os_distro"] == "debian"
    assert image["trait:CUSTOM_FAST"] == "required"
    assert "not_copied" not in image
    resp = requests.get(f"{target.url}/v2/images/{image_id}/file", headers={"X-Auth-Token": alice[0]}, timeout=30)
    assert resp.status_code == 200 and resp.content == data
    [task] = tasks_of(target, image_id)
    assert task.status.value == "success"
    method = task.input["method"]
    assert (method["glance_region"], method["glance_service_interface"]) == (region, "public")
    assert alice[0] not in repr(task.input)  # the token is never the task's


def test_someone_who_cannot_see_the_remote_image_cannot_import_it(target, region, remote_image, bob):
    remote, _ = remote_image
    image_id = local_image(target.url, bob[0])
    glance(target.url, bob[0]).images.image_import(
        image_id, method="glance-download", remote_region=region, remote_image_id=remote.id
    )
    image = wait_import_done(target.url, bob[0], image_id)
    assert image.status == "queued" and image.size is None
    [task] = tasks_of(target, image_id)
    assert task.status.value == "failure"
    assert f"Region {region} has no image {remote.id} that you may see" in task.message
    assert all(image_id not in name for name in os.listdir(os.path.join(target.data_dir, "images")))


@pytest.mark.parametrize("where", ["another region", "another interface"])
def test_an_endpoint_missing_from_the_catalog_fails_the_import(target, region, remote_image, alice, where):
    name, interface = ("nowhere", "public") if where == "another region" else (region, "internal")
    image_id = local_image(target.url, alice[0])
    method = {"glance_region": name, "glance_image_id": remote_image[0].id, "glance_service_interface": interface}
    resp = requests.post(
        f"{target.url}/v2/images/{image_id}/import",
        json={"method": {"name": "glance-download", **method}},
        headers={"X-Auth-Token": alice[0]},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    assert wait_import_done(target.url, alice[0], image_id).status == "queued"
    [task] = tasks_of(target, image_id)
    assert f"no {interface} image service endpoint in region {name}" in task.message, task.message


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"glance_image_id": str(uuid.uuid4())}, "method.glance_region"),
        ({"glance_region": "R2", "glance_image_id": "not-a-uuid"}, "is not an image id"),
        ({"glance_region": "R2", "glance_image_id": str(uuid.uuid4()), "glance_service_interface": "x"}, "public"),
    ],
)
def test_bad_requests_are_400(target, alice, method, message):
    image_id = local_image(target.url, alice[0])
    body = {"method": {"name": "glance-download", **method}}
    resp = requests.post(
        f"{target.url}/v2/images/{image_id}/import", json=body, headers={"X-Auth-Token": alice[0]}, timeout=30
    )
    assert resp.status_code == 400 and message in resp.text, resp.text


def test_it_is_opt_in(source, alice):
    methods = requests.get(f"{source.url}/v2/info/import", headers={"X-Auth-Token": alice[0]}, timeout=10).json()
    assert "glance-download" not in methods["import-methods"]["value"]
    image_id = local_image(source.url, alice[0])
    body = {"method": {"name": "glance-download", "glance_region": "R2", "glance_image_id": str(uuid.uuid4())}}
    resp = requests.post(
        f"{source.url}/v2/images/{image_id}/import", json=body, headers={"X-Auth-Token": alice[0]}, timeout=30
    )
    assert resp.status_code == 400 and "not available here" in resp.text


def test_the_data_is_checked_against_the_remote_image(target, region, source, alice):
    """A remote image whose data is not what its checksum says (a corrupt copy in the
    other region) is refused, and nothing is kept."""
    data = os.urandom(1 << 20)
    client = glance(source.url, alice[0])
    remote = client.images.create(name="corrupt", disk_format="raw", container_format="bare")
    client.images.upload(remote.id, io.BytesIO(data))
    stored = [os.path.join(source.data_dir, "images", n) for n in os.listdir(os.path.join(source.data_dir, "images"))]
    [path] = [p for p in stored if remote.id in p]
    with open(path, "r+b") as f:  # the other region's disk flips a byte
        f.seek(1000)
        f.write(bytes([data[1000] ^ 0xFF]))
    image_id = local_image(target.url, alice[0])
    glance(target.url, alice[0]).images.image_import(
        image_id, method="glance-download", remote_region=region, remote_image_id=remote.id
    )
    assert wait_import_done(target.url, alice[0], image_id).status == "queued"
    [task] = tasks_of(target, image_id)
    assert "does not match" in task.message, task.message
    assert client.images.get(remote.id).checksum == hashlib.md5(data).hexdigest()  # the remote's record is right
    assert all(image_id not in name for name in os.listdir(os.path.join(target.data_dir, "images")))


def test_image_size_cap_holds(keystone, server_factory, region, remote_image, alice):
    small = server_factory("gd-small", config("enabled_import_methods = glance-download\nimage_size_cap = 1048576"))
    image_id = local_image(small.url, alice[0])
    glance(small.url, alice[0]).images.image_import(
        image_id, method="glance-download", remote_region=region, remote_image_id=remote_image[0].id
    )
    assert wait_import_done(small.url, alice[0], image_id).status == "queued"
    [task] = tasks_of(small, image_id)
    assert "image_size_cap of 1048576 bytes" in task.message, task.message
