"""Signed images through a real ``abbild serve`` (the embedded default: its certificates
in ``<data dir>/certificates``) with python-glanceclient and the ``openstack`` CLI, the
way Glance's documentation tells a user to sign an image: openssl signs, the signature
and certificate id go into the image's properties, the upload is verified.

A bad signature is a 400 that names the problem; the image is ``queued`` again and the
store's data directory holds nothing for it."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import requests
from glanceclient import Client, exc

from tests.signing import Signer

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Its own embedded server: the signing certificates live in its data directory."""
    from tests.functional.conftest import Server

    srv = Server(tmp_path_factory.mktemp("signed")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def glance(server):
    return Client("2", endpoint=server.url, token="x")


@pytest.fixture(scope="module")
def signer(server, tmp_path_factory):
    """An RSA key and its self-signed certificate made with openssl (Glance's steps),
    the certificate put into the server's certificate directory."""
    work = tmp_path_factory.mktemp("signer")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    openssl("genrsa", "-out", "private_key.pem", "2048")
    openssl("req", "-new", "-key", "private_key.pem", "-out", "cert_request.csr", "-subj", "/CN=image signer")
    openssl(
        "x509", "-req", "-days", "14", "-in", "cert_request.csr", "-signkey", "private_key.pem", "-out", "new_cert.crt"
    )
    certificate_uuid = str(uuid.uuid4())
    certificates = os.path.join(server.data_dir, "certificates")
    with open(os.path.join(certificates, f"{certificate_uuid}.pem"), "wb") as f:
        f.write((work / "new_cert.crt").read_bytes())

    def sign(path) -> dict:
        openssl(
            "dgst", "-sha256", "-sign", "private_key.pem", "-sigopt", "rsa_padding_mode:pss", "-out", "sig", str(path)
        )
        return {
            "img_signature": base64.b64encode((work / "sig").read_bytes()).decode(),
            "img_signature_certificate_uuid": certificate_uuid,
            "img_signature_hash_method": "SHA-256",
            "img_signature_key_type": "RSA-PSS",
        }

    return sign


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "myimage"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def leftovers(server, image_id) -> list[str]:
    return [name for name in os.listdir(os.path.join(server.data_dir, "images")) if image_id in name]


def create(glance, **props):
    return glance.images.create(name="signed", disk_format="raw", container_format="bare", **props)


def test_a_signed_image_uploads_and_becomes_active(glance, signer, disk):
    image = create(glance, **signer(disk))
    with open(disk, "rb") as f:
        glance.images.upload(image.id, f)
    shown = glance.images.get(image.id)
    assert shown.status == "active" and shown.size == disk.stat().st_size
    assert b"".join(glance.images.data(image.id)) == disk.read_bytes()


def test_a_bad_signature_is_400_and_nothing_is_kept(glance, server, signer, disk):
    image = create(glance, **signer(disk))
    tampered = bytearray(disk.read_bytes())
    tampered[len(tampered) // 2] ^= 0x40
    with pytest.raises(exc.HTTPBadRequest) as err:
        glance.images.upload(image.id, io.BytesIO(tampered))
    assert "Signature verification failed" in str(err.value) and "RSA-PSS, SHA-256" in str(err.value)
    assert glance.images.get(image.id).status == "queued"
    assert leftovers(server, image.id) == []
    with open(disk, "rb") as f:  # the right data still goes in
        glance.images.upload(image.id, f)
    assert glance.images.get(image.id).status == "active"


def status(server, image_id) -> str:
    return requests.get(f"{server.url}/v2/images/{image_id}", timeout=10).json()["status"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img_signature_key_type": None}, "has img_signature, img_signature_hash_method, img_signature_certificate_"
         "uuid but not img_signature_key_type"),
        ({"img_signature_certificate_uuid": "../../../etc/ssl/cert"}, "Invalid img_signature_certificate_uuid"),
        ({"img_signature_certificate_uuid": str(uuid.uuid4())}, "there is no certificate"),
        ({"img_signature_hash_method": "MD5"}, "Invalid img_signature_hash_method 'MD5'"),
    ],
    ids=["missing property", "path", "unknown certificate", "hash method"],
)  # fmt: skip
def test_a_signature_that_cannot_be_checked_is_400_before_any_data(server, signer, disk, change, message):
    # A client of its own: the server answers before it read the body, and then drops
    # the kept-alive connection without saying so (any early refusal of an upload does),
    # so the client's next request on it would fail.
    glance = Client("2", endpoint=server.url, token="x")
    props = {k: v for k, v in {**signer(disk), **change}.items() if v is not None}
    image = create(glance, **props)
    with pytest.raises(exc.HTTPBadRequest) as err:
        glance.images.upload(image.id, io.BytesIO(disk.read_bytes()))
    assert message in str(err.value).replace("&#x27;", "'")
    assert status(server, image.id) == "queued" and leftovers(server, image.id) == []


def openstack_image_create(server, home, disk, name, props) -> subprocess.CompletedProcess:
    argv = [shutil.which("openstack") or os.path.join(os.path.dirname(sys.executable), "openstack")]
    argv += ["--os-auth-type", "none", "--os-endpoint", server.url, "image", "create", "-f", "value", "-c", "status"]
    argv += ["--disk-format", "raw", "--container-format", "bare", "--file", str(disk)]
    for key, value in props.items():
        argv += ["--property", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return subprocess.run([*argv, name], env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=120)


def test_openstack_image_create_with_a_signature(server, signer, disk, tmp_path):
    """The command of Glance's documentation, with ``openstack`` instead of ``glance``."""
    props = signer(disk)
    proc = openstack_image_create(server, tmp_path, disk, "signed-cli", props)
    assert proc.returncode == 0 and proc.stdout.strip() == "active", proc.stderr

    other = tmp_path / "other"
    other.write_bytes(b"other data")
    proc = openstack_image_create(server, tmp_path, other, "signed-bad", props)
    # The SDK shows no detail of a 400 to a PUT (its empty Accept gets text/plain), as with Glance.
    assert proc.returncode == 1 and "BadRequestException: 400" in proc.stderr, proc.stderr
    # ... and deletes the image it created (openstacksdk cleans up a failed upload).
    assert requests.get(f"{server.url}/v2/images", params={"name": "signed-bad"}, timeout=10).json()["images"] == []
    images = requests.get(f"{server.url}/v2/images", timeout=10).json()["images"]
    active = {image["id"] for image in images if image["status"] == "active"}
    assert {name for name in os.listdir(os.path.join(server.data_dir, "images"))} <= active


# -- certificates in Barbican (tools/barbican-up.sh), read with the user's token --------------

BARBICAN_CONFIG = """
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
[database]
connection = sqlite:///{{dir}}/abbild.sqlite
[paste_deploy]
flavor = keystone
[local]
datadir = {{dir}}/images
[keystone_authtoken]
www_authenticate_uri = {auth_url}
auth_url = {auth_url}
auth_type = password
username = abbild-service
password = {password}
project_name = service
user_domain_id = default
project_domain_id = default
[image_signature]
certificate_source = key_manager
[key_manager]
backend = barbican
[barbican]
barbican_endpoint = {barbican_url}
auth_endpoint = {auth_url}
"""
PASSWORD = "abbild-test-pw"


@pytest.fixture(scope="module")
def barbican_url():
    from abbild.testing.backends import backend_unavailable, read_env_file
    from tests.functional import keystone as ks

    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    barbican_dir = os.environ.get("BARBICAN_DIR", "/tmp/abbild-barbican")
    url = os.environ.get("BARBICAN_URL") or read_env_file(os.path.join(barbican_dir, "env.sh")).get("BARBICAN_URL")
    try:
        requests.get(url or "http://127.0.0.1:9311", timeout=5).json()["versions"]
    except (OSError, ValueError, KeyError) as exc:
        backend_unavailable(f"Barbican is not available (run tools/barbican-up.sh): {exc}")
    ks.ensure_user("abbild-service", PASSWORD, "service", ["service"])
    return url


@pytest.fixture(scope="module")
def keystone_server(barbican_url, server_factory):
    from tests.functional import keystone as ks

    config = BARBICAN_CONFIG.format(auth_url=ks.auth_url(), password=PASSWORD, barbican_url=barbican_url)
    return server_factory("signed-barbican", config)


def login(user: str, project: str) -> str:
    from tests.functional import keystone as ks

    ks.ensure_user(user, PASSWORD, project, ["member"])
    return ks.token_for(user, PASSWORD, project)[0]


def store_certificate(barbican_url: str, token: str, pem: bytes) -> str:
    """``openstack secret store --secret-type certificate ... --payload "$(base64 new_cert.crt)"``."""
    body = {
        "name": "image signer",
        "secret_type": "certificate",
        "payload": base64.b64encode(pem).decode(),
        "payload_content_type": "application/octet-stream",
        "payload_content_encoding": "base64",
    }
    resp = requests.post(f"{barbican_url}/v1/secrets", json=body, headers={"X-Auth-Token": token}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["secret_ref"].rsplit("/", 1)[1]


def test_a_certificate_in_barbican_verifies_with_the_users_token(barbican_url, keystone_server):
    token = login("abbild-signer", "abbild-signers")
    signer = Signer(key_type="ECC_SECP384R1")
    signer.certificate_uuid = store_certificate(barbican_url, token, signer.pem)
    glance = Client("2", endpoint=keystone_server.url, token=token)
    data = os.urandom(2 * 1024 * 1024 + 5)

    image = glance.images.create(disk_format="raw", container_format="bare", **signer.properties(data))
    glance.images.upload(image.id, io.BytesIO(data))
    assert glance.images.get(image.id).status == "active"

    image = glance.images.create(disk_format="raw", container_format="bare", **signer.properties(data))
    with pytest.raises(exc.HTTPBadRequest, match="Signature verification failed"):
        # The last byte flipped (a fixed replacement would equal it once in 256 runs).
        glance.images.upload(image.id, io.BytesIO(data[:-1] + bytes([data[-1] ^ 0xFF])))
    assert glance.images.get(image.id).status == "queued" and leftovers(keystone_server, image.id) == []

    # Another project cannot use the certificate: Barbican does not give it out to them.
    other_token = login("abbild-other-signer", "abbild-other-signers")
    other = Client("2", endpoint=keystone_server.url, token=other_token)
    image = other.images.create(disk_format="raw", container_format="bare", **signer.properties(data))
    with pytest.raises(exc.HTTPBadRequest) as err:
        other.images.upload(image.id, io.BytesIO(data))
    assert f"certificate {signer.certificate_uuid} could not be read from the key manager" in str(err.value)
    # (asked on a connection of its own: the early 400 dropped the client's, see above)
    resp = requests.get(
        f"{keystone_server.url}/v2/images/{image.id}", headers={"X-Auth-Token": other_token}, timeout=10
    )
    assert resp.json()["status"] == "queued"

    missing = str(uuid.uuid4())
    image = glance.images.create(
        disk_format="raw",
        container_format="bare",
        **signer.properties(data, img_signature_certificate_uuid=missing),
    )
    with pytest.raises(exc.HTTPBadRequest, match=f"the key manager has no certificate {missing}"):
        glance.images.upload(image.id, io.BytesIO(data))


@pytest.fixture(scope="module")
def web_server(server, server_factory):
    """A server whose web-download may reach loopback, with the certificates of *server*."""
    certificates = os.path.join(server.data_dir, "certificates")
    return server_factory(
        "signed-web",
        "[DEFAULT]\nenabled_backends = local:filesystem\ndefault_backend = local\n"
        "node_staging_uri = file://{dir}/staging\n[local]\ndatadir = {dir}/images\n"
        "[database]\nconnection = sqlite:///{dir}/abbild.sqlite\n"
        f"[image_signature]\ncertificate_dir = {certificates}\n"
        "[os_glance_web_download]\nallowed_networks = 127.0.0.1/32\n",
    )


def test_web_download_verifies_the_signature_of_what_it_fetched(web_server, signer, disk):
    """Data a web-download fetched is checked as staged data is: the right bytes become
    active, tampered ones fail the import and leave nothing stored."""
    from tests.functional.helpers import serving, wait_for
    from tests.functional.test_import import handler

    glance = Client("2", endpoint=web_server.url, token="x")
    tampered = bytearray(disk.read_bytes())
    tampered[7] ^= 0x01
    for data, ending in ((disk.read_bytes(), "active"), (bytes(tampered), "queued")):
        image = create(glance, **signer(disk))
        with serving(handler(data)) as base:
            glance.images.image_import(image.id, method="web-download", uri=f"{base}/disk.raw")
            wait_for(lambda i=image.id: not glance.images.get(i).get("os_glance_import_task"), 30, "the import")
        assert glance.images.get(image.id).status == ending
        task = requests.get(f"{web_server.url}/v2/images/{image.id}/tasks", timeout=10).json()["tasks"][0]
        if ending == "queued":
            assert task["status"] == "failure" and "Signature verification failed" in task["message"]
            assert leftovers(web_server, image.id) == []
        else:
            assert task["status"] == "success"
