"""The metadata definitions API (``/v2/metadefs``, GLANCE-API.md section 12) against a
real ``abbild serve`` over HTTP with trusted headers: every route and method (405 for
the others), the ten ``/v2/schemas/metadefs/*`` schemas (and that every answer matches
its schema, as glanceclient checks), request validation, 404s and 409s, protected
namespaces, paging and filters, the ``resource_type`` prefix, ``X-Openstack-Append``,
cascade deletes, and who may do what: an administrator, a member and a reader of the
owning project, and a member of another project (who finds a private namespace
missing, 404, never 403)."""

from __future__ import annotations

import urllib.parse
import uuid

import jsonschema
import pytest
import requests

from tests.functional.helpers import server_config, who

ADMIN = who("admins", "admin", "member", "reader")
MEMBER = who("p-owner")  # member and reader of the owning project
READER = who("p-owner", "reader")
OTHER = who("p-other")  # member and reader of another project
NO_ROLES = who("p-owner", "none")
NS = "/v2/metadefs/namespaces"
JSON = {"Accept": "application/json"}  # errors as JSON, not HTML
WATCHDOG = {"title": "Watchdog Action", "type": "string", "enum": ["disabled", "reset", "poweroff"]}


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("metadefs", server_config(flavor="trusted-headers"))


@pytest.fixture(scope="module")
def api(server):
    class Api:
        url = server.url

        def __call__(self, method, path, caller=ADMIN, body=None, headers=None, **kw):
            return requests.request(
                method, server.url + path, headers={**caller, **(headers or {})}, json=body, timeout=30, **kw
            )

    return Api()


@pytest.fixture(scope="module")
def schemas(api):
    return {name: api("GET", f"/v2/schemas/metadefs/{name}").json() for name in SCHEMA_NAMES}


def matches(schemas, name: str, body) -> None:
    """*body* is valid under the served schema *name* (what warlock checks in glanceclient)."""
    jsonschema.Draft4Validator(schemas[name]).validate(body)


def unique(prefix="T") -> str:
    return f"{prefix}::{uuid.uuid4().hex[:10]}"


def full_namespace(name: str, **fields) -> dict:
    return {
        "namespace": name,
        "display_name": "Test namespace",
        "description": "For the functional tests",
        "properties": {"watchdog_action": dict(WATCHDOG)},
        "objects": [
            {
                "name": "CPU Limits",
                "description": "CPU limits",
                "required": ["cpu_shares"],
                "properties": {"cpu_shares": {"title": "Shares", "type": "integer", "minimum": 0}},
            }
        ],
        "tags": [{"name": "fast"}, {"name": "small"}],
        "resource_type_associations": [
            {"name": "OS::Glance::Image", "prefix": "hw_"},
            {"name": "OS::Nova::Flavor", "prefix": "hw:"},
        ],
        **fields,
    }


def create(api, name: str, caller=ADMIN, **fields) -> dict:
    resp = api("POST", NS, caller, full_namespace(name, **fields))
    assert resp.status_code == 201, resp.text
    return resp.json()


# -- namespaces ------------------------------------------------------------------------------


def test_namespace_create_show_update_delete(api, schemas):
    name = unique()
    resp = api("POST", NS, ADMIN, full_namespace(name, visibility="public"))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"].endswith(f"{NS}/{name}")
    created = resp.json()
    matches(schemas, "namespace", created)
    assert created["owner"] == "admins"  # the caller's project
    assert created["visibility"] == "public" and created["protected"] is False
    assert created["self"] == f"{NS}/{name}" and created["schema"] == "/v2/schemas/metadefs/namespace"
    assert created["tags"] == [{"name": "fast"}, {"name": "small"}]
    assert created["objects"][0]["name"] == "CPU Limits"

    shown = api("GET", f"{NS}/{name}").json()
    matches(schemas, "namespace", shown)
    assert shown["properties"] == {"watchdog_action": WATCHDOG}
    assert {t["name"] for t in shown["tags"]} == {"fast", "small"}
    [obj] = shown["objects"]
    assert obj["self"] == f"{NS}/{name}/objects/CPU Limits" and obj["required"] == ["cpu_shares"]
    assert {a["name"] for a in shown["resource_type_associations"]} == {"OS::Glance::Image", "OS::Nova::Flavor"}
    assert all("created_at" in a for a in shown["resource_type_associations"])

    renamed = unique()
    resp = api("PUT", f"{NS}/{name}", ADMIN, {"namespace": renamed, "description": "changed", "owner": "p-x"})
    assert resp.status_code == 200, resp.text
    updated = resp.json()
    matches(schemas, "namespace", updated)
    # PUT replaces the namespace's own fields: what it leaves out falls back to the defaults.
    assert updated["visibility"] == "private" and updated["protected"] is False
    assert updated["owner"] == "p-x" and updated["description"] == "changed" and "display_name" not in updated
    assert "objects" not in updated  # Glance's answer to a PUT has no children...
    assert len(api("GET", f"{NS}/{renamed}").json()["objects"]) == 1  # ...which stay
    assert api("GET", f"{NS}/{name}").status_code == 404

    resp = api("PUT", f"{NS}/{renamed}", ADMIN, {"namespace": renamed})
    assert resp.json()["owner"] == "admins"  # owner left out: the caller's project

    assert api("DELETE", f"{NS}/{renamed}").status_code == 204
    resp = api("GET", f"{NS}/{renamed}", headers={"Accept": "application/json"})
    assert resp.status_code == 404
    assert f"Metadata definition namespace={renamed} was not found." in resp.json()["message"]


def test_namespace_request_validation(api):
    name = unique()
    create(api, name)
    cases = [
        (None, 400, "Body expected"),
        ({"display_name": "no name"}, 400, "'namespace' is a required property"),
        ({"namespace": "x" * 81}, 400, "is too long"),
        ({"namespace": unique(), "visibility": "shared"}, 400, "'shared' is not one of"),
        ({"namespace": unique(), "unknown": 1}, 400, "Additional properties are not allowed"),
        ({"namespace": unique(), "properties": {"p": {"type": "string"}}}, 400, "'title' is a required property"),
        ({"namespace": unique(), "properties": {"p": {"title": "P", "type": "string", "pattern": "(["}}}, 400, "p"),
        (
            {"namespace": unique(), "properties": {"p": {"title": "P", "type": "integer", "minimum": 3, "maximum": 1}}},
            400,
            "Property 'p': 'minimum' (3) is greater than 'maximum' (1)",
        ),
        ({"namespace": unique(), "self": "/x"}, 403, "Attribute 'self' is read-only."),
        ({"namespace": unique(), "created_at": "2020-01-01T00:00:00Z"}, 403, "Attribute 'created_at' is read-only."),
        ({"namespace": name}, 409, f"The metadata definition namespace={name} already exists."),
        ({"namespace": unique(), "tags": [{"name": "a"}, {"name": "a"}]}, 409, "A metadata tag with name=a"),
    ]
    for body, status, message in cases:
        resp = api("POST", NS, ADMIN, body, headers={"Accept": "application/json"})
        assert resp.status_code == status, (body, resp.text)
        assert message in resp.json()["message"], (body, resp.text)
    resp = api("POST", NS, ADMIN, data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "Malformed JSON" in resp.text
    other = unique()
    create(api, other)
    resp = api("PUT", f"{NS}/{other}", ADMIN, {"namespace": name}, headers={"Accept": "application/json"})
    assert resp.status_code == 409 and "duplicate metadata definition namespace" in resp.json()["message"]
    assert api("PUT", f"{NS}/{unique()}", ADMIN, {"namespace": "x"}).status_code == 404
    assert api("DELETE", f"{NS}/{unique()}").status_code == 404


def test_namespace_list_paging_filters_and_sort(api, schemas):
    kind = unique("Test::Kind")  # a resource type of this test alone keeps other namespaces out
    names = sorted(unique("T::Page") for _ in range(5))
    for i, name in enumerate(names):
        body = {"namespace": name, "visibility": "public" if i % 2 else "private"}
        body["resource_type_associations"] = [{"name": kind}]
        assert api("POST", NS, ADMIN, body).status_code == 201
    query = {"resource_types": kind, "sort_key": "namespace", "sort_dir": "asc", "limit": "2"}
    url, seen = f"{NS}?{urllib.parse.urlencode(query)}", []
    while url:
        page = api("GET", url).json()
        matches(schemas, "namespaces", page)
        assert page["schema"] == "/v2/schemas/metadefs/namespaces"
        assert page["first"].startswith(NS + "?") and "marker" not in page["first"]
        seen += [ns["namespace"] for ns in page["namespaces"]]
        url = page.get("next")
    assert seen == names
    desc = api("GET", f"{NS}?resource_types={kind}&sort_key=namespace&sort_dir=desc").json()
    assert [ns["namespace"] for ns in desc["namespaces"]] == names[::-1]
    assert "next" not in desc
    public = api("GET", f"{NS}?resource_types={kind}&visibility=public&sort_key=namespace&sort_dir=asc").json()
    assert [ns["namespace"] for ns in public["namespaces"]] == names[1::2]
    either = api("GET", f"{NS}?resource_types=OS::Nothing,{kind}&limit=100").json()
    assert len(either["namespaces"]) == 5
    assert api("GET", f"{NS}?resource_types={unique('Test::None')}").json()["namespaces"] == []
    after = api("GET", f"{NS}?resource_types={kind}&sort_key=namespace&sort_dir=asc&marker={names[2]}").json()
    assert [ns["namespace"] for ns in after["namespaces"]] == names[3:]
    for query, status, message in [
        ("limit=x", 400, "limit param must be an integer"),
        ("limit=-1", 400, "limit param must be positive"),
        ("sort_dir=up", 400, "Invalid sort direction: up"),
        ("sort_key=colour", 400, "Invalid sort key: colour"),
        ("visibility=shared", 400, "Invalid visibility value: shared"),
        (f"marker={unique()}", 404, "was not found"),
    ]:
        resp = api("GET", f"{NS}?{query}", headers={"Accept": "application/json"})
        assert resp.status_code == status and message in resp.json()["message"], (query, resp.text)


def test_namespace_show_with_resource_type_prefix(api):
    name = unique()
    create(api, name)
    flavor = api("GET", f"{NS}/{name}?resource_type=OS::Nova::Flavor").json()
    assert list(flavor["properties"]) == ["hw:watchdog_action"]
    assert flavor["objects"][0]["required"] == ["hw:cpu_shares"]
    assert list(flavor["objects"][0]["properties"]) == ["hw:cpu_shares"]
    image = api("GET", f"{NS}/{name}?resource_type=OS::Glance::Image").json()
    assert list(image["properties"]) == ["hw_watchdog_action"]
    unprefixed = api("GET", f"{NS}/{name}?resource_type=OS::Cinder::Volume").json()
    assert list(unprefixed["properties"]) == ["watchdog_action"]  # not associated: no prefix
    prop = api("GET", f"{NS}/{name}/properties/hw:watchdog_action?resource_type=OS::Nova::Flavor").json()
    assert prop["name"] == "watchdog_action" and prop["enum"] == WATCHDOG["enum"]
    resp = api("GET", f"{NS}/{name}/properties/watchdog_action?resource_type=OS::Nova::Flavor", ADMIN, None, JSON)
    assert resp.status_code == 404 and "expected resource type association prefix of 'hw:'" in resp.json()["message"]


def test_cascade_deletes_of_a_namespaces_objects_properties_and_tags(api):
    name = unique()
    create(api, name)
    assert api("DELETE", f"{NS}/{name}/objects").status_code == 204
    shown = api("GET", f"{NS}/{name}").json()
    assert "objects" not in shown and "properties" in shown and "tags" in shown
    assert api("GET", f"{NS}/{name}/objects").json()["objects"] == []
    assert api("DELETE", f"{NS}/{name}/properties").status_code == 204
    assert api("GET", f"{NS}/{name}/properties").json() == {"properties": {}}
    assert api("DELETE", f"{NS}/{name}/tags").status_code == 204
    assert api("GET", f"{NS}/{name}/tags").json() == {"tags": []}
    shown = api("GET", f"{NS}/{name}").json()
    assert not {"objects", "properties", "tags"} & set(shown) and len(shown["resource_type_associations"]) == 2
    # Deleting the namespace takes everything in it: the name comes back empty.
    create(api, unique())
    assert api("DELETE", f"{NS}/{name}").status_code == 204
    assert api("POST", NS, ADMIN, {"namespace": name}).status_code == 201
    shown = api("GET", f"{NS}/{name}").json()
    assert not {"objects", "properties", "tags", "resource_type_associations"} & set(shown)
    for child in ("objects", "properties", "tags"):
        assert api("DELETE", f"{NS}/{unique()}/{child}").status_code == 404


def test_protected_namespace_refuses_deletes_with_403(api):
    name = unique()
    create(api, name, protected=True)
    for path, what in [
        ("", f"namespace {name} is protected"),
        ("/objects", f"namespace {name} is protected"),
        ("/properties", f"namespace {name} is protected"),
        ("/tags", f"namespace {name} is protected"),
        ("/objects/CPU Limits", "object CPU Limits is protected"),
        ("/properties/watchdog_action", "property watchdog_action is protected"),
        ("/tags/fast", "tag fast is protected"),
        ("/resource_types/OS::Glance::Image", "resource-type-association OS::Glance::Image is protected"),
    ]:
        resp = api("DELETE", f"{NS}/{name}{path}", headers={"Accept": "application/json"})
        assert resp.status_code == 403, (path, resp.text)
        assert what in resp.json()["message"]
    shown = api("GET", f"{NS}/{name}").json()
    assert len(shown["objects"]) == 1 and len(shown["tags"]) == 2 and len(shown["resource_type_associations"]) == 2
    assert api("POST", f"{NS}/{name}/tags/more").status_code == 201  # additions are allowed
    resp = api("PUT", f"{NS}/{name}", ADMIN, {"namespace": name, "protected": False})
    assert resp.status_code == 200 and resp.json()["protected"] is False
    assert api("DELETE", f"{NS}/{name}").status_code == 204


# -- resource types and associations ---------------------------------------------------------


def test_resource_types_and_associations(api, schemas):
    listed = api("GET", "/v2/metadefs/resource_types").json()
    names = {t["name"] for t in listed["resource_types"]}
    assert {"OS::Glance::Image", "OS::Cinder::Volume", "OS::Nova::Flavor"} <= names
    assert all(set(t) == {"name", "created_at", "updated_at"} for t in listed["resource_types"])
    name, kind = unique(), unique("Test::Type")
    create(api, name)
    resp = api("POST", f"{NS}/{name}/resource_types", ADMIN, {"name": kind, "prefix": "t_", "properties_target": "x"})
    assert resp.status_code == 201, resp.text
    added = resp.json()
    matches(schemas, "resource_type", added)
    assert (added["name"], added["prefix"], added["properties_target"]) == (kind, "t_", "x")
    assert kind in {t["name"] for t in api("GET", "/v2/metadefs/resource_types").json()["resource_types"]}
    associations = api("GET", f"{NS}/{name}/resource_types").json()
    matches(schemas, "resource_types", associations)
    assert {a["name"] for a in associations["resource_type_associations"]} == {
        "OS::Glance::Image",
        "OS::Nova::Flavor",
        kind,
    }
    for body, status, message in [
        ({"name": kind}, 409, f"resource-type={kind} to namespace={name} already exists"),
        ({"prefix": "x"}, 400, "'name' is a required property"),
        ({"name": "x" * 81}, 400, "is too long"),
        ({"name": "y", "created_at": "x"}, 403, "Attribute 'created_at' is read-only."),
    ]:
        resp = api("POST", f"{NS}/{name}/resource_types", ADMIN, body, headers={"Accept": "application/json"})
        assert resp.status_code == status and message in resp.json()["message"], (body, resp.text)
    assert api("DELETE", f"{NS}/{name}/resource_types/{kind}").status_code == 204
    resp = api("DELETE", f"{NS}/{name}/resource_types/{kind}", headers={"Accept": "application/json"})
    assert resp.status_code == 404 and f"Failed to find resource type {kind} to delete" in resp.json()["message"]
    assert api("POST", f"{NS}/{unique()}/resource_types", ADMIN, {"name": kind}).status_code == 404


# -- objects ---------------------------------------------------------------------------------


def test_objects_lifecycle(api, schemas):
    name = unique()
    create(api, name)
    body = {
        "name": "Memory",
        "description": "RAM",
        "required": ["size"],
        "properties": {"size": {"title": "Size", "type": "integer"}},
    }
    resp = api("POST", f"{NS}/{name}/objects", ADMIN, body)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    matches(schemas, "object", created)
    assert created["self"] == f"{NS}/{name}/objects/Memory" and created["schema"] == "/v2/schemas/metadefs/object"
    assert created["properties"] == body["properties"] and created["required"] == ["size"]
    listed = api("GET", f"{NS}/{name}/objects").json()
    matches(schemas, "objects", listed)
    assert listed["schema"] == "v2/schemas/metadefs/objects"  # Glance's, without the leading slash
    assert sorted(o["name"] for o in listed["objects"]) == ["CPU Limits", "Memory"]
    by_name = api("GET", f"{NS}/{name}/objects?sort_key=name&sort_dir=asc&limit=1").json()
    assert [o["name"] for o in by_name["objects"]] == ["CPU Limits"]
    shown = api("GET", f"{NS}/{name}/objects/Memory").json()
    assert shown == created
    resp = api("PUT", f"{NS}/{name}/objects/Memory", ADMIN, {"name": "RAM", "description": "changed"})
    assert resp.status_code == 200, resp.text
    updated = resp.json()
    assert updated["name"] == "RAM" and updated["description"] == "changed" and "properties" not in updated
    assert api("GET", f"{NS}/{name}/objects/Memory").status_code == 404
    for method, path, body, status, message in [
        ("POST", "", {"name": "RAM"}, 409, f"object with name=RAM already exists in namespace={name}"),
        ("POST", "", {"description": "x"}, 400, "'name' is a required property"),
        ("POST", "", {"name": "X", "properties": {"p": {"title": "P", "type": "string", "bogus": 1}}}, 400, "bogus"),
        ("POST", "", {"name": "X", "self": "/x"}, 403, "Attribute 'self' is read-only."),
        ("PUT", "/RAM", {"name": "CPU Limits"}, 409, "object with name=CPU Limits already exists"),
        ("PUT", "/Nothing", {"name": "Nothing"}, 404, f"object with name=Nothing was not found in namespace={name}"),
        ("GET", "/Nothing", None, 404, "object with name=Nothing was not found"),
        ("DELETE", "/Nothing", None, 404, "object with name=Nothing was not found"),
    ]:
        resp = api(method, f"{NS}/{name}/objects{path}", ADMIN, body, headers={"Accept": "application/json"})
        assert resp.status_code == status and message in resp.json()["message"], (method, path, resp.text)
    assert api("DELETE", f"{NS}/{name}/objects/RAM").status_code == 204
    assert api("GET", f"{NS}/{name}/objects/RAM").status_code == 404
    assert api("GET", f"{NS}/{unique()}/objects").status_code == 404


# -- properties ------------------------------------------------------------------------------


def test_properties_lifecycle(api, schemas):
    name = unique()
    create(api, name)
    body = {
        "name": "cpu_policy",
        "title": "CPU Policy",
        "type": "string",
        "enum": ["shared", "dedicated"],
        "default": "shared",
    }
    resp = api("POST", f"{NS}/{name}/properties", ADMIN, body)
    assert resp.status_code == 201, resp.text
    assert resp.json() == body
    matches(schemas, "property", resp.json())
    listed = api("GET", f"{NS}/{name}/properties").json()
    matches(schemas, "properties", listed)
    assert listed["properties"] == {
        "watchdog_action": WATCHDOG,
        "cpu_policy": {k: v for k, v in body.items() if k != "name"},
    }
    assert api("GET", f"{NS}/{name}/properties/cpu_policy").json() == body
    renamed = {**body, "name": "cpu_pinning", "description": "changed"}
    resp = api("PUT", f"{NS}/{name}/properties/cpu_policy", ADMIN, renamed)
    assert resp.status_code == 200 and resp.json() == renamed
    assert api("GET", f"{NS}/{name}/properties/cpu_policy").status_code == 404
    for method, path, body, status, message in [
        (
            "POST",
            "",
            {"name": "cpu_pinning", "title": "T", "type": "string"},
            409,
            "property with name=cpu_pinning already exists",
        ),
        ("POST", "", {"title": "T", "type": "string"}, 400, "'name' is a required property"),
        ("POST", "", {"name": "n", "type": "string"}, 400, "'title' is a required property"),
        ("POST", "", {"name": "n", "title": "T", "type": "text"}, 400, "'text' is not one of"),
        ("POST", "", {"name": "n", "title": "T", "type": "string", "unknown": 1}, 400, "Additional properties"),
        (
            "POST",
            "",
            {"name": "n", "title": "T", "type": "integer", "enum": [1, "x"]},
            400,
            "Property 'n': enum value 'x'",
        ),
        (
            "POST",
            "",
            {"name": "n", "title": "T", "type": "string", "enum": ["a"], "default": "b"},
            400,
            "Property 'n': the default 'b'",
        ),
        (
            "POST",
            "",
            {"name": "n", "title": "T", "type": "string", "created_at": "x"},
            403,
            "Attribute 'created_at' is read-only.",
        ),
        (
            "PUT",
            "/cpu_pinning",
            {"name": "watchdog_action", "title": "T", "type": "string"},
            409,
            "property with name=watchdog_action",
        ),
        (
            "PUT",
            "/nothing",
            {"name": "nothing", "title": "T", "type": "string"},
            404,
            "property with name=nothing was not found",
        ),
        ("DELETE", "/nothing", None, 404, f"property with name=nothing was not found in namespace={name}"),
    ]:
        resp = api(method, f"{NS}/{name}/properties{path}", ADMIN, body, headers={"Accept": "application/json"})
        assert resp.status_code == status and message in resp.json()["message"], (method, path, resp.text)
    assert api("DELETE", f"{NS}/{name}/properties/cpu_pinning").status_code == 204
    assert list(api("GET", f"{NS}/{name}/properties").json()["properties"]) == ["watchdog_action"]


# -- tags ------------------------------------------------------------------------------------


def test_tags_lifecycle_and_bulk_create(api, schemas):
    name = unique()
    create(api, name)
    resp = api("POST", f"{NS}/{name}/tags/blue")
    assert resp.status_code == 201, resp.text
    matches(schemas, "tag", resp.json())
    assert set(resp.json()) == {"name", "created_at", "updated_at"}
    resp = api("POST", f"{NS}/{name}/tags/blue", headers={"Accept": "application/json"})
    assert resp.status_code == 409 and f"A metadata tag with name=blue already exists in namespace={name}" in resp.text
    assert api("GET", f"{NS}/{name}/tags/blue").json()["name"] == "blue"
    resp = api("PUT", f"{NS}/{name}/tags/blue", ADMIN, {"name": "green"})
    assert resp.status_code == 200 and resp.json()["name"] == "green"
    assert api("GET", f"{NS}/{name}/tags/blue").status_code == 404
    listed = api("GET", f"{NS}/{name}/tags?sort_key=name&sort_dir=asc").json()
    matches(schemas, "tags", listed)
    assert listed == {"tags": [{"name": "fast"}, {"name": "green"}, {"name": "small"}]}
    page = api("GET", f"{NS}/{name}/tags?sort_key=name&sort_dir=asc&limit=1&marker=fast").json()
    assert page == {"tags": [{"name": "green"}]}

    # Bulk: replaces by default, appends with X-Openstack-Append: True.
    resp = api("POST", f"{NS}/{name}/tags", ADMIN, {"tags": [{"name": "a"}, {"name": "b"}]})
    assert resp.status_code == 201 and resp.json() == {"tags": [{"name": "a"}, {"name": "b"}]}
    tags = lambda: sorted(t["name"] for t in api("GET", f"{NS}/{name}/tags").json()["tags"])  # noqa: E731
    assert tags() == ["a", "b"]
    resp = api("POST", f"{NS}/{name}/tags", ADMIN, {"tags": [{"name": "c"}, {"name": "d"}, {"name": "c"}]})
    assert resp.status_code == 409 and tags() == ["a", "b"]
    resp = api("POST", f"{NS}/{name}/tags", ADMIN, {"tags": [{"name": "c"}]}, headers={"X-Openstack-Append": "True"})
    assert resp.status_code == 201 and tags() == ["a", "b", "c"]
    resp = api(
        "POST",
        f"{NS}/{name}/tags",
        ADMIN,
        {"tags": [{"name": "c"}, {"name": "e"}]},
        headers={"X-Openstack-Append": "true"},
    )
    assert resp.status_code == 409 and tags() == ["a", "b", "c"]
    resp = api("POST", f"{NS}/{name}/tags", ADMIN, {"tags": [{"name": "z"}]}, headers={"X-Openstack-Append": "False"})
    assert resp.status_code == 201 and tags() == ["z"]
    for method, path, body, status, message in [
        ("POST", "", {"tags": [{"nom": "x"}]}, 400, "'name' is a required property"),
        ("POST", "", {"tags": "x"}, 400, "is not of type 'array'"),
        ("POST", "", {"tags": [{"name": "x" * 81}]}, 400, "at most 80"),
        ("POST", "/" + "x" * 81, None, 400, "is too long"),
        ("PUT", "/z", {"name": "z", "created_at": "x"}, 403, "Attribute 'created_at' is read-only."),
        ("PUT", "/z", {}, 400, "'name' is a required property"),
        ("PUT", "/nothing", {"name": "y"}, 404, f"tag with name=nothing was not found in namespace={name}"),
        ("GET", "?marker=nothing", None, 404, "tag with name=nothing was not found"),
        ("GET", "?sort_key=colour", None, 400, "Invalid sort key: colour"),
        ("DELETE", "/nothing", None, 404, "tag with name=nothing was not found"),
    ]:
        resp = api(method, f"{NS}/{name}/tags{path}", ADMIN, body, headers={"Accept": "application/json"})
        assert resp.status_code == status and message in resp.json()["message"], (method, path, resp.text)
    assert api("DELETE", f"{NS}/{name}/tags/z").status_code == 204
    assert tags() == []


# -- schemas and methods -------------------------------------------------------------------

SCHEMA_NAMES = {
    "namespace": "namespace",
    "namespaces": "namespaces",
    "object": "object",
    "objects": "objects",
    "property": "property",
    "properties": "properties",
    "resource_type": "resource_type_association",
    "resource_types": "resource_type_associations",
    "tag": "tag",
    "tags": "tags",
}


@pytest.mark.parametrize("path", SCHEMA_NAMES)
def test_every_metadef_schema(api, path):
    resp = api("GET", f"/v2/schemas/metadefs/{path}")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    schema = resp.json()
    assert schema["name"] == SCHEMA_NAMES[path]
    jsonschema.Draft4Validator.check_schema(schema)
    if path.endswith("s"):  # collections: Glance's links
        assert [link["rel"] for link in schema["links"]] == ["first", "next", "describedby"]
    else:
        assert schema["additionalProperties"] is False
    resp = api("POST", f"/v2/schemas/metadefs/{path}", ADMIN, {})
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET"


ROUTES = {
    "/v2/metadefs/resource_types": "GET",
    NS: "GET, POST",
    NS + "/{ns}": "GET, PUT, DELETE",
    NS + "/{ns}/resource_types": "GET, POST",
    NS + "/{ns}/resource_types/OS::Glance::Image": "DELETE",
    NS + "/{ns}/properties": "GET, POST, DELETE",
    NS + "/{ns}/properties/watchdog_action": "GET, PUT, DELETE",
    NS + "/{ns}/objects": "GET, POST, DELETE",
    NS + "/{ns}/objects/CPU Limits": "GET, PUT, DELETE",
    NS + "/{ns}/tags": "GET, POST, DELETE",
    NS + "/{ns}/tags/fast": "GET, POST, PUT, DELETE",
}


@pytest.mark.parametrize("route", ROUTES)
def test_other_methods_are_not_allowed(api, route):
    name = unique()
    create(api, name)
    allowed = ROUTES[route].split(", ")
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        if method in allowed:
            continue
        resp = api(method, route.format(ns=name))
        assert resp.status_code == 405, (method, route)
        assert resp.headers["Allow"] == ROUTES[route]
    assert len(api("GET", f"{NS}/{name}").json()["objects"]) == 1  # nothing changed


# -- who may do what -------------------------------------------------------------------------

READS = [
    "",
    "/objects",
    "/objects/CPU Limits",
    "/properties",
    "/properties/watchdog_action",
    "/tags",
    "/tags/fast",
    "/resource_types",
]
WRITES = {
    "namespaces": [("PUT", "", {"namespace": "{ns}"}), ("DELETE", "", None)],
    "objects": [
        ("POST", "/objects", {"name": "X"}),
        ("PUT", "/objects/CPU Limits", {"name": "CPU Limits"}),
        ("DELETE", "/objects/CPU Limits", None),
        ("DELETE", "/objects", None),
    ],
    "properties": [
        ("POST", "/properties", {"name": "x", "title": "X", "type": "string"}),
        ("PUT", "/properties/watchdog_action", {"name": "watchdog_action", "title": "W", "type": "string"}),
        ("DELETE", "/properties/watchdog_action", None),
        ("DELETE", "/properties", None),
    ],
    "tags": [
        ("POST", "/tags/new", None),
        ("PUT", "/tags/small", {"name": "smaller"}),
        ("DELETE", "/tags/fast", None),
        ("POST", "/tags", {"tags": [{"name": "x"}]}),
        ("DELETE", "/tags", None),
    ],
    "resource_types": [
        ("POST", "/resource_types", {"name": "OS::Nova::Aggregate"}),
        ("DELETE", "/resource_types/OS::Glance::Image", None),
    ],
}


@pytest.fixture(scope="module")
def owned(api):
    """A private and a public namespace of project p-owner, made by an administrator."""
    private, public = unique("T::Private"), unique("T::Public")
    create(api, private, owner="p-owner", visibility="private")
    create(api, public, owner="p-owner", visibility="public")
    return private, public


@pytest.mark.parametrize("caller", ["admin", "member", "reader", "other"])
def test_permissions_reads(api, owned, caller):
    """Admin and the owning project's members and readers read both; another project
    reads the public one and finds the private one missing (404, not 403)."""
    headers = {"admin": ADMIN, "member": MEMBER, "reader": READER, "other": OTHER}[caller]
    private, public = owned
    for path in READS:
        assert api("GET", f"{NS}/{public}{path}", headers).status_code == 200, path
        expected = 404 if caller == "other" else 200
        assert api("GET", f"{NS}/{private}{path}", headers).status_code == expected, path
    listed = api("GET", f"{NS}?limit=1000", headers).json()["namespaces"]
    names = {ns["namespace"] for ns in listed}
    assert public in names and (private in names) == (caller != "other")
    assert api("GET", "/v2/metadefs/resource_types", headers).status_code == 200


def test_permissions_without_a_role(api, owned):
    private, public = owned
    assert api("GET", f"{NS}/{private}", NO_ROLES).status_code == 404
    assert api("GET", f"{NS}/{public}", NO_ROLES).status_code == 404
    assert api("GET", NS, NO_ROLES).status_code == 403
    assert api("GET", "/v2/metadefs/resource_types", NO_ROLES).status_code == 403


@pytest.mark.parametrize("family", WRITES)
@pytest.mark.parametrize("caller", ["member", "reader", "other"])
def test_permissions_writes(api, owned, family, caller):
    """Only administrators change metadata definitions (Glance's metadef_admin): the
    owning project's members and readers get 403, another project 403 on the public
    namespace and 404 on the private one; nothing changes."""
    headers = {"member": MEMBER, "reader": READER, "other": OTHER}[caller]
    private, public = owned
    before = {ns: api("GET", f"{NS}/{ns}").json() for ns in owned}
    for ns in owned:
        for method, path, body in WRITES[family]:
            if body and body.get("namespace") == "{ns}":
                body = {"namespace": ns}
            resp = api(method, f"{NS}/{ns}{path}", headers, body)
            expected = 404 if (caller == "other" and ns == private) else 403
            assert resp.status_code == expected, (method, path, ns, resp.text)
    assert {ns: api("GET", f"{NS}/{ns}").json() for ns in owned} == before
    resp = api("POST", NS, headers, {"namespace": unique()})
    assert resp.status_code == 403 and "add_metadef_namespace" in resp.text


@pytest.mark.parametrize("family", WRITES)
def test_permissions_admin_writes_any_projects_namespace(api, family):
    name = unique()
    create(api, name, owner="p-owner", visibility="private")
    for method, path, body in WRITES[family]:
        if body and body.get("namespace") == "{ns}":
            body = {"namespace": name, "owner": "p-owner"}
        resp = api(method, f"{NS}/{name}{path}", ADMIN, body)
        assert resp.status_code in (200, 201, 204), (method, path, resp.text)
