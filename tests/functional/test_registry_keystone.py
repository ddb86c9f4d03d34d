"""``abbild-registry`` with ``auth_strategy = keystone`` and a REAL Keystone
(``tools/keystone-up.sh``): an API (keystone flavour, ``registry = http``) and the
registry run as separate processes, and users of two projects go through the API.

The point of keystone mode is the "compromised API node" tests: an API node holds its
service token and whatever user tokens it sees, but no token makes the registry show
a project's private image to anyone but that project. With hmac, the holder of the
shared secret can claim any caller.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import time
import urllib.parse
import uuid

import pytest
import requests

from abbild import registry_wire as wire
from abbild.image import Image
from abbild.testing.backends import backend_unavailable
from tests.functional import keystone as ks
from tests.functional.conftest import RegistryProcess, Server
from tests.functional.helpers import serving

PASSWORD = "abbild-test-pw"
# The registry validates tokens as one service user; the API node authenticates to
# the registry as another. Both have the role service.
REGISTRY_USER, API_NODE_USER, SERVICE_PROJECT = "abbild-service", "abbild-api-node", "service"
OWNER = ("abbild-alpha-member", "abbild-alpha")
OTHER = ("abbild-beta-member", "abbild-beta")
OCTET = {"Content-Type": "application/octet-stream"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
# Properties x_admin_* are for administrators only ([DEFAULT] property_protection_file).
PROTECTIONS = (
    "[^x_admin_]\ncreate = admin\nread = @\nupdate = admin\ndelete = admin\n"
    "[.*]\ncreate = @\nread = @\nupdate = @\ndelete = @\n"
)
WEB_DATA = os.urandom(50_000)


def authtoken_section(user: str) -> str:
    """``[keystone_authtoken]``: validate tokens as the service user *user*."""
    url = ks.auth_url()
    return (
        f"[keystone_authtoken]\nwww_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n"
        f"username = {user}\npassword = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n"
        f"user_domain_id = default\nproject_domain_id = default\n"
    )


def token(user: str, project: str, roles=("member",)) -> str:
    ks.ensure_user(user, PASSWORD, project, roles)
    return ks.token_for(user, PASSWORD, project)[0]


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
    """The config file of a keystone-mode registry; its database is next to it."""
    base = tmp_path_factory.mktemp("registry-keystone")
    registry_conf = base / "abbild-registry.conf"
    (base / "protections.conf").write_text(PROTECTIONS)
    registry_conf.write_text(
        f"[DEFAULT]\nproperty_protection_file = {base}/protections.conf\n"
        f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n"
        f"[registry_server]\nauth_strategy = keystone\n" + authtoken_section(REGISTRY_USER)
    )
    return registry_conf


class _WebData(http.server.BaseHTTPRequestHandler):
    """WEB_DATA at every path: the data of locations registered by URL."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self, body: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(WEB_DATA)))
        self.end_headers()
        if body:
            self.wfile.write(WEB_DATA)

    def do_GET(self) -> None:
        self.do_HEAD(body=True)


@pytest.fixture(scope="module")
def web():
    with serving(_WebData) as url:
        yield url


@pytest.fixture(scope="module")
def servers(tokens, registry_conf):
    """(API url, registry url): a keystone-mode registry and an API in front of it."""
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
enabled_backends = local:filesystem, web:http
default_backend = local
show_multiple_locations = true
[paste_deploy]
flavor = keystone
[local]
datadir = {base}/images
[web]
allowed_networks = 127.0.0.1/32
"""
        + authtoken_section(API_NODE_USER)
    )
    registry.start()
    api = Server(base, "--config-file", str(api_conf), "--config-file", registry.client_config())
    api.registry = registry  # stopped with the API; under ABBILD_TEST_REGISTRY=http, not a second one
    try:
        api.start()
        yield api.url, registry.url
    finally:
        api.stop()
    for log in (api.read_log(), registry.read_log()):
        assert not any(t in log for t in tokens.values()), "a token was logged"


@pytest.fixture(scope="module")
def private_image(servers, tokens):
    """A private image of the owner's project, uploaded through the API: (id, data)."""
    api, _ = servers
    owner = {"X-Auth-Token": tokens["owner"]}
    resp = requests.post(
        f"{api}/v2/images",
        headers=owner,
        json={
            "name": "keystone-registry-private",
            "visibility": "private",
            "disk_format": "raw",
            "container_format": "bare",
        },
    )
    assert resp.status_code == 201, resp.text
    image_id, data = resp.json()["id"], os.urandom(100_000)
    resp = requests.put(f"{api}/v2/images/{image_id}/file", data=data, headers={**owner, **OCTET})
    assert resp.status_code == 204, resp.text
    return image_id, data


# -- through the API ------------------------------------------------------------------------


def test_owner_lists_shows_and_downloads_its_private_image(servers, tokens, private_image):
    api, _ = servers
    image_id, data = private_image
    owner = {"X-Auth-Token": tokens["owner"]}
    shown = requests.get(f"{api}/v2/images/{image_id}", headers=owner)
    assert shown.status_code == 200 and shown.json()["status"] == "active", shown.text
    listed = requests.get(f"{api}/v2/images", headers=owner).json()["images"]
    assert image_id in {i["id"] for i in listed}
    assert requests.get(f"{api}/v2/images/{image_id}/file", headers=owner).content == data


def test_other_project_gets_404_through_the_api(servers, tokens, private_image):
    api, _ = servers
    image_id, _ = private_image
    other = {"X-Auth-Token": tokens["other"]}
    assert requests.get(f"{api}/v2/images/{image_id}", headers=other).status_code == 404
    assert requests.get(f"{api}/v2/images/{image_id}/file", headers=other).status_code == 404
    listed = requests.get(f"{api}/v2/images", headers=other).json()["images"]
    assert image_id not in {i["id"] for i in listed}


# -- a compromised API node, talking to the registry directly ---------------------------------


def registry_get(registry: str, path: str, user: str | None, service: str | None, **headers) -> requests.Response:
    if user:
        headers["X-Auth-Token"] = user
    if service:
        headers["X-Service-Token"] = service
    return requests.get(registry + path, headers=headers, timeout=30)


def listing(registry: str, user: str | None, service: str | None, **headers) -> requests.Response:
    return registry_get(registry, "/v1/images?limit=1000&filters=%7B%7D", user, service, **headers)


def listed_ids(resp: requests.Response) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {i["id"] for i in resp.json()["images"]}


def test_registry_serves_the_owner_with_the_owners_token(servers, tokens, private_image):
    _, registry = servers
    image_id, _ = private_image
    resp = registry_get(registry, f"/v1/images/{image_id}", tokens["owner"], tokens["service"])
    assert resp.status_code == 200, resp.text
    assert image_id in listed_ids(listing(registry, tokens["owner"], tokens["service"]))


def test_service_token_with_another_users_token_cannot_read_it(servers, tokens, private_image):
    _, registry = servers
    image_id, _ = private_image
    assert registry_get(registry, f"/v1/images/{image_id}", tokens["other"], tokens["service"]).status_code == 404
    assert image_id not in listed_ids(listing(registry, tokens["other"], tokens["service"]))


def test_asserted_identity_headers_are_ignored(servers, tokens, private_image):
    """The caller header of hmac mode, and keystonemiddleware's own headers, claiming
    the service, the owner's project or the admin role: keystone mode believes none."""
    _, registry = servers
    image_id, _ = private_image
    owner_project = ks.token_for(OWNER[0], PASSWORD, OWNER[1])[1]
    forged = {
        "X-Abbild-Caller": json.dumps({"service": True}),
        "X-Identity-Status": "Confirmed",
        "X-Project-Id": owner_project,
        "X-Roles": "admin,member",
    }
    for user in (tokens["other"], None):
        assert registry_get(registry, f"/v1/images/{image_id}", user, tokens["service"], **forged).status_code == 404
    assert image_id not in listed_ids(listing(registry, tokens["other"], tokens["service"], **forged))
    owner_caller = {"X-Abbild-Caller": json.dumps({"service": False, "project_id": owner_project})}
    assert (
        registry_get(registry, f"/v1/images/{image_id}", tokens["other"], tokens["service"], **owner_caller).status_code
        == 404
    )


def test_service_token_alone_reaches_only_uploads_in_progress(servers, tokens, private_image):
    _, registry = servers
    image_id, _ = private_image
    service = tokens["service"]
    assert registry_get(registry, f"/v1/images/{image_id}", None, service).status_code == 404
    assert listing(registry, None, service).status_code == 401
    assert registry_get(registry, "/v1/images?in_status=active", None, service).status_code == 401
    assert image_id not in listed_ids(registry_get(registry, "/v1/images?in_status=saving", None, service))
    assert registry_get(registry, f"/v1/images/{image_id}/members", None, service).status_code == 401
    image = registry_get(registry, f"/v1/images/{image_id}", tokens["owner"], service).json()
    made_public = requests.put(
        f"{registry}/v1/images/{image_id}",
        json={**image, "visibility": "public"},
        headers={"X-Service-Token": service},
        timeout=30,
    )
    assert made_public.status_code == 404, made_public.text


def test_service_token_alone_carries_an_upload_on(servers, tokens):
    """What recovery and a background import do: find the image in 'saving', then
    release or activate it; but not change who may see it."""
    api, registry = servers
    owner, service = tokens["owner"], tokens["service"]
    resp = requests.post(f"{api}/v2/images", headers={"X-Auth-Token": owner}, json={"name": "in-progress"})
    image_id = resp.json()["id"]
    path = f"{registry}/v1/images/{urllib.parse.quote(image_id)}"
    image = registry_get(registry, f"/v1/images/{image_id}", owner, service).json()
    claim = {**image, "status": "saving", "upload_worker": "elsewhere:1"}
    claimed = requests.put(path, json=claim, headers={"X-Auth-Token": owner, "X-Service-Token": service})
    assert claimed.status_code == 200, claimed.text
    assert image_id in listed_ids(registry_get(registry, "/v1/images?in_status=saving", None, service))
    seen = registry_get(registry, f"/v1/images/{image_id}", None, service)
    assert seen.status_code == 200, seen.text
    shared = requests.put(path, json={**seen.json(), "visibility": "public"}, headers={"X-Service-Token": service})
    assert shared.status_code == 403, shared.text
    released = requests.put(
        path, json={**seen.json(), "status": "queued", "upload_worker": None}, headers={"X-Service-Token": service}
    )
    assert released.status_code == 200, released.text
    assert registry_get(registry, f"/v1/images/{image_id}", None, service).status_code == 404


def test_missing_or_invalid_tokens_are_401(servers, tokens, private_image):
    _, registry = servers
    image_id, _ = private_image
    path = f"/v1/images/{image_id}"
    assert registry_get(registry, path, tokens["owner"], None).status_code == 401  # no service token
    assert registry_get(registry, path, tokens["owner"], "not-a-token").status_code == 401
    assert registry_get(registry, path, "not-a-token", tokens["service"]).status_code == 401
    assert registry_get(registry, path, None, None).status_code == 401


def test_service_token_without_the_service_role_is_refused(servers, tokens, private_image):
    """keystonemiddleware (13: ``service_token_roles_required`` defaults to true) finds
    such a service token invalid, so 401; the registry's own role check answers 403
    where that option is off (tests/unit/test_registry_http_keystone.py)."""
    _, registry = servers
    image_id, _ = private_image
    not_a_service = tokens["other"]
    resp = registry_get(registry, f"/v1/images/{image_id}", tokens["owner"], not_a_service)
    assert resp.status_code == 401 and "roles service" in resp.text, resp.text
    forged = registry_get(
        registry,
        f"/v1/images/{image_id}",
        tokens["owner"],
        not_a_service,
        **{"X-Service-Roles": "service", "X-Service-Identity-Status": "Confirmed"},
    )
    assert forged.status_code == 401, forged.text


def test_service_role_is_checked_even_where_keystonemiddleware_does_not(registry_conf, tokens, tmp_path):
    """With ``service_token_roles_required = false`` any valid token passes as a
    service token at keystonemiddleware; the registry still wants the role: 403."""
    lenient = tmp_path / "lenient.conf"
    lenient.write_text("[keystone_authtoken]\nservice_token_roles_required = false\n")
    registry = RegistryProcess(tmp_path, [str(registry_conf), str(lenient)])
    try:
        registry.start()
        resp = listing(registry.url, tokens["owner"], tokens["other"])
        assert resp.status_code == 403 and "roles service" in resp.text, resp.text
        assert listing(registry.url, tokens["owner"], tokens["service"]).status_code == 200
    finally:
        registry.stop()


# -- a compromised API node, forging image bodies with a user's token ---------------------------


@functools.cache
def project_of(user: tuple[str, str]) -> str:
    return ks.token_for(user[0], PASSWORD, user[1])[1]


def as_user(tokens, user: str = "owner") -> dict:
    return {"X-Auth-Token": tokens[user], "X-Service-Token": tokens["service"]}


def refused_naming(resp: requests.Response, attribute: str) -> bool:
    return resp.status_code == 403 and f"'{attribute}'" in resp.json()["error"]["message"]


def api_image(api: str, tokens, user: str = "owner", upload: bool = False, **fields) -> str:
    headers = {"X-Auth-Token": tokens[user]}
    resp = requests.post(
        f"{api}/v2/images", headers=headers, json={"disk_format": "raw", "container_format": "bare", **fields}
    )
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    if upload:
        resp = requests.put(f"{api}/v2/images/{image_id}/file", data=os.urandom(1000), headers={**headers, **OCTET})
        assert resp.status_code == 204, resp.text
    return image_id


def stored(registry: str, image_id: str, tokens, user: str = "owner") -> dict:
    resp = requests.get(f"{registry}/v1/images/{image_id}", headers=as_user(tokens, user), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def put_image(registry: str, body: dict, tokens, user: str = "owner") -> requests.Response:
    return requests.put(f"{registry}/v1/images/{body['id']}", json=body, headers=as_user(tokens, user), timeout=30)


@pytest.fixture(scope="module")
def victims_data(servers, tokens) -> dict:
    """The location of another project's private image: data an attacker must not reach."""
    api, registry = servers
    image_id = api_image(api, tokens, "other", upload=True, visibility="private")
    [location] = stored(registry, image_id, tokens, "other")["locations"]
    assert location["uri"].startswith("file://") and image_id in location["uri"]
    return location


@pytest.mark.parametrize(
    "name, value, attribute",
    [
        ("visibility", "public", "visibility"),
        ("status", "active", "status"),
        ("checksum", "0" * 32, "checksum"),
        ("size", 1 << 40, "size"),
        ("os_hash_value", "0" * 128, "os_hash_value"),
        ("upload_worker", "elsewhere:1:1", "upload_worker"),
        ("properties", {"x_admin_approved": "yes"}, "x_admin_approved"),
        ("locations", "victim", "locations"),
    ],
    ids=[
        "public",
        "active",
        "checksum",
        "size",
        "os_hash_value",
        "claim",
        "protected property",
        "another image's data",
    ],
)
def test_forged_new_image_is_refused(servers, tokens, victims_data, name, value, attribute):
    _, registry = servers
    body = wire.image_to_json(Image(id=str(uuid.uuid4()), owner=project_of(OWNER), visibility="private"))
    body[name] = [victims_data] if value == "victim" else value
    resp = requests.post(f"{registry}/v1/images", json=body, headers=as_user(tokens), timeout=30)
    assert refused_naming(resp, attribute), resp.text
    assert requests.get(f"{registry}/v1/images/{body['id']}", headers=as_user(tokens), timeout=30).status_code == 404


def test_a_users_own_new_image_is_created(servers, tokens):
    _, registry = servers
    body = wire.image_to_json(Image(id=str(uuid.uuid4()), owner=project_of(OWNER), visibility="community"))
    resp = requests.post(f"{registry}/v1/images", json=body, headers=as_user(tokens), timeout=30)
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    "attribute, change",
    [
        ("owner", lambda image, victim: image.update(owner=project_of(OTHER))),
        ("visibility", lambda image, victim: image.update(visibility="public")),
        ("checksum", lambda image, victim: image.update(checksum="0" * 32)),
        ("size", lambda image, victim: image.update(size=1 << 40)),
        ("os_hash_value", lambda image, victim: image.update(os_hash_value="0" * 128)),
        ("created_at", lambda image, victim: image.update(created_at="2001-01-01T00:00:00")),
        ("x_admin_approved", lambda image, victim: image["properties"].update(x_admin_approved="yes")),
        ("locations", lambda image, victim: image["locations"].append(victim)),
        ("locations", lambda image, victim: image.update(locations=[victim])),
    ],
    ids=[
        "owner",
        "public",
        "checksum",
        "size",
        "os_hash_value",
        "created_at",
        "protected property",
        "another image's data added",
        "another image's data instead",
    ],
)
def test_forged_change_of_an_active_image_is_refused(servers, tokens, private_image, victims_data, attribute, change):
    _, registry = servers
    image_id, _ = private_image
    before = stored(registry, image_id, tokens)
    forged = json.loads(json.dumps(before))
    change(forged, victims_data)
    resp = put_image(registry, forged, tokens)
    assert refused_naming(resp, attribute), resp.text
    assert stored(registry, image_id, tokens) == before


def test_forged_activation_is_refused(servers, tokens, victims_data):
    """A claimed upload finished with another image's data, or a queued image made
    active without any: refused; the claim and its release are the service's own."""
    api, registry = servers
    image_id = api_image(api, tokens)
    queued = stored(registry, image_id, tokens)
    made_active = put_image(registry, {**queued, "status": "active", "size": 5, "checksum": "0" * 32}, tokens)
    assert refused_naming(made_active, "status"), made_active.text
    claimed = put_image(registry, {**queued, "status": "saving", "upload_worker": "elsewhere:1:1"}, tokens)
    assert claimed.status_code == 200, claimed.text
    saving = claimed.json()
    forged = {
        **saving,
        "status": "active",
        "size": victims_data["size"],
        "checksum": "0" * 32,
        "locations": [victims_data],
        "upload_worker": None,
    }
    assert refused_naming(put_image(registry, forged, tokens), "locations")
    released = put_image(registry, {**saving, "status": "queued", "upload_worker": None, "upload_lease": None}, tokens)
    assert released.status_code == 200 and released.json()["status"] == "queued", released.text


# -- the API's own flows, through a keystone-mode registry ------------------------------------


def wait_for_status(api: str, image_id: str, headers: dict, status: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        image = requests.get(f"{api}/v2/images/{image_id}", headers=headers).json()
        if image["status"] == status:
            return image
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} is {image['status']}, not {status}")


def test_the_apis_own_changes_pass_the_registrys_rules(servers, tokens, web):
    """Create, upload, PATCH, share, deactivate, register locations, delete: each write
    the service makes for a user is one the registry lets that user make."""
    api, _ = servers
    owner, other = {"X-Auth-Token": tokens["owner"]}, {"X-Auth-Token": tokens["other"]}
    image_id = api_image(api, tokens, upload=True, visibility="shared")
    changes = [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/os_distro", "value": "debian"},
        {"op": "add", "path": "/tags", "value": ["a", "b"]},
        {"op": "replace", "path": "/min_ram", "value": 512},
    ]
    patched = requests.patch(f"{api}/v2/images/{image_id}", json=changes, headers={**owner, **PATCH})
    assert patched.status_code == 200 and patched.json()["os_distro"] == "debian", patched.text
    member = project_of(OTHER)
    added = requests.post(f"{api}/v2/images/{image_id}/members", json={"member": member}, headers=owner)
    assert added.status_code == 200, added.text
    accepted = requests.put(f"{api}/v2/images/{image_id}/members/{member}", json={"status": "accepted"}, headers=other)
    assert accepted.status_code == 200, accepted.text
    assert requests.get(f"{api}/v2/images/{image_id}", headers=other).status_code == 200
    for action in ("deactivate", "reactivate"):
        resp = requests.post(f"{api}/v2/images/{image_id}/actions/{action}", headers=owner)
        assert resp.status_code == 204, resp.text
    community = requests.patch(
        f"{api}/v2/images/{image_id}",
        headers={**owner, **PATCH},
        json=[{"op": "replace", "path": "/visibility", "value": "community"}],
    )
    assert community.status_code == 200, community.text

    by_patch = api_image(api, tokens)
    location = {"op": "add", "path": "/locations/-", "value": {"url": f"{web}/by-patch.img", "metadata": {}}}
    resp = requests.patch(f"{api}/v2/images/{by_patch}", json=[location], headers={**owner, **PATCH})
    assert resp.status_code == 200 and resp.json()["status"] == "active", resp.text
    by_post = api_image(api, tokens)
    resp = requests.post(f"{api}/v2/images/{by_post}/locations", json={"url": f"{web}/by-post.img"}, headers=owner)
    assert resp.status_code == 202, resp.text
    assert wait_for_status(api, by_post, owner, "active")["size"] == len(WEB_DATA)  # finished with the service token

    for done in (image_id, by_patch, by_post):
        assert requests.delete(f"{api}/v2/images/{done}", headers=owner).status_code == 204
        assert requests.get(f"{api}/v2/images/{done}", headers=owner).status_code == 404


def test_the_scrubber_works_with_the_service_token_alone(servers, tokens, registry_conf):
    """``abbild scrub`` on an API node's config (its service user, no user's token):
    it finds a delayed delete, claims it and deletes its data as a service job; but
    neither that token nor the owner's brings the image back."""
    import glob
    import subprocess
    import sys

    api, registry = servers
    owner, service = tokens["owner"], tokens["service"]
    base = registry_conf.parent
    image_id = api_image(api, tokens)
    resp = requests.put(f"{api}/v2/images/{image_id}/file", data=b"scrub me", headers={"X-Auth-Token": owner, **OCTET})
    assert resp.status_code == 204, resp.text
    path = f"{registry}/v1/images/{urllib.parse.quote(image_id)}"
    both = {"X-Auth-Token": owner, "X-Service-Token": service}
    image = requests.get(path, headers=both, timeout=30).json()
    # The owner's delete on an API node with delayed_delete: hidden, the data kept.
    waiting = requests.put(
        path, json={**image, "status": "pending_delete", "deleted_at": image["updated_at"]}, headers=both
    )
    assert waiting.status_code == 200, waiting.text
    back = requests.put(path, json={**waiting.json(), "status": "active", "deleted_at": None}, headers=both)
    assert back.status_code == 403 and "waits for the scrubber" in back.text, back.text
    files = [str(base / "abbild-api.conf"), *glob.glob(str(base / "registry-client-*.conf"))]
    (base / "scrub-now.conf").write_text("[DEFAULT]\nscrub_time = 0\n")
    files.append(str(base / "scrub-now.conf"))

    def scrub(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "abbild_cmd.cli", "scrub", *args, *(a for f in files for a in ("--config-file", f))],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ABBILD_CONFIG_DIR": "/nonexistent"},
        )

    restored = scrub("--restore", image_id)
    assert restored.returncode == 2 and "Restoring takes the registry's full trust" in restored.stderr, restored.stderr
    assert os.path.exists(base / "images" / image_id)
    scrubbed = scrub("--json")
    assert scrubbed.returncode == 0, scrubbed.stderr
    assert json.loads(scrubbed.stdout.splitlines()[-1])["deleted"] >= 1
    assert not os.path.exists(base / "images" / image_id)
    assert image_id not in listed_ids(registry_get(registry, "/v1/images?in_status=pending_delete", None, service))
    assert requests.get(path, headers=both, timeout=30).status_code == 404  # deleted
