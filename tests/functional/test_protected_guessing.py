"""Property protections must not let a caller learn what they may not read (issue 9,
item 9): a PATCH of a property name the caller may not read gets the same 403 whether
the image has it or not, and list filters on such names are refused, whatever the
images hold. Over HTTP against a real server (trusted-headers flavour)."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.functional.helpers import server_config, who

PATCH_2_1 = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
PATCH_2_0 = {"Content-Type": "application/openstack-images-v2.0-json-patch"}

# x_secret_*: anyone may create one, only admins read or change it (write-only for
# members, the case where existence showed most: 200 for a new name, 403 for a taken one).
PROTECTIONS = """
[^x_secret_]
create = @
read = admin
update = admin
delete = admin

[.*]
create = @
read = @
update = @
delete = @
"""


@pytest.fixture(scope="module")
def url(server_factory, tmp_path_factory):
    rules = tmp_path_factory.mktemp("guessing") / "property-protections.conf"
    rules.write_text(PROTECTIONS)
    srv = server_factory(
        "guessing", server_config(flavor="trusted-headers", default=f"property_protection_file = {rules}")
    )
    return srv.url


@pytest.fixture
def callers(project):
    return who(project), who(project, "admin", "member", "reader")


@pytest.fixture
def secret():
    return uuid.uuid4().hex


@pytest.fixture
def image_id(url, callers, secret):
    """An image of the member's project that holds x_secret_set = *secret* (put there
    by an admin), and x_open = *secret* too."""
    _, admin = callers
    resp = requests.post(f"{url}/v2/images", json={"x_secret_set": secret, "x_open": secret}, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def patch(url, image_id, headers, media, change):
    return requests.patch(
        f"{url}/v2/images/{image_id}", json=[change], headers={**headers, **media, "Accept": "application/json"}
    )


CHANGES = [
    (PATCH_2_1, {"op": "add", "value": "1"}),
    (PATCH_2_1, {"op": "replace", "value": "1"}),
    (PATCH_2_1, {"op": "remove"}),
    (PATCH_2_0, {"add": None, "value": "1"}),
    (PATCH_2_0, {"replace": None, "value": "1"}),
    (PATCH_2_0, {"remove": None}),
]


@pytest.mark.parametrize(
    "media,change", CHANGES, ids=["add", "replace", "remove", "2.0-add", "2.0-replace", "2.0-remove"]
)
def test_patch_of_an_unreadable_property_answers_the_same_whether_it_exists(
    url, callers, image_id, secret, media, change
):
    member, admin = callers
    answers = []
    for name in ("x_secret_set", "x_secret_unset"):
        key = next(k for k in ("op", "add", "replace", "remove") if k in change)
        body = {**change, "path": f"/{name}"} if key == "op" else {**change, key: f"/{name}"}
        resp = patch(url, image_id, member, media, body)
        message = resp.json()["message"].replace(name, "NAME")
        answers.append((resp.status_code, message))
        assert resp.status_code == 403, resp.text
        assert f"Property '{name}' is protected" in resp.text
    assert answers[0] == answers[1]
    # Nothing changed, and the admin still sees the value.
    shown = requests.get(f"{url}/v2/images/{image_id}", headers=admin).json()
    assert shown["x_secret_set"] == secret and "x_secret_unset" not in shown


def test_readable_properties_behave_as_before(url, callers, image_id):
    member, admin = callers
    assert patch(url, image_id, member, PATCH_2_1, {"op": "remove", "path": "/x_gone"}).status_code == 409
    assert (
        patch(url, image_id, member, PATCH_2_1, {"op": "replace", "path": "/x_open", "value": "p"}).status_code == 200
    )
    resp = patch(url, image_id, admin, PATCH_2_1, {"op": "replace", "path": "/x_secret_set", "value": "43"})
    assert resp.status_code == 200 and resp.json()["x_secret_set"] == "43"
    # A member may still create a write-only property on a new image (nothing there to guess).
    resp = requests.post(f"{url}/v2/images", json={"x_secret_new": "1"}, headers=member)
    assert resp.status_code == 201 and "x_secret_new" not in resp.json()


@pytest.mark.parametrize("held", [True, False], ids=["value-held", "value-not-held"])
def test_filter_on_an_unreadable_property_is_403(url, callers, image_id, secret, held):
    member, admin = callers
    value = secret if held else uuid.uuid4().hex
    resp = requests.get(f"{url}/v2/images?x_secret_set={value}", headers={**member, "Accept": "application/json"})
    assert resp.status_code == 403
    assert resp.json()["message"].startswith(
        "Property 'x_secret_set' is protected: you may not read it, so you may not filter images by it."
    )
    resp = requests.get(f"{url}/v2/images?x_secret_unset={value}", headers={**member, "Accept": "application/json"})
    assert resp.status_code == 403 and "x_secret_unset" in resp.json()["message"]


def test_admin_and_open_filters_still_work(url, callers, image_id, secret):
    member, admin = callers
    found = requests.get(f"{url}/v2/images?x_secret_set={secret}", headers=admin).json()["images"]
    assert [i["id"] for i in found] == [image_id]
    found = requests.get(f"{url}/v2/images?x_open={secret}", headers=member).json()["images"]
    assert [i["id"] for i in found] == [image_id]
    assert requests.get(f"{url}/v2/images?x_open={uuid.uuid4().hex}", headers=member).json()["images"] == []
