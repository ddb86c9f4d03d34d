"""Interoperable import through a keystone-mode registry and a REAL Keystone: the API
(keystone flavour, ``registry = http``) stages and imports with its users' tokens, and
its background job carries the import on with the service token alone.

Then the "compromised API node" side: what a user's token or the service token alone
may not do to an import's bookkeeping straight through the registry (the rules of
:mod:`abbild_registry.rules` and the service jobs of :mod:`abbild_registry.app`).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import uuid

import pytest
import requests

from abbild.testing.backends import backend_unavailable
from tests.functional import keystone as ks
from tests.functional.clis import executable
from tests.functional.conftest import RegistryProcess, Server
from tests.functional.helpers import serving, wait_for
from tests.functional.test_import import handler
from tests.functional.test_registry_keystone import (
    API_NODE_USER,
    OTHER,
    OWNER,
    PASSWORD,
    REGISTRY_USER,
    SERVICE_PROJECT,
    as_user,
    authtoken_section,
    put_image,
    refused_naming,
    registry_get,
    stored,
    token,
)

OCTET = {"Content-Type": "application/octet-stream"}
DATA = os.urandom(300_000)


@pytest.fixture(scope="module")
def tokens():
    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    token(REGISTRY_USER, SERVICE_PROJECT, ["service"])
    return {
        "owner": token(*OWNER),
        "other": token(*OTHER),
        "service": token(API_NODE_USER, SERVICE_PROJECT, ["service"]),
    }


@pytest.fixture(scope="module")
def registry_conf(tokens, tmp_path_factory):
    """A keystone-mode registry's config file, its database next to it."""
    base = tmp_path_factory.mktemp("import-keystone")
    conf = base / "abbild-registry.conf"
    conf.write_text(
        f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n"
        f"[registry_server]\nauth_strategy = keystone\n" + authtoken_section(REGISTRY_USER)
    )
    return conf


@pytest.fixture(scope="module")
def deployment(tokens, registry_conf):
    """(API server, registry url): two filesystem stores, staging on disk, web-download
    allowed to loopback, a short upload lease (its keeper renews it every few seconds)."""
    base, auth_url = registry_conf.parent, ks.auth_url()
    registry = RegistryProcess(base, [str(registry_conf)])
    registry.client_options = (
        f"auth_strategy = keystone\nauth_url = {auth_url}\nusername = {API_NODE_USER}\n"
        f"password = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n"
    )
    api_conf = base / "abbild-api.conf"
    api_conf.write_text(
        f"""
[DEFAULT]
enabled_backends = local:filesystem, second:filesystem
default_backend = local
node_staging_uri = file://{base}/staging
upload_lease_seconds = 10
[paste_deploy]
flavor = keystone
[local]
datadir = {base}/local
[second]
datadir = {base}/second
[os_glance_web_download]
allowed_networks = 127.0.0.1/32
"""
        + authtoken_section(API_NODE_USER)
    )
    registry.start()
    api = Server(base, "--config-file", str(api_conf), "--config-file", registry.client_config())
    api.registry = registry  # stopped with the API
    try:
        api.start()
        yield api, registry.url
    finally:
        api.stop()
    for log in (api.read_log(), registry.read_log()):
        assert not any(t in log for t in tokens.values()), "a token was logged"


@pytest.fixture(scope="module")
def servers(deployment):
    """(API url, registry url)."""
    api, registry = deployment
    return api.url, registry


@pytest.fixture(scope="module")
def admin(tokens) -> str:
    return token("abbild-import-admin", OWNER[1], roles=("admin", "member"))


def headers(user_token: str, **more) -> dict:
    return {"X-Auth-Token": user_token, **more}


def create(api: str, user_token: str) -> str:
    body = {"name": "import-keystone", "disk_format": "raw", "container_format": "bare"}
    resp = requests.post(f"{api}/v2/images", json=body, headers=headers(user_token), timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def get(api: str, image_id: str, user_token: str) -> dict:
    resp = requests.get(f"{api}/v2/images/{image_id}", headers=headers(user_token), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_active(api: str, image_id: str, user_token: str) -> dict:
    def done() -> bool:
        image = get(api, image_id, user_token)
        assert image["status"] not in ("queued", "killed") or not image.get("os_glance_failed_import"), image
        return image["status"] == "active" and not image.get("os_glance_import_task")

    wait_for(done, 60, f"image {image_id} imported")
    return get(api, image_id, user_token)


def download(api: str, image_id: str, user_token: str, **params) -> bytes:
    resp = requests.get(f"{api}/v2/images/{image_id}/file", params=params, headers=headers(user_token), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.content


def tasks_of(api: str, image_id: str, user_token: str) -> list[dict]:
    resp = requests.get(f"{api}/v2/images/{image_id}/tasks", headers=headers(user_token), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["tasks"]


def import_(api: str, image_id: str, user_token: str, body: dict) -> requests.Response:
    return requests.post(f"{api}/v2/images/{image_id}/import", json=body, headers=headers(user_token), timeout=30)


# -- through the API ----------------------------------------------------------------------------


def test_glance_cli_create_via_import_glance_direct(servers, tokens, tmp_path):
    api, registry = servers
    owner = tokens["owner"]
    path = tmp_path / "disk.raw"
    path.write_bytes(DATA)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")} | {"HOME": str(tmp_path)}
    argv = [executable("glance"), "--os-image-url", api, "--os-auth-token", owner, "image-create-via-import"]
    argv += ["--name", "via-import", "--disk-format", "raw", "--container-format", "bare"]
    argv += ["--import-method", "glance-direct"]
    with open(path, "rb") as stdin:  # glance refuses --file when stdin is no terminal
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [image_id] = [line.split("|")[2].strip() for line in proc.stdout.splitlines() if line.startswith("| id ")]
    image = wait_active(api, image_id, owner)
    assert image["size"] == len(DATA) and image["checksum"] == hashlib.md5(DATA).hexdigest()
    assert image["stores"] == "local" and "os_glance_stage_uri" not in image
    assert download(api, image_id, owner) == DATA
    [task] = tasks_of(api, image_id, owner)
    assert (task["status"], task["input"]["method"]["name"]) == ("success", "glance-direct"), task
    # The registry kept no claim and no lock: the service token alone reaches it no more.
    assert registry_get(registry, f"/v1/images/{image_id}", None, tokens["service"]).status_code == 404


def test_web_download_from_loopback(servers, tokens):
    api, _ = servers
    owner = tokens["owner"]
    image_id = create(api, owner)
    with serving(handler(DATA)) as base:
        resp = import_(api, image_id, owner, {"method": {"name": "web-download", "uri": f"{base}/disk.raw"}})
        assert resp.status_code == 202, resp.text
        image = wait_active(api, image_id, owner)
    assert image["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    assert download(api, image_id, owner) == DATA
    [task] = tasks_of(api, image_id, owner)
    assert task["status"] == "success", task


class Broken(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_error(500, "broken source")

    def log_message(self, *args):
        pass


def test_a_failed_import_is_undone_by_the_service_token_alone(servers, tokens):
    """A web-download whose source fails: the background job, which holds the service
    token alone, can only end an import whose task is still at work. So it puts the
    image back (queued, no lock) first, then fails the task: once the task shows the
    failure, the image is free again."""
    api, _ = servers
    owner = tokens["owner"]
    image_id = create(api, owner)
    with serving(Broken) as base:
        resp = import_(api, image_id, owner, {"method": {"name": "web-download", "uri": f"{base}/disk.raw"}})
        assert resp.status_code == 202, resp.text
        wait_for(lambda: tasks_of(api, image_id, owner)[0]["status"] == "failure", 60, "the import's task failed")
    [task] = tasks_of(api, image_id, owner)
    assert "500" in task["message"], task
    image = get(api, image_id, owner)
    assert image["status"] == "queued" and "os_glance_import_task" not in image, image


def test_admin_copies_an_image_to_a_second_store(servers, tokens, admin):
    api, _ = servers
    owner = tokens["owner"]
    image_id = create(api, owner)
    resp = requests.put(f"{api}/v2/images/{image_id}/file", data=DATA, headers=headers(owner, **OCTET), timeout=30)
    assert resp.status_code == 204, resp.text
    body = {"method": {"name": "copy-image"}, "stores": ["second"]}
    refused = import_(api, image_id, owner, body)
    assert refused.status_code == 403, refused.text  # copy_image: administrators
    resp = import_(api, image_id, admin, body)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: sorted(get(api, image_id, owner)["stores"].split(",")) == ["local", "second"], 60, "the copy")
    image = wait_active(api, image_id, owner)
    assert image["os_glance_failed_import"] == "" and image["os_glance_importing_to_stores"] == ""
    assert download(api, image_id, owner, prefer="second") == DATA


def test_another_project_cannot_stage_or_import(servers, tokens):
    api, _ = servers
    owner, other = tokens["owner"], tokens["other"]
    image_id = create(api, owner)
    staged = requests.put(f"{api}/v2/images/{image_id}/stage", data=b"x", headers=headers(other, **OCTET), timeout=30)
    assert staged.status_code == 404, staged.text
    resp = import_(api, image_id, other, {"method": {"name": "web-download", "uri": "http://127.0.0.1:9/x"}})
    assert resp.status_code == 404, resp.text
    assert get(api, image_id, owner)["status"] == "queued"


# -- a compromised API node, straight to the registry ------------------------------------------


def new_task(registry: str, tokens, image_id: str, user: str = "owner") -> str:
    """A pending import task of *image_id*, created with *user*'s token."""
    owner = registry_get(registry, f"/v1/images/{image_id}", tokens[user], tokens["service"]).json()["owner"]
    body = {
        "id": str(uuid.uuid4()),
        "type": "api_image_import",
        "status": "pending",
        "owner": owner,
        "input": {},
        "image_id": image_id,
    }
    resp = requests.post(f"{registry}/v1/tasks", json=body, headers=as_user(tokens, user), timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_forged_import_bookkeeping_is_refused(servers, tokens):
    api, registry = servers
    image_id = create(api, tokens["owner"])
    queued = stored(registry, image_id, tokens)
    importing = {**queued, "status": "importing", "upload_worker": "elsewhere:1:1"}
    # A lock naming no task, or a task of another image: refused.
    for task_id in (str(uuid.uuid4()), new_task(registry, tokens, create(api, tokens["owner"]))):
        forged = {**importing, "properties": {**queued["properties"], "os_glance_import_task": task_id}}
        assert refused_naming(put_image(registry, forged, tokens), "os_glance_import_task")
    # Importing without a lock, or the lock alone on a queued image.
    assert refused_naming(put_image(registry, importing, tokens), "status")
    locked = {**queued, "properties": {**queued["properties"], "os_glance_import_task": str(uuid.uuid4())}}
    assert refused_naming(put_image(registry, locked, tokens), "os_glance_import_task")
    # A stage claim is the user's; but not staged data elsewhere, nor an activation.
    claimed = put_image(registry, {**queued, "status": "uploading", "upload_worker": "elsewhere:1:1"}, tokens)
    assert claimed.status_code == 200, claimed.text
    uploading = claimed.json()
    elsewhere = {**uploading["properties"], "os_glance_stage_uri": "file:///var/lib/abbild/images/another-image"}
    assert refused_naming(put_image(registry, {**uploading, "properties": elsewhere}, tokens), "os_glance_stage_uri")
    activated = {**uploading, "status": "importing"}
    assert refused_naming(put_image(registry, activated, tokens), "status")
    assert stored(registry, image_id, tokens)["status"] == "uploading"


def test_service_token_alone_cannot_touch_a_queued_image(servers, tokens):
    api, registry = servers
    service = {"X-Service-Token": tokens["service"]}
    image_id = create(api, tokens["owner"])
    queued = stored(registry, image_id, tokens)
    path = f"{registry}/v1/images/{image_id}"
    assert requests.get(path, headers=service, timeout=30).status_code == 404
    task_id = new_task(registry, tokens, image_id)
    lock = {**queued["properties"], "os_glance_import_task": task_id}
    for forged in ({**queued, "status": "importing", "properties": lock}, {**queued, "name": "taken"}):
        assert requests.put(path, json=forged, headers=service, timeout=30).status_code == 404
    assert stored(registry, image_id, tokens) == queued


def test_service_token_alone_carries_on_only_a_live_import(servers, tokens):
    """The user takes the lock for a pending task of the image; the service token alone
    then activates it only with the image's own data, and nothing once the task ended."""
    api, registry = servers
    service = {"X-Service-Token": tokens["service"]}
    image_id = create(api, tokens["owner"])
    queued = stored(registry, image_id, tokens)
    task_id = new_task(registry, tokens, image_id)
    lock = {**queued["properties"], "os_glance_import_task": task_id, "os_glance_importing_to_stores": "local"}
    locked = put_image(
        registry, {**queued, "status": "importing", "upload_worker": "elsewhere:1:1", "properties": lock}, tokens
    )
    assert locked.status_code == 200, locked.text
    importing = locked.json()
    path = f"{registry}/v1/images/{image_id}"
    seen = requests.get(path, headers=service, timeout=30)
    assert seen.status_code == 200, seen.text
    shared = requests.put(path, json={**importing, "visibility": "public"}, headers=service, timeout=30)
    assert shared.status_code == 403, shared.text
    other = {"store": "local", "uri": "file:///var/lib/abbild/images/not-this-one", "size": 1, "status": "active"}
    theirs = {**importing, "status": "active", "size": 1, "locations": [{**other, "metadata": {}}]}
    assert refused_naming(requests.put(path, json=theirs, headers=service, timeout=30), "locations")
    # The task ended: the lock protects nothing the service token may carry on.
    resp = requests.get(f"{registry}/v1/tasks/{task_id}", headers=as_user(tokens), timeout=30)
    ended = requests.put(
        f"{registry}/v1/tasks/{task_id}", json={**resp.json(), "status": "failure"}, headers=as_user(tokens), timeout=30
    )
    assert ended.status_code == 200, ended.text
    released = {**importing, "status": "queued", "upload_worker": None, "properties": queued["properties"]}
    assert requests.put(path, json=released, headers=service, timeout=30).status_code == 403
    # ... and the owner ends the abandoned import, as the API's stale-lock breaking does.
    assert put_image(registry, released, tokens).status_code == 200
    assert stored(registry, image_id, tokens)["status"] == "queued"


# -- the service token alone: the lease keeper and recovery ----------------------------------------


def test_kill_9_mid_import_then_restart(deployment, tokens):
    """The lease keeper renews the import's claim with the service token alone; after a
    kill -9 the restarted node's recovery (the service token alone, outside any request)
    undoes the import and fails its task; the owner imports again."""
    api, registry = deployment
    owner = tokens["owner"]
    image_id = create(api.url, owner)
    with serving(handler(DATA, delay=0.5, pieces=40)) as base:
        resp = import_(api.url, image_id, owner, {"method": {"name": "web-download", "uri": f"{base}/slow"}})
        assert resp.status_code == 202, resp.text
        wait_for(lambda: get(api.url, image_id, owner)["status"] == "importing", 10, "importing")
        lease = stored(registry, image_id, tokens)["upload_lease"]
        wait_for(lambda: stored(registry, image_id, tokens)["upload_lease"] != lease, 10, "a renewed lease")
        api.kill()
    api.start()
    image = get(api.url, image_id, owner)
    assert image["status"] == "queued" and not image.get("os_glance_import_task"), image
    [task] = tasks_of(api.url, image_id, owner)
    assert task["status"] == "failure" and "interrupted" in task["message"], task
    assert [f for f in os.listdir(os.path.join(api.data_dir, "staging")) if image_id in f] == []
    with serving(handler(DATA)) as base:
        resp = import_(api.url, image_id, owner, {"method": {"name": "web-download", "uri": f"{base}/again"}})
        assert resp.status_code == 202, resp.text
        assert wait_active(api.url, image_id, owner)["size"] == len(DATA)
