"""``abbild-registry`` with ``auth_strategy = keystone`` and a REAL Keystone
(``tools/keystone-up.sh``): an API (keystone flavour, ``registry = http``) and the
registry run as separate processes, and users of two projects go through the API.

The point of keystone mode is the "compromised API node" tests: an API node holds its
service token and whatever user tokens it sees, but no token makes the registry show
a project's private image to anyone but that project. With hmac, the holder of the
shared secret can claim any caller.
"""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest
import requests

from abbild.testing.backends import backend_unavailable
from tests.functional import keystone as ks
from tests.functional.conftest import RegistryProcess, Server

PASSWORD = "abbild-test-pw"
# The registry validates tokens as one service user; the API node authenticates to
# the registry as another. Both have the role service.
REGISTRY_USER, API_NODE_USER, SERVICE_PROJECT = "abbild-service", "abbild-api-node", "service"
OWNER = ("abbild-alpha-member", "abbild-alpha")
OTHER = ("abbild-beta-member", "abbild-beta")
OCTET = {"Content-Type": "application/octet-stream"}


def authtoken_section(user: str) -> str:
    """``[keystone_authtoken]``: validate tokens as the service user *user*."""
    url = ks.auth_url()
    return (f"[keystone_authtoken]\nwww_authenticate_uri = {url}\nauth_url = {url}\nauth_type = password\n"
            f"username = {user}\npassword = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n"
            f"user_domain_id = default\nproject_domain_id = default\n")  # fmt: skip


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
    registry_conf.write_text(f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n"
                             f"[registry_server]\nauth_strategy = keystone\n" + authtoken_section(REGISTRY_USER))
    return registry_conf


@pytest.fixture(scope="module")
def servers(tokens, registry_conf):
    """(API url, registry url): a keystone-mode registry and an API in front of it."""
    base, auth_url = registry_conf.parent, ks.auth_url()
    registry = RegistryProcess(base, [str(registry_conf)])
    registry.client_options = (f"auth_strategy = keystone\nauth_url = {auth_url}\nusername = {API_NODE_USER}\n"
                               f"password = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n")  # fmt: skip
    api_conf = base / "abbild-api.conf"
    api_conf.write_text(f"""
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
[paste_deploy]
flavor = keystone
[local]
datadir = {base}/images
""" + authtoken_section(API_NODE_USER))
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
    resp = requests.post(f"{api}/v2/images", headers=owner, json={
        "name": "keystone-registry-private", "visibility": "private", "disk_format": "raw",
        "container_format": "bare"})  # fmt: skip
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
        "X-Identity-Status": "Confirmed", "X-Project-Id": owner_project, "X-Roles": "admin,member",
    }  # fmt: skip
    for user in (tokens["other"], None):
        assert registry_get(registry, f"/v1/images/{image_id}", user, tokens["service"], **forged).status_code == 404
    assert image_id not in listed_ids(listing(registry, tokens["other"], tokens["service"], **forged))
    owner_caller = {"X-Abbild-Caller": json.dumps({"service": False, "project_id": owner_project})}
    assert registry_get(registry, f"/v1/images/{image_id}", tokens["other"], tokens["service"],
                        **owner_caller).status_code == 404  # fmt: skip


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
    made_public = requests.put(f"{registry}/v1/images/{image_id}", json={**image, "visibility": "public"},
                               headers={"X-Service-Token": service}, timeout=30)  # fmt: skip
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
    released = requests.put(path, json={**seen.json(), "status": "queued", "upload_worker": None},
                            headers={"X-Service-Token": service})  # fmt: skip
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
    forged = registry_get(registry, f"/v1/images/{image_id}", tokens["owner"], not_a_service,
                          **{"X-Service-Roles": "service", "X-Service-Identity-Status": "Confirmed"})  # fmt: skip
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
