"""The ``keystone`` flavour with a REAL Keystone (``tools/keystone-up.sh``): real tokens,
validated by keystonemiddleware, through python-glanceclient, openstacksdk, the ``glance``
and ``openstack`` CLIs and plain HTTP; and the permission matrix of every role against
every operation, which the README's security section shows.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import uuid

import pytest
import requests

from abbild.testing.backends import backend_unavailable
from tests.functional import keystone as ks
from tests.functional.clis import executable

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}
PASSWORD = "abbild-test-pw"
SERVICE_USER, SERVICE_PROJECT = "abbild-service", "service"


@pytest.fixture(scope="module")
def keystone():
    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    ks.ensure_user(SERVICE_USER, PASSWORD, SERVICE_PROJECT, ["service"])
    return ks


KEYSTONE_CONFIG = """
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
username = {user}
password = {password}
project_name = {project}
user_domain_id = default
project_domain_id = default
"""


@pytest.fixture(scope="module")
def url(keystone, server_factory):
    text = KEYSTONE_CONFIG.format(auth_url=ks.auth_url(), user=SERVICE_USER, password=PASSWORD, project=SERVICE_PROJECT)
    return server_factory("keystone", text).url


@functools.cache
def login(user: str, project: str, *roles: str) -> tuple[str, str]:
    """A token for *user* with *roles* on *project* (all created if missing): (token, project_id)."""
    ks.ensure_user(user, PASSWORD, project, roles)
    token, project_id, _ = ks.token_for(user, PASSWORD, project)
    return token, project_id


def auth(who: str) -> dict:
    return {} if who == "anonymous" else {"X-Auth-Token": login(*PRINCIPALS[who])[0]}


def project_of(who: str) -> str:
    return login(*PRINCIPALS[who])[1]


# Every principal of the matrix: (user, project, roles). Keystone's bootstrap makes
# admin imply member and member imply reader, so tokens carry the implied roles too.
PRINCIPALS = {
    "admin": ("abbild-admin", "abbild-admins", "admin"),
    "owner member": ("abbild-alpha-member", "abbild-alpha", "member"),
    "owner reader": ("abbild-alpha-reader", "abbild-alpha", "reader"),
    "other project member": ("abbild-beta-member", "abbild-beta", "member"),
    "image member, pending": ("abbild-gamma-member", "abbild-gamma", "member"),
    "image member, accepted": ("abbild-delta-member", "abbild-delta", "member"),
    "image member, rejected": ("abbild-epsilon-member", "abbild-epsilon", "member"),
    "anonymous": None,
}
MEMBER_STATUS = {
    "image member, pending": "pending",
    "image member, accepted": "accepted",
    "image member, rejected": "rejected",
}


# -- authentication -------------------------------------------------------------------------


def test_no_token_is_401_with_keystone_challenge(url):
    resp = requests.get(f"{url}/v2/images")
    assert resp.status_code == 401
    assert "Keystone uri=" in resp.headers.get("WWW-Authenticate", "")


def test_bad_token_is_401(url):
    assert requests.get(f"{url}/v2/images", headers={"X-Auth-Token": "not-a-token"}).status_code == 401


def test_versions_and_healthcheck_need_no_token(url):
    assert requests.get(f"{url}/versions").status_code == 200
    assert requests.get(f"{url}/healthcheck").status_code == 200


def test_owner_is_the_token_project(url):
    token, project_id = login(*PRINCIPALS["owner member"])
    resp = requests.post(f"{url}/v2/images", json={"name": "mine"}, headers={"X-Auth-Token": token})
    assert resp.status_code == 201, resp.text
    assert resp.json()["owner"] == project_id
    other = requests.post(
        f"{url}/v2/images", json={"owner": project_of("other project member")}, headers={"X-Auth-Token": token}
    )
    assert other.status_code == 403


# -- real clients with real tokens --------------------------------------------------------------


def test_glanceclient_with_keystone_session(url, keystone):
    from glanceclient import Client
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    user, project, *_ = PRINCIPALS["owner member"]
    login(*PRINCIPALS["owner member"])
    sess = session.Session(
        auth=v3.Password(
            auth_url=ks.auth_url(),
            username=user,
            password=PASSWORD,
            project_name=project,
            user_domain_id="default",
            project_domain_id="default",
        )
    )
    glance = Client("2", session=sess, endpoint_override=url)
    data = os.urandom(300_000)
    image = glance.images.create(name="gc-keystone", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(data))
    assert b"".join(glance.images.data(image.id)) == data
    assert glance.images.get(image.id).owner == sess.get_project_id()
    assert image.id in {i.id for i in glance.images.list()}
    glance.images.delete(image.id)


def test_openstacksdk_with_password_auth(url, keystone):
    import openstack

    user, project, *_ = PRINCIPALS["owner member"]
    login(*PRINCIPALS["owner member"])
    conn = openstack.connect(
        auth_type="password",
        auth={
            "auth_url": ks.auth_url(),
            "username": user,
            "password": PASSWORD,
            "project_name": project,
            "user_domain_id": "default",
            "project_domain_id": "default",
        },
        image_endpoint_override=url,
    )
    data = os.urandom(200_000)
    image = conn.image.create_image(name="sdk-keystone", data=data, disk_format="raw", container_format="bare")
    image = conn.image.get_image(image.id)
    assert image.status == "active"
    assert hashlib.sha512(data).hexdigest() == image.hash_value
    assert image.owner_id == project_of("owner member")
    assert conn.image.download_image(image).content == data
    conn.image.delete_image(image)


def _cli_env(who: str, tmp_path) -> dict:
    user, project, *_ = PRINCIPALS[who]
    login(*PRINCIPALS[who])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(
        HOME=str(tmp_path),
        OS_AUTH_URL=ks.auth_url(),
        OS_USERNAME=user,
        OS_PASSWORD=PASSWORD,
        OS_PROJECT_NAME=project,
        OS_USER_DOMAIN_ID="default",
        OS_PROJECT_DOMAIN_ID="default",
        OS_IDENTITY_API_VERSION="3",
        OS_AUTH_TYPE="password",
    )
    return env


def cli(argv, env) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}\n{proc.stdout}"
    return proc.stdout


def test_glance_cli_member_commands(url, tmp_path):
    owner, friend = _cli_env("owner member", tmp_path), _cli_env("image member, pending", tmp_path)
    glance = [executable("glance"), "--os-image-url", url]
    image_id = cli(
        glance
        + [
            "image-create",
            "--name",
            "cli-shared",
            "--visibility",
            "shared",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
        ],
        owner,
    )
    image_id = next(line.split("|")[2].strip() for line in image_id.splitlines() if "| id " in line)
    member = project_of("image member, pending")
    assert "pending" in cli(glance + ["member-create", image_id, member], owner)
    assert member in cli(glance + ["member-list", "--image-id", image_id], owner)
    assert "accepted" in cli(glance + ["member-update", image_id, member, "accepted"], friend)
    assert image_id in cli(glance + ["image-list"], friend)


def test_openstack_cli_add_project_and_accept(url, tmp_path):
    owner, friend = _cli_env("owner member", tmp_path), _cli_env("image member, accepted", tmp_path)
    owner["OS_IMAGE_ENDPOINT_OVERRIDE"] = friend["OS_IMAGE_ENDPOINT_OVERRIDE"] = url
    osc = [executable("openstack")]
    name = f"osc-shared-{uuid.uuid4().hex[:8]}"
    image_id = cli(osc + ["image", "create", name, "--shared", "-f", "value", "-c", "id"], owner).strip()
    member = project_of("image member, accepted")
    cli(osc + ["image", "add", "project", image_id, member], owner)
    assert name not in cli(osc + ["image", "list", "-f", "value", "-c", "Name"], friend)  # pending
    cli(osc + ["image", "set", "--accept", image_id], friend)
    assert name in cli(osc + ["image", "list", "-f", "value", "-c", "Name"], friend)
    assert "accepted" in cli(osc + ["image", "member", "list", image_id, "-f", "value"], owner)


# -- the permission matrix -----------------------------------------------------------------------


def _shared_image(url, *, upload=True) -> str:
    """A shared image of the owner project, with data, and the three image members."""
    owner = auth("owner member")
    image = requests.post(
        f"{url}/v2/images",
        headers=owner,
        json={"name": "matrix", "visibility": "shared", "disk_format": "raw", "container_format": "bare"},
    )
    assert image.status_code == 201, image.text
    image_id = image.json()["id"]
    if upload:
        resp = requests.put(f"{url}/v2/images/{image_id}/file", data=b"matrix data", headers={**owner, **OCTET})
        assert resp.status_code == 204, resp.text
    for who, status in MEMBER_STATUS.items():
        member = project_of(who)
        resp = requests.post(f"{url}/v2/images/{image_id}/members", json={"member": member}, headers=owner)
        assert resp.status_code == 200, resp.text
        if status != "pending":
            resp = requests.put(
                f"{url}/v2/images/{image_id}/members/{member}", json={"status": status}, headers=auth(who)
            )
            assert resp.status_code == 200, resp.text
    return image_id


def _patch(url, image_id, headers, **values):
    ops = [{"op": "replace", "path": f"/{k}", "value": v} for k, v in values.items()]
    return requests.patch(f"{url}/v2/images/{image_id}", json=ops, headers={**headers, **PATCH})


def _list(url, image_id, headers) -> str:
    resp = requests.get(f"{url}/v2/images", params={"limit": 1000}, headers=headers)
    if resp.status_code != 200:
        return str(resp.status_code)
    return "200 listed" if image_id in {i["id"] for i in resp.json()["images"]} else "200 unlisted"


def _update_member(url, image_id, headers, who):
    """A member updates its own membership; anyone else tries the pending member's."""
    member = project_of(who) if who in MEMBER_STATUS else project_of("image member, pending")
    return requests.put(f"{url}/v2/images/{image_id}/members/{member}", json={"status": "accepted"}, headers=headers)


OPERATIONS = {
    # name: (needs an uploaded image, call(url, image_id, headers, who) -> response or status text)
    "show": (True, lambda u, i, h, w: requests.get(f"{u}/v2/images/{i}", headers=h)),
    "list": (True, lambda u, i, h, w: _list(u, i, h)),
    "download": (True, lambda u, i, h, w: requests.get(f"{u}/v2/images/{i}/file", headers=h)),
    "update": (True, lambda u, i, h, w: _patch(u, i, h, name="renamed")),
    "delete": (True, lambda u, i, h, w: requests.delete(f"{u}/v2/images/{i}", headers=h)),
    "add member": (
        True,
        lambda u, i, h, w: requests.post(f"{u}/v2/images/{i}/members", json={"member": "someone-else"}, headers=h),
    ),
    "update member": (True, _update_member),
    "deactivate": (True, lambda u, i, h, w: requests.post(f"{u}/v2/images/{i}/actions/deactivate", headers=h)),
    "publicize": (True, lambda u, i, h, w: _patch(u, i, h, visibility="public")),
    "communitize": (True, lambda u, i, h, w: _patch(u, i, h, visibility="community")),
    "upload": (
        False,
        lambda u, i, h, w: requests.put(f"{u}/v2/images/{i}/file", data=b"new data", headers={**h, **OCTET}),
    ),
}

_READS_OF_A_MEMBER = {"show": "200", "list": None, "download": "200", "update member": "200"}
EXPECTED = {
    "admin": {
        "show": "200",
        "list": "200 listed",
        "download": "200",
        "update": "200",
        "delete": "204",
        "add member": "200",
        "update member": "200",
        "deactivate": "204",
        "publicize": "200",
        "communitize": "200",
        "upload": "204",
    },
    "owner member": {
        "show": "200",
        "list": "200 listed",
        "download": "200",
        "update": "200",
        "delete": "204",
        "add member": "200",
        "update member": "403",
        "deactivate": "204",
        "publicize": "403",
        "communitize": "200",
        "upload": "204",
    },
    "owner reader": {
        "show": "200",
        "list": "200 listed",
        **dict.fromkeys(
            (
                "download",
                "update",
                "delete",
                "add member",
                "update member",
                "deactivate",
                "publicize",
                "communitize",
                "upload",
            ),
            "403",
        ),
    },
    "other project member": {"list": "200 unlisted", **{op: "404" for op in OPERATIONS if op != "list"}},
    **{
        who: {
            **dict.fromkeys(OPERATIONS, "403"),
            **_READS_OF_A_MEMBER,
            "list": "200 listed" if who.endswith("accepted") else "200 unlisted",
        }
        for who in MEMBER_STATUS
    },
    "anonymous": {**dict.fromkeys(OPERATIONS, "401")},
}


def matrix_table(results: dict[str, dict[str, str]]) -> str:
    """The results as a Markdown table: one row per principal, one column per operation."""
    lines = ["| caller | " + " | ".join(OPERATIONS) + " |", "|---" * (len(OPERATIONS) + 1) + "|"]
    for who, row in results.items():
        lines.append(f"| {who} | " + " | ".join(row[op] for op in OPERATIONS) + " |")
    return "\n".join(lines)


def test_permission_matrix(url, capsys):
    """Every principal against every operation, each on a fresh image; the table is printed
    and must be the one in README.md's security section."""
    results = {}
    for who in PRINCIPALS:
        results[who] = {}
        for op, (uploaded, call) in OPERATIONS.items():
            image_id = _shared_image(url, upload=uploaded)
            resp = call(url, image_id, auth(who), who)
            results[who][op] = resp if isinstance(resp, str) else str(resp.status_code)
    table = matrix_table(results)
    with capsys.disabled():
        print("\n\nPermission matrix (shared image of the owner project; real Keystone tokens):\n" + table)
    assert results == EXPECTED, "\n" + table
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        assert matrix_table(EXPECTED) in f.read(), "README.md's security section must show this matrix:\n" + table


def test_private_image_is_404_for_another_project_on_every_path(url):
    owner, stranger = auth("owner member"), auth("other project member")
    image_id = requests.post(f"{url}/v2/images", json={"visibility": "private"}, headers=owner).json()["id"]
    paths = [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("GET", "/file"),
        ("PUT", "/file"),
        ("PUT", "/tags/x"),
        ("DELETE", "/tags/x"),
        ("GET", "/members"),
        ("POST", "/members"),
        ("GET", "/members/m"),
        ("PUT", "/members/m"),
        ("DELETE", "/members/m"),
        ("POST", "/actions/deactivate"),
        ("POST", "/actions/reactivate"),
    ]
    for method, path in paths:
        headers = {**stranger, **(PATCH if method == "PATCH" else OCTET if path == "/file" else {})}
        body = b"[]" if method == "PATCH" else b"x" if method == "PUT" and path == "/file" else None
        json = {"member": "m"} if path == "/members" else {"status": "accepted"} if path == "/members/m" else None
        resp = requests.request(
            method,
            f"{url}/v2/images/{image_id}{path}",
            headers=headers,
            data=body,
            json=json if method in ("POST", "PUT") else None,
        )
        assert resp.status_code == 404, (method, path, resp.status_code, resp.text)
        assert image_id in resp.text or "not found" in resp.text.lower()
