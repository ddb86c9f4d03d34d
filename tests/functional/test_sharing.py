"""Projects sharing one service (trusted-headers flavour): visibility, members, and who
may change what. An image a caller may not see is 404 on every path, never 403."""

from __future__ import annotations

import uuid

import pytest
import requests

OCTET = {"Content-Type": "application/octet-stream"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


@pytest.fixture(scope="module")
def url(server_factory):
    srv = server_factory(
        "sharing",
        """
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
[database]
connection = sqlite:///{dir}/abbild.sqlite
[paste_deploy]
flavor = trusted-headers
[local]
datadir = {dir}/images
""",
    )
    return srv.url


def who(project: str | None, *roles: str) -> dict:
    headers = {
        "X-Identity-Status": "Confirmed",
        "X-User-Id": f"user-of-{project}",
        "X-Roles": ",".join(roles or ("member", "reader")),
    }
    if project:
        headers["X-Project-Id"] = project
    return headers


@pytest.fixture
def projects():
    """Three fresh project ids: the owner, a project it shares with, a stranger."""
    return tuple(f"{name}-{uuid.uuid4().hex[:8]}" for name in ("owner", "friend", "stranger"))


def create(url, project, **body):
    resp = requests.post(
        f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare", **body}, headers=who(project)
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def listed(url, project, **params) -> set[str]:
    return listed_as(url, who(project), **params)


def listed_as(url, headers, **params) -> set[str]:
    resp = requests.get(f"{url}/v2/images", params={"limit": 1000, **params}, headers=headers)
    assert resp.status_code == 200, resp.text
    return {i["id"] for i in resp.json()["images"]}


def test_without_credentials_401(url):
    resp = requests.get(f"{url}/v2/images")
    assert resp.status_code == 401
    assert resp.headers["x-openstack-request-id"].startswith("req-")
    assert requests.get(f"{url}/healthcheck").status_code == 200  # outside the auth layer


def test_owner_is_the_callers_project(url, projects):
    owner, *_ = projects
    assert create(url, owner)["owner"] == owner
    resp = requests.post(f"{url}/v2/images", json={"owner": "someone-else"}, headers=who(owner))
    assert resp.status_code == 403


PATHS = [
    ("GET", ""),
    ("PATCH", ""),
    ("DELETE", ""),
    ("GET", "/file"),
    ("PUT", "/file"),
    ("PUT", "/tags/x"),
    ("DELETE", "/tags/x"),
    ("POST", "/actions/deactivate"),
    ("POST", "/actions/reactivate"),
    ("GET", "/members"),
    ("POST", "/members"),
    ("GET", "/members/{stranger}"),
    ("PUT", "/members/{stranger}"),
    ("DELETE", "/members/{stranger}"),
]


@pytest.mark.parametrize("method,path", PATHS)
def test_a_private_image_does_not_exist_for_others(url, projects, method, path):
    owner, _, stranger = projects
    image = create(url, owner, visibility="private")
    kwargs = {
        "PATCH": {"json": [{"op": "replace", "path": "/name", "value": "x"}], "headers": {**who(stranger), **PATCH}},
        "PUT": {"data": b"x", "headers": {**who(stranger), **OCTET}},
        "POST": {"json": {"member": stranger}, "headers": who(stranger)},
    }.get(method, {"headers": who(stranger)})
    if path.startswith("/members/") and method == "PUT":
        kwargs = {"json": {"status": "accepted"}, "headers": who(stranger)}
    if path.startswith("/tags/") or path.startswith("/actions/"):
        kwargs = {"headers": who(stranger)}
    resp = requests.request(method, f"{url}/v2/images/{image['id']}{path.format(stranger=stranger)}", **kwargs)
    assert resp.status_code == 404, (resp.status_code, resp.text)
    assert image["id"] not in listed(url, stranger, visibility="all")


def test_sharing_lifecycle(url, projects):
    owner, friend, stranger = projects
    image = create(url, owner)
    assert image["visibility"] == "shared"
    base = f"{url}/v2/images/{image['id']}"
    assert requests.get(base, headers=who(friend)).status_code == 404

    resp = requests.post(f"{base}/members", json={"member": friend}, headers=who(owner))
    assert resp.status_code == 200, resp.text
    member = resp.json()
    assert member["member_id"] == friend and member["image_id"] == image["id"] and member["status"] == "pending"
    assert member["schema"] == "/v2/schemas/member"
    assert requests.post(f"{base}/members", json={"member": friend}, headers=who(owner)).status_code == 409

    # A pending member reads the image by id, but it is not in its default list yet.
    assert requests.get(base, headers=who(friend)).status_code == 200
    assert image["id"] not in listed(url, friend)
    assert image["id"] in listed(url, friend, member_status="pending")
    assert requests.get(base, headers=who(stranger)).status_code == 404

    # Only the member decides; the owner cannot accept for it.
    resp = requests.put(f"{base}/members/{friend}", json={"status": "accepted"}, headers=who(owner))
    assert resp.status_code == 403
    resp = requests.put(f"{base}/members/{friend}", json={"status": "maybe"}, headers=who(friend))
    assert resp.status_code == 400
    resp = requests.put(f"{base}/members/{friend}", json={"status": "accepted"}, headers=who(friend))
    assert resp.status_code == 200 and resp.json()["status"] == "accepted"
    assert image["id"] in listed(url, friend)
    assert image["id"] not in listed(url, friend, member_status="rejected")

    # The owner sees every member, a member only itself.
    requests.post(f"{base}/members", json={"member": stranger}, headers=who(owner))
    everyone = requests.get(f"{base}/members", headers=who(owner)).json()
    assert sorted(m["member_id"] for m in everyone["members"]) == sorted([friend, stranger])
    assert everyone["schema"] == "/v2/schemas/members"
    mine = requests.get(f"{base}/members", headers=who(friend)).json()["members"]
    assert [m["member_id"] for m in mine] == [friend]
    assert requests.get(f"{base}/members/{stranger}", headers=who(friend)).status_code == 404
    assert requests.get(f"{base}/members/{friend}", headers=who(friend)).json()["status"] == "accepted"

    # Members read; they do not change the image or its members.
    patch = [{"op": "replace", "path": "/name", "value": "mine now"}]
    assert requests.patch(base, json=patch, headers={**who(friend), **PATCH}).status_code == 403
    assert requests.delete(base, headers=who(friend)).status_code == 403
    assert requests.delete(f"{base}/members/{stranger}", headers=who(friend)).status_code == 403
    assert requests.put(f"{base}/file", data=b"x", headers={**who(friend), **OCTET}).status_code == 403

    # Removing the member takes the image away again.
    assert requests.delete(f"{base}/members/{friend}", headers=who(owner)).status_code == 204
    assert requests.get(base, headers=who(friend)).status_code == 404
    assert requests.delete(f"{base}/members/{friend}", headers=who(owner)).status_code == 404
    # ... and it can be added again, pending once more.
    resp = requests.post(f"{base}/members", json={"member": friend}, headers=who(owner))
    assert resp.status_code == 200 and resp.json()["status"] == "pending"


@pytest.mark.parametrize("body", [{}, {"member": ""}, {"member": 5}, {"member": "x" * 256}])
def test_bad_member_bodies(url, projects, body):
    owner, *_ = projects
    image = create(url, owner)
    assert requests.post(f"{url}/v2/images/{image['id']}/members", json=body, headers=who(owner)).status_code == 400


@pytest.mark.parametrize("visibility", ["private", "public", "community"])
def test_only_shared_images_have_members(url, projects, visibility):
    owner, friend, _ = projects
    roles = ("admin",) if visibility == "public" else ("member",)
    image = requests.post(f"{url}/v2/images", json={"visibility": visibility}, headers=who(owner, *roles)).json()
    resp = requests.post(f"{url}/v2/images/{image['id']}/members", json={"member": friend}, headers=who(owner))
    assert resp.status_code == 403 and "Only shared images have members" in resp.text


def test_publicizing_is_for_administrators(url, projects):
    owner, friend, _ = projects
    assert requests.post(f"{url}/v2/images", json={"visibility": "public"}, headers=who(owner)).status_code == 403
    image = create(url, owner)
    base = f"{url}/v2/images/{image['id']}"
    public = [{"op": "replace", "path": "/visibility", "value": "public"}]
    assert requests.patch(base, json=public, headers={**who(owner), **PATCH}).status_code == 403
    resp = requests.patch(base, json=public, headers={**who("ops", "admin"), **PATCH})
    assert resp.status_code == 200 and resp.json()["visibility"] == "public"
    assert image["id"] in listed(url, friend)
    assert requests.get(base, headers=who(friend)).status_code == 200


def test_community_images_are_readable_but_not_listed_by_default(url, projects):
    owner, friend, _ = projects
    image = create(url, owner, visibility="community")
    assert requests.get(f"{url}/v2/images/{image['id']}", headers=who(friend)).status_code == 200
    assert image["id"] not in listed(url, friend)
    assert image["id"] in listed(url, friend, visibility="community")
    assert image["id"] in listed(url, owner)


def test_community_images_of_others_stay_out_of_an_admins_default_list(url, projects):
    """As Glance 33: administrators included, unless their project owns the image."""
    owner, other, _ = projects
    image = create(url, owner, visibility="community")
    admin = who(other, "admin", "member", "reader")
    assert image["id"] not in listed_as(url, admin)
    assert image["id"] in listed_as(url, admin, visibility="community")
    assert image["id"] in listed_as(url, admin, visibility="all")
    assert image["id"] in listed_as(url, who(owner, "admin", "member", "reader"))


def test_data_of_a_shared_image_is_downloadable_by_members(url, projects):
    owner, friend, stranger = projects
    image = create(url, owner)
    base = f"{url}/v2/images/{image['id']}"
    assert requests.put(f"{base}/file", data=b"payload", headers={**who(owner), **OCTET}).status_code == 204
    requests.post(f"{base}/members", json={"member": friend}, headers=who(owner))
    assert requests.get(f"{base}/file", headers=who(friend)).content == b"payload"
    assert requests.get(f"{base}/file", headers=who(stranger)).status_code == 404
    # Deactivated: only administrators may still download.
    assert requests.post(f"{base}/actions/deactivate", headers=who(owner)).status_code == 204
    assert requests.get(f"{base}/file", headers=who(owner)).status_code == 403
    assert requests.get(f"{base}/file", headers=who("ops", "admin")).status_code == 200


def test_service_catalog_header_must_be_json(url):
    headers = {**who("p-catalog"), "X-Service-Catalog": "[{not json"}
    resp = requests.get(f"{url}/v2/images", headers=headers)
    assert resp.status_code == 400 and "X-Service-Catalog" in resp.text
    headers["X-Service-Catalog"] = '[{"type": "image", "endpoints": []}]'
    assert requests.get(f"{url}/v2/images", headers=headers).status_code == 200
