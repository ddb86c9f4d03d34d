"""Metadata definitions through the real clients: every ``glance md-*`` command of
python-glanceclient, every ``openstack image metadef ...`` command of
python-openstackclient and openstacksdk's ``conn.image.*metadef*`` calls, run end to end
against ``abbild serve``, checking what comes back, not just the exit status.

Administrators first, on a noauth server (every caller an administrator); then a real
Keystone (``tools/keystone-up.sh``) with Glance's default metadef policy: a project
member or reader reads the public namespaces and their project's private ones, never
another project's (404, as if it did not exist), and changes nothing (403).

Where a client misbehaves against Glance too, the test says so and checks what works.
"""

from __future__ import annotations

import functools
import json
import os
import re
import uuid

import pytest
import requests
from openstack import exceptions

from abbild.metadefs import CORE_RESOURCE_TYPES
from abbild.testing.backends import backend_unavailable
from tests.conftest import SQL_BACKENDS
from tests.functional import keystone as ks
from tests.functional.clis import executable, run
from tests.functional.conftest import server_on_database
from tests.functional.helpers import server_config
from tests.functional.test_clients_cli import list_table, show_table

PASSWORD = "abbild-test-pw"
SERVICE_USER, SERVICE_PROJECT = "abbild-service", "service"


def unique(what: str) -> str:
    return f"Abbild::{what}::{uuid.uuid4().hex[:10]}"


def clean_env(home) -> dict:
    """No OS_* settings from the caller; a private HOME (glance caches schemas there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(home)
    return env


def names(items) -> list[str]:
    """Tag or association names, whether a client shows dicts or plain names."""
    return sorted(i["name"] if isinstance(i, dict) else i for i in items)


def jsonish(value: str):
    """A list or dict glance prints as JSON in a table cell."""
    return json.loads(value)


def assert_refused(proc, status: int) -> None:
    """The command failed because the API answered *status*: glanceclient says
    ``HTTP 403 Forbidden: ...``, openstackclient ``ForbiddenException: 403: Client Error ...``
    or ``No MetadefNamespace found for X: Client Error for url: <url>, 404 Not Found: ...``."""
    assert proc.returncode != 0, (proc.args, proc.stdout)
    said = re.compile(rf"HTTP {status} |{status}: Client Error|Client Error for url: \S+, {status} ")
    assert said.search(proc.stderr), (proc.args, proc.stderr)


# == administrators: noauth ======================================================================


@pytest.fixture(scope="module")
def admin_url(server_factory):
    return server_factory("metadefs-clients", server_config()).url


@pytest.fixture
def glance(admin_url, tmp_path):
    env = clean_env(tmp_path)

    def glance(*args, ok=True):
        return run([executable("glance"), "--os-image-url", admin_url, "--os-auth-token", "x", *args], env, ok)

    return glance


@pytest.fixture
def openstack(admin_url, tmp_path):
    env = clean_env(tmp_path)

    def openstack(*args, ok=True):
        argv = [executable("openstack"), "--os-auth-type", "none", "--os-endpoint", admin_url, *args]
        proc = run(argv, env, ok)
        return json.loads(proc.stdout) if ok and "json" in args else proc

    return openstack


@pytest.fixture(scope="module")
def conn(admin_url):
    import openstack

    return openstack.connect(auth_type="none", auth={"endpoint": admin_url})


def api(url, method, path, headers=None, **kwargs) -> requests.Response:
    return requests.request(method, f"{url}/v2/metadefs{path}", headers=headers or {}, timeout=10, **kwargs)


def full_namespace(name: str) -> dict:
    """A namespace document with something of every kind inside, as md-namespace-import
    and POST /v2/metadefs/namespaces take it."""
    return {
        "namespace": name,
        "display_name": "Watchdog and friends",
        "description": "Imported by the metadefs client test.",
        "visibility": "public",
        "protected": False,
        "resource_type_associations": [
            {"name": "OS::Glance::Image", "prefix": "hw_"},
            {"name": "OS::Nova::Flavor", "prefix": "hw:"},
            {"name": "OS::Cinder::Volume", "prefix": "hw_", "properties_target": "image"},
        ],
        "properties": {
            "watchdog_action": {
                "title": "Watchdog Action",
                "description": "What the watchdog does when the guest hangs.",
                "type": "string",
                "enum": ["disabled", "reset", "poweroff", "pause", "none"],
                "default": "none",
            },
            "cpu_cores": {"title": "vCPU cores", "type": "integer", "minimum": 1, "maximum": 64},
        },
        "objects": [
            {
                "name": "CPU Limits",
                "description": "How much CPU a guest may use.",
                "required": ["quota:cpu_shares"],
                "properties": {
                    "quota:cpu_shares": {"title": "Shares", "type": "integer", "minimum": 0},
                    "quota:cpu_period": {"title": "Period", "type": "integer", "readonly": True},
                },
            }
        ],
        "tags": [{"name": "watchdog"}, {"name": "cpu"}],
    }


# -- glance md-namespace-* ----------------------------------------------------------------------


def test_glance_md_namespace_create_show_list_update_delete(glance, admin_url):
    name = unique("ns")
    created = show_table(
        glance(
            "md-namespace-create",
            name,
            "--display-name",
            "Created by glance",
            "--description",
            "A namespace",
            "--visibility",
            "public",
            "--protected",
            "True",
        ).stdout
    )
    assert created["namespace"] == name
    assert (created["display_name"], created["description"]) == ("Created by glance", "A namespace")
    assert (created["visibility"], created["protected"]) == ("public", "True")
    assert created["schema"] == "/v2/schemas/metadefs/namespace"
    assert created["created_at"] and created["updated_at"]

    shown = show_table(glance("md-namespace-show", name).stdout)
    assert {k: shown[k] for k in ("namespace", "display_name", "visibility", "protected")} == {
        "namespace": name,
        "display_name": "Created by glance",
        "visibility": "public",
        "protected": "True",
    }
    listed = [row["namespace"] for row in list_table(glance("md-namespace-list").stdout)]
    assert name in listed
    public = [row["namespace"] for row in list_table(glance("md-namespace-list", "--visibility", "public").stdout)]
    private = [row["namespace"] for row in list_table(glance("md-namespace-list", "--visibility", "private").stdout)]
    assert name in public and name not in private

    # protected: no delete (Glance: 403), and the client says it failed
    refused = glance("md-namespace-delete", name, ok=False)
    assert_refused(refused, 403)
    assert glance("md-namespace-show", name).returncode == 0

    # the client GETs the namespace and PUTs it back whole, with the changes: here a rename
    renamed = name + "-renamed"
    updated = show_table(
        glance(
            "md-namespace-update",
            name,
            "--namespace",
            renamed,
            "--display-name",
            "Renamed by glance",
            "--protected",
            "False",
        ).stdout
    )
    assert (updated["namespace"], updated["display_name"]) == (renamed, "Renamed by glance")
    assert (updated["visibility"], updated["protected"], updated["description"]) == ("public", "False", "A namespace")
    gone = glance("md-namespace-show", name, ok=False)
    assert_refused(gone, 404)

    glance("md-namespace-delete", renamed)
    gone = glance("md-namespace-show", renamed, ok=False)
    assert_refused(gone, 404)
    assert api(admin_url, "GET", f"/namespaces/{renamed}").status_code == 404


def test_glance_md_namespace_list_pages_and_filters_by_resource_type(glance, admin_url):
    rt = f"Abbild::Test{uuid.uuid4().hex[:8]}"
    created = [unique("page") for _ in range(3)]
    for name in created:
        resp = api(
            admin_url, "POST", "/namespaces", json={"namespace": name, "resource_type_associations": [{"name": rt}]}
        )
        assert resp.status_code == 201, resp.text
    # a page size of 1 makes the client follow "next" twice (and a third time to the end)
    paged = [
        row["namespace"]
        for row in list_table(glance("md-namespace-list", "--page-size", "1", "--resource-types", rt).stdout)
    ]
    assert sorted(paged) == sorted(created)  # each once: the marker pages on
    other = [
        row["namespace"]
        for row in list_table(glance("md-namespace-list", "--resource-types", "OS::Trove::Nothing").stdout)
    ]
    assert not set(created) & set(other)


def test_glance_md_namespace_import_show_with_resource_type_prefix(glance, admin_url, tmp_path):
    name = unique("import")
    doc = full_namespace(name)
    path = tmp_path / "ns.json"
    path.write_text(json.dumps(doc))
    imported = show_table(glance("md-namespace-import", "--file", str(path)).stdout)
    assert imported["namespace"] == name
    assert sorted(jsonish(imported["properties"])) == ["cpu_cores", "watchdog_action"]
    assert jsonish(imported["objects"]) == ["CPU Limits"]
    assert sorted(jsonish(imported["tags"])) == ["cpu", "watchdog"]
    assert sorted(jsonish(imported["resource_type_associations"])) == [
        "OS::Cinder::Volume",
        "OS::Glance::Image",
        "OS::Nova::Flavor",
    ]

    shown = show_table(glance("md-namespace-show", name).stdout)
    assert sorted(jsonish(shown["properties"])) == ["cpu_cores", "watchdog_action"]
    assert jsonish(shown["objects"]) == ["CPU Limits"]
    assert sorted(jsonish(shown["tags"])) == ["cpu", "watchdog"]
    for resource_type, prefix in (("OS::Nova::Flavor", "hw:"), ("OS::Glance::Image", "hw_")):
        prefixed = show_table(glance("md-namespace-show", name, "--resource-type", resource_type).stdout)
        assert sorted(jsonish(prefixed["properties"])) == [f"{prefix}cpu_cores", f"{prefix}watchdog_action"]

    associations = list_table(glance("md-namespace-resource-type-list", name).stdout)
    assert sorted((a["name"], a["prefix"], a["properties_target"]) for a in associations) == [
        ("OS::Cinder::Volume", "hw_", "image"),
        ("OS::Glance::Image", "hw_", ""),
        ("OS::Nova::Flavor", "hw:", ""),
    ]

    again = glance("md-namespace-import", "--file", str(path), ok=False)
    assert_refused(again, 409)
    glance("md-namespace-delete", name)  # with everything in it
    assert api(admin_url, "GET", f"/namespaces/{name}/properties").status_code == 404
    # nothing of it is left behind: the same document imports again, whole
    again = show_table(glance("md-namespace-import", "--file", str(path)).stdout)
    assert (sorted(jsonish(again["tags"])), jsonish(again["objects"])) == (["cpu", "watchdog"], ["CPU Limits"])
    glance("md-namespace-delete", name)


# -- glance md-property-* ------------------------------------------------------------------------


def test_glance_md_property_commands(glance, admin_url):
    ns = unique("props")
    glance("md-namespace-create", ns)
    created = show_table(
        glance(
            "md-property-create",
            ns,
            "--name",
            "os_flavour",
            "--title",
            "OS flavour",
            "--type",
            "string",
            "--schema",
            json.dumps({"enum": ["debian", "fedora"], "description": "Which one", "default": "debian"}),
        ).stdout
    )
    assert (created["name"], created["title"], created["type"]) == ("os_flavour", "OS flavour", "string")
    assert jsonish(created["enum"]) == ["debian", "fedora"]
    assert (created["description"], created["default"]) == ("Which one", "debian")

    shown = show_table(glance("md-property-show", ns, "os_flavour").stdout)
    assert (shown["name"], shown["type"], jsonish(shown["enum"])) == ("os_flavour", "string", ["debian", "fedora"])

    glance(
        "md-property-create",
        ns,
        "--name",
        "ram_mb",
        "--title",
        "RAM",
        "--type",
        "integer",
        "--schema",
        json.dumps({"minimum": 64, "maximum": 4096}),
    )
    listed = list_table(glance("md-property-list", ns).stdout)
    assert sorted((p["name"], p["title"], p["type"]) for p in listed) == [
        ("os_flavour", "OS flavour", "string"),
        ("ram_mb", "RAM", "integer"),
    ]

    # the client GETs the property and PUTs it back with the changes: a rename and a new type
    updated = show_table(
        glance(
            "md-property-update",
            ns,
            "ram_mb",
            "--name",
            "ram_gb",
            "--title",
            "RAM (GiB)",
            "--schema",
            json.dumps({"type": "number", "minimum": 0.5, "maximum": 4}),
        ).stdout
    )
    assert (updated["name"], updated["title"], updated["type"]) == ("ram_gb", "RAM (GiB)", "number")
    assert (float(updated["minimum"]), float(updated["maximum"])) == (0.5, 4.0)
    assert_refused(glance("md-property-show", ns, "ram_mb", ok=False), 404)

    bad = glance(
        "md-property-create",
        ns,
        "--name",
        "broken",
        "--title",
        "Broken",
        "--type",
        "no-such-type",
        "--schema",
        "{}",
        ok=False,
    )
    # refused by the client already, with the property schema it fetched from abbild
    assert bad.returncode != 0 and "'no-such-type' is not one of" in bad.stderr, bad.stderr

    glance("md-property-delete", ns, "os_flavour")
    assert [p["name"] for p in list_table(glance("md-property-list", ns).stdout)] == ["ram_gb"]
    glance("md-namespace-properties-delete", ns)
    assert list_table(glance("md-property-list", ns).stdout) == []
    assert api(admin_url, "GET", f"/namespaces/{ns}/properties").json() == {"properties": {}}
    glance("md-namespace-delete", ns)


# -- glance md-object-* --------------------------------------------------------------------------


def test_glance_md_object_commands(glance, admin_url):
    ns = unique("objects")
    glance("md-namespace-create", ns)
    schema = {
        "description": "Limits of the CPU",
        "required": ["shares"],
        "properties": {
            "shares": {"title": "Shares", "type": "integer", "minimum": 0},
            "period": {"title": "Period", "type": "integer", "description": "in microseconds"},
        },
    }
    created = show_table(glance("md-object-create", ns, "--name", "CPU Limits", "--schema", json.dumps(schema)).stdout)
    assert (created["name"], created["description"]) == ("CPU Limits", "Limits of the CPU")
    assert sorted(jsonish(created["properties"])) == ["period", "shares"]
    assert jsonish(created["required"]) == ["shares"]
    assert created["schema"] == "/v2/schemas/metadefs/object"

    shown = show_table(glance("md-object-show", ns, "CPU Limits").stdout)
    assert (shown["name"], sorted(jsonish(shown["properties"]))) == ("CPU Limits", ["period", "shares"])
    prop = show_table(glance("md-object-property-show", ns, "CPU Limits", "period").stdout)
    assert (prop["name"], prop["title"], prop["type"], prop["description"]) == (
        "period",
        "Period",
        "integer",
        "in microseconds",
    )
    missing = glance("md-object-property-show", ns, "CPU Limits", "quota", ok=False)
    assert "Property quota not found in object CPU Limits" in missing.stderr + missing.stdout

    glance("md-object-create", ns, "--name", "Memory", "--schema", json.dumps({"description": "RAM"}))
    listed = list_table(glance("md-object-list", ns).stdout)
    assert sorted((o["name"], o["description"]) for o in listed) == [
        ("CPU Limits", "Limits of the CPU"),
        ("Memory", "RAM"),
    ]

    updated = show_table(
        glance(
            "md-object-update",
            ns,
            "CPU Limits",
            "--name",
            "CPU Quota",
            "--schema",
            json.dumps({"description": "Quota of the CPU", "required": []}),
        ).stdout
    )
    assert (updated["name"], updated["description"]) == ("CPU Quota", "Quota of the CPU")
    assert sorted(jsonish(updated["properties"])) == ["period", "shares"]  # kept: the client sent them back
    assert_refused(glance("md-object-show", ns, "CPU Limits", ok=False), 404)

    duplicate = glance("md-object-create", ns, "--name", "Memory", "--schema", "{}", ok=False)
    assert_refused(duplicate, 409)

    glance("md-object-delete", ns, "Memory")
    assert [o["name"] for o in list_table(glance("md-object-list", ns).stdout)] == ["CPU Quota"]
    glance("md-namespace-objects-delete", ns)
    assert list_table(glance("md-object-list", ns).stdout) == []
    assert api(admin_url, "GET", f"/namespaces/{ns}/objects").json()["objects"] == []
    glance("md-namespace-delete", ns)


# -- glance md-tag-* ----------------------------------------------------------------------------


def test_glance_md_tag_commands(glance, admin_url):
    ns = unique("tags")
    glance("md-namespace-create", ns)
    created = show_table(glance("md-tag-create", ns, "--name", "alpha").stdout)
    assert created["name"] == "alpha" and created["created_at"]
    assert show_table(glance("md-tag-show", ns, "alpha").stdout)["name"] == "alpha"
    duplicate = glance("md-tag-create", ns, "--name", "alpha", ok=False)
    assert_refused(duplicate, 409)

    # bulk create replaces the namespace's tags ...
    replaced = list_table(glance("md-tag-create-multiple", ns, "--names", "beta,gamma").stdout)
    assert sorted(t["name"] for t in replaced) == ["beta", "gamma"]
    assert sorted(t["name"] for t in list_table(glance("md-tag-list", ns).stdout)) == ["beta", "gamma"]

    # ... or, with X-Openstack-Append, adds to them. glanceclient 4.13 cannot send that
    # header: TagController.create_multiple sets it to the bool True, which its
    # encode_headers hands to urllib.parse.quote, so --append fails in the client before
    # any request (against Glance too). openstacksdk's set_tags(append=True) works (below,
    # in test_openstacksdk_metadef_calls); here the header goes over plain HTTP.
    broken = glance("md-tag-create-multiple", ns, "--names", "delta", "--append", ok=False)
    assert broken.returncode != 0 and "quote_from_bytes() expected bytes" in broken.stderr, broken.stderr
    resp = api(
        admin_url,
        "POST",
        f"/namespaces/{ns}/tags",
        headers={"X-Openstack-Append": "true"},
        json={"tags": [{"name": "delta"}, {"name": "epsilon"}]},
    )
    assert resp.status_code == 201, resp.text
    assert sorted(t["name"] for t in resp.json()["tags"]) == ["delta", "epsilon"]
    assert sorted(t["name"] for t in list_table(glance("md-tag-list", ns).stdout)) == [
        "beta",
        "delta",
        "epsilon",
        "gamma",
    ]
    # the delimiter option, replacing again
    glance("md-tag-create-multiple", ns, "--names", "beta|delta|epsilon|gamma", "--delim", "|")

    renamed = show_table(glance("md-tag-update", ns, "gamma", "--name", "zeta").stdout)
    assert renamed["name"] == "zeta"
    assert_refused(glance("md-tag-show", ns, "gamma", ok=False), 404)

    glance("md-tag-delete", ns, "beta")
    assert sorted(t["name"] for t in list_table(glance("md-tag-list", ns).stdout)) == ["delta", "epsilon", "zeta"]
    glance("md-namespace-tags-delete", ns)
    assert list_table(glance("md-tag-list", ns).stdout) == []
    assert api(admin_url, "GET", f"/namespaces/{ns}/tags").json()["tags"] == []
    glance("md-namespace-delete", ns)


# -- glance md-resource-type-* -------------------------------------------------------------------


def test_glance_md_resource_type_commands(glance):
    available = {row["name"] for row in list_table(glance("md-resource-type-list").stdout)}
    assert set(CORE_RESOURCE_TYPES) <= available

    ns = unique("rt")
    glance("md-namespace-create", ns)
    new_type = f"Abbild::Test::{uuid.uuid4().hex[:8]}"
    association = show_table(
        glance(
            "md-resource-type-associate",
            ns,
            "--name",
            "OS::Cinder::Volume",
            "--prefix",
            "hw_",
            "--properties-target",
            "image",
        ).stdout
    )
    assert (association["name"], association["prefix"], association["properties_target"]) == (
        "OS::Cinder::Volume",
        "hw_",
        "image",
    )
    glance("md-resource-type-associate", ns, "--name", new_type, "--prefix", "abbild:")
    # naming a resource type nobody knew creates it (Glance does the same)
    assert new_type in {row["name"] for row in list_table(glance("md-resource-type-list").stdout)}
    associated = list_table(glance("md-namespace-resource-type-list", ns).stdout)
    assert sorted((a["name"], a["prefix"]) for a in associated) == sorted(
        [("OS::Cinder::Volume", "hw_"), (new_type, "abbild:")]
    )
    duplicate = glance("md-resource-type-associate", ns, "--name", "OS::Cinder::Volume", ok=False)
    assert_refused(duplicate, 409)

    glance("md-resource-type-deassociate", ns, "OS::Cinder::Volume")
    assert [a["name"] for a in list_table(glance("md-namespace-resource-type-list", ns).stdout)] == [new_type]
    missing = glance("md-resource-type-deassociate", ns, "OS::Cinder::Volume", ok=False)
    assert_refused(missing, 404)
    glance("md-namespace-delete", ns)


# -- protected namespaces --------------------------------------------------------------------------


def test_protected_namespace_keeps_its_contents(glance, openstack, admin_url):
    """Glance refuses to delete anything inside a protected namespace (403), one by one or
    all at once; adding and changing are allowed."""
    name = unique("protected")
    resp = api(admin_url, "POST", "/namespaces", json={**full_namespace(name), "protected": True})
    assert resp.status_code == 201, resp.text
    for command in (
        ["md-property-delete", name, "cpu_cores"],
        ["md-namespace-properties-delete", name],
        ["md-object-delete", name, "CPU Limits"],
        ["md-namespace-objects-delete", name],
        ["md-tag-delete", name, "cpu"],
        ["md-namespace-tags-delete", name],
        ["md-resource-type-deassociate", name, "OS::Nova::Flavor"],
        ["md-namespace-delete", name],
    ):
        proc = glance(*command, ok=False)
        assert_refused(proc, 403)
    glance("md-tag-create", name, "--name", "added")
    shown = show_table(glance("md-namespace-show", name).stdout)
    assert sorted(jsonish(shown["properties"])) == ["cpu_cores", "watchdog_action"]
    assert jsonish(shown["objects"]) == ["CPU Limits"]
    assert sorted(jsonish(shown["tags"])) == ["added", "cpu", "watchdog"]
    assert len(jsonish(shown["resource_type_associations"])) == 3

    osc_assoc = ("image", "metadef", "resource", "type", "association")
    refused = openstack(*osc_assoc, "delete", name, "OS::Nova::Flavor", ok=False)
    assert_refused(refused, 403)
    # --force: openstackclient unprotects (PUT {"namespace", "protected": false}), deletes,
    # and protects again. Glance's PUT replaces the namespace, so that also makes it
    # private and drops its display name and description: a client bug against Glance too.
    openstack(*osc_assoc, "delete", name, "OS::Nova::Flavor", "--force")
    listed = openstack(*osc_assoc, "list", name, "-f", "json")
    assert sorted(row["Name"] for row in listed) == ["OS::Cinder::Volume", "OS::Glance::Image"]
    body = api(admin_url, "GET", f"/namespaces/{name}").json()
    assert (body["protected"], body["visibility"], "display_name" in body) == (True, "private", False)

    glance("md-namespace-update", name, "--protected", "False")
    glance("md-namespace-delete", name)


# -- every database ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [p for p in SQL_BACKENDS if p.values[0] != "sqlite"])
def test_glance_md_commands_on_mariadb_and_postgresql(backend, tmp_path):
    """The glance commands that write most (import, renames, bulk tags, prefixes, paging,
    the cascade) on the two server databases, with non-ASCII text; SQLite is the other
    tests' database."""
    (tmp_path / "server").mkdir()
    with server_on_database(backend, tmp_path / "server") as (srv, _, _):
        env = clean_env(tmp_path)

        def glance(*args, ok=True):
            return run([executable("glance"), "--os-image-url", srv.url, "--os-auth-token", "x", *args], env, ok)

        name = unique("db")
        doc = full_namespace(name)
        doc["description"] = "Größe, Ænderung, 大小"
        doc["tags"].append({"name": "größe"})
        path = tmp_path / "ns.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        glance("md-namespace-import", "--file", str(path))
        shown = show_table(glance("md-namespace-show", name, "--resource-type", "OS::Nova::Flavor").stdout)
        assert shown["description"] == "Größe, Ænderung, 大小"
        assert sorted(jsonish(shown["properties"])) == ["hw:cpu_cores", "hw:watchdog_action"]
        assert sorted(jsonish(shown["tags"])) == ["cpu", "größe", "watchdog"]

        glance("md-property-update", name, "cpu_cores", "--name", "cpu_sockets", "--title", "Sockets")
        glance("md-object-update", name, "CPU Limits", "--name", "CPU Quota")
        glance("md-tag-update", name, "größe", "--name", "grösse")
        glance("md-tag-create-multiple", name, "--names", "x,y,z")
        renamed = name + "-renamed"
        glance("md-namespace-update", name, "--namespace", renamed)
        shown = show_table(glance("md-namespace-show", renamed).stdout)
        assert sorted(jsonish(shown["properties"])) == ["cpu_sockets", "watchdog_action"]
        assert jsonish(shown["objects"]) == ["CPU Quota"]
        assert sorted(jsonish(shown["tags"])) == ["x", "y", "z"]
        assert len(jsonish(shown["resource_type_associations"])) == 3

        others = [unique("db-page") for _ in range(3)]
        for other in others:
            glance("md-namespace-create", other, "--visibility", "public")
        paged = [row["namespace"] for row in list_table(glance("md-namespace-list", "--page-size", "1").stdout)]
        assert sorted(paged) == sorted([renamed, *others])

        glance("md-namespace-delete", renamed)
        assert_refused(glance("md-namespace-show", renamed, ok=False), 404)
        assert api(srv.url, "GET", f"/namespaces/{renamed}/tags").status_code == 404


# -- openstack image metadef namespace ----------------------------------------------------------


def test_openstack_metadef_namespace_commands(openstack, admin_url):
    name = unique("osc")
    created = openstack(
        "image",
        "metadef",
        "namespace",
        "create",
        name,
        "--display-name",
        "Created by openstack",
        "--description",
        "OSC",
        "--public",
        "--protected",
        "-f",
        "json",
    )
    assert (created["namespace"], created["display_name"], created["description"]) == (
        name,
        "Created by openstack",
        "OSC",
    )
    assert (created["visibility"], created["protected"]) == ("public", True)

    shown = openstack("image", "metadef", "namespace", "show", name, "-f", "json")
    assert (shown["namespace"], shown["visibility"], shown["protected"]) == (name, "public", True)
    listed = openstack("image", "metadef", "namespace", "list", "-f", "json")
    assert name in [row["namespace"] for row in listed]
    private = openstack("image", "metadef", "namespace", "list", "--visibility", "private", "-f", "json")
    assert name not in [row["namespace"] for row in private]

    refused = openstack("image", "metadef", "namespace", "delete", name, ok=False)
    assert_refused(refused, 403)

    # set: PUT with the given fields only, plus tags one by one (POST .../tags/{tag})
    openstack(
        "image",
        "metadef",
        "namespace",
        "set",
        name,
        "--display-name",
        "Set by openstack",
        "--public",
        "--unprotected",
        "--tag",
        "one",
        "--tag",
        "two",
    )
    shown = openstack("image", "metadef", "namespace", "show", name, "-f", "json")
    assert (shown["display_name"], shown["visibility"], shown["protected"]) == ("Set by openstack", "public", False)
    assert names(shown["tags"]) == ["one", "two"]

    openstack("image", "metadef", "namespace", "unset", name, "--tag", "one")
    assert names(openstack("image", "metadef", "namespace", "show", name, "-f", "json")["tags"]) == ["two"]
    # a protected namespace keeps its tags (Glance: 403)
    openstack("image", "metadef", "namespace", "set", name, "--tag", "three", "--public", "--protected")
    refused = openstack("image", "metadef", "namespace", "unset", name, "--all-tags", ok=False)
    assert_refused(refused, 403)
    assert names(api(admin_url, "GET", f"/namespaces/{name}/tags").json()["tags"]) == ["three", "two"]
    openstack("image", "metadef", "namespace", "set", name, "--public", "--unprotected")
    openstack("image", "metadef", "namespace", "unset", name, "--all-tags")
    assert api(admin_url, "GET", f"/namespaces/{name}/tags").json()["tags"] == []

    # Glance's PUT is a full replace: what the request leaves out falls back to the
    # defaults (private, unprotected), so `set` without --public/--protected resets them
    openstack("image", "metadef", "namespace", "set", name, "--description", "reset")
    shown = openstack("image", "metadef", "namespace", "show", name, "-f", "json")
    assert (shown["description"], shown["visibility"], shown["protected"]) == ("reset", "private", False)
    assert "display_name" not in shown  # not in the request: none now

    openstack("image", "metadef", "namespace", "delete", name)
    missing = openstack("image", "metadef", "namespace", "show", name, ok=False)
    assert_refused(missing, 404)


def test_openstack_metadef_namespace_list_by_resource_type_and_show_properties(openstack, admin_url):
    name = unique("osc-rt")
    resp = api(admin_url, "POST", "/namespaces", json=full_namespace(name))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"].endswith(f"/v2/metadefs/namespaces/{name}")
    listed = openstack("image", "metadef", "namespace", "list", "--resource-types", "OS::Nova::Flavor", "-f", "json")
    assert name in [row["namespace"] for row in listed]
    # openstacksdk's MetadefNamespace has no `properties` field, so `namespace show` never
    # shows them (against Glance too): `property list` does
    shown = openstack("image", "metadef", "namespace", "show", name, "-f", "json")
    listed = openstack("image", "metadef", "property", "list", name, "-f", "json")
    assert sorted(p["name"] for p in listed) == ["cpu_cores", "watchdog_action"]
    assert sorted(shown["resource_type_associations"]) == [
        "OS::Cinder::Volume",
        "OS::Glance::Image",
        "OS::Nova::Flavor",
    ]
    assert names(shown["tags"]) == ["cpu", "watchdog"]
    openstack("image", "metadef", "namespace", "delete", name)


# -- openstack image metadef property -----------------------------------------------------------


def test_openstack_metadef_property_commands(openstack, admin_url):
    ns = unique("osc-props")
    openstack("image", "metadef", "namespace", "create", ns, "-f", "json")
    created = openstack(
        "image",
        "metadef",
        "property",
        "create",
        "--name",
        "hypervisor",
        "--title",
        "Hypervisor",
        "--type",
        "string",
        "--schema",
        json.dumps({"enum": ["kvm", "qemu"], "description": "Which hypervisor"}),
        ns,
        "-f",
        "json",
    )
    assert (created["name"], created["title"], created["type"], created["enum"]) == (
        "hypervisor",
        "Hypervisor",
        "string",
        ["kvm", "qemu"],
    )

    shown = openstack("image", "metadef", "property", "show", ns, "hypervisor", "-f", "json")
    assert (shown["name"], shown["description"], shown["enum"]) == ("hypervisor", "Which hypervisor", ["kvm", "qemu"])

    openstack(
        "image",
        "metadef",
        "property",
        "create",
        "--name",
        "cores",
        "--title",
        "Cores",
        "--type",
        "integer",
        "--schema",
        json.dumps({"minimum": 1}),
        ns,
        "-f",
        "json",
    )
    listed = openstack("image", "metadef", "property", "list", ns, "-f", "json")
    assert sorted((p["name"], p["title"], p["type"]) for p in listed) == [
        ("cores", "Cores", "integer"),
        ("hypervisor", "Hypervisor", "string"),
    ]

    openstack("image", "metadef", "property", "set", ns, "hypervisor", "--title", "Hypervisor type")
    body = api(admin_url, "GET", f"/namespaces/{ns}/properties/hypervisor").json()
    assert (body["title"], body["type"], body["enum"]) == ("Hypervisor type", "string", ["kvm", "qemu"])
    assert body["description"] == "Which hypervisor"

    openstack("image", "metadef", "property", "delete", ns, "hypervisor")
    assert [p["name"] for p in openstack("image", "metadef", "property", "list", ns, "-f", "json")] == ["cores"]
    missing = openstack("image", "metadef", "property", "delete", ns, "hypervisor", ok=False)
    assert_refused(missing, 404)
    openstack("image", "metadef", "property", "delete", ns)  # all of them
    assert api(admin_url, "GET", f"/namespaces/{ns}/properties").json() == {"properties": {}}
    openstack("image", "metadef", "namespace", "delete", ns)


# -- openstack image metadef object -------------------------------------------------------------


def test_openstack_metadef_object_commands(openstack, admin_url):
    ns = unique("osc-objects")
    openstack("image", "metadef", "namespace", "create", ns, "-f", "json")
    created = openstack("image", "metadef", "object", "create", "--namespace", ns, "Plain", "-f", "json")
    assert (created["name"], created["namespace_name"]) == ("Plain", ns)
    assert created["created_at"]

    body = {
        "name": "Memory",
        "description": "Guest memory",
        "required": ["pages"],
        "properties": {"pages": {"title": "Page size", "type": "string", "enum": ["small", "large"]}},
    }
    assert api(admin_url, "POST", f"/namespaces/{ns}/objects", json=body).status_code == 201
    shown = openstack("image", "metadef", "object", "show", ns, "Memory", "-f", "json")
    assert (shown["name"], shown["description"], shown["required"]) == ("Memory", "Guest memory", ["pages"])
    assert shown["properties"]["pages"]["enum"] == ["small", "large"]
    prop = openstack("image", "metadef", "object", "property", "show", ns, "Memory", "pages", "-f", "json")
    assert (prop["name"], prop["title"], prop["type"]) == ("pages", "Page size", "string")

    listed = openstack("image", "metadef", "object", "list", ns, "-f", "json")
    assert sorted((o["name"], o["description"]) for o in listed) == [("Memory", "Guest memory"), ("Plain", None)]

    openstack("image", "metadef", "object", "update", ns, "Plain", "--name", "Renamed")
    assert sorted(o["name"] for o in api(admin_url, "GET", f"/namespaces/{ns}/objects").json()["objects"]) == [
        "Memory",
        "Renamed",
    ]

    # `update` PUTs only the new name; Glance's PUT replaces the object, so its
    # description, required list and properties are gone (glanceclient sends them back)
    openstack("image", "metadef", "object", "update", ns, "Memory", "--name", "RAM")
    ram = api(admin_url, "GET", f"/namespaces/{ns}/objects/RAM").json()
    assert ram["name"] == "RAM" and not {"description", "required", "properties"} & {k for k, v in ram.items() if v}
    assert api(admin_url, "GET", f"/namespaces/{ns}/objects/Memory").status_code == 404

    openstack("image", "metadef", "object", "delete", ns, "Renamed")
    assert [o["name"] for o in openstack("image", "metadef", "object", "list", ns, "-f", "json")] == ["RAM"]
    openstack("image", "metadef", "object", "delete", ns)  # all of them
    assert api(admin_url, "GET", f"/namespaces/{ns}/objects").json()["objects"] == []
    openstack("image", "metadef", "namespace", "delete", ns)


# -- openstack image metadef resource type (association) ----------------------------------------


def test_openstack_metadef_resource_type_commands(openstack, admin_url):
    available = {row["Name"] for row in openstack("image", "metadef", "resource", "type", "list", "-f", "json")}
    assert set(CORE_RESOURCE_TYPES) <= available

    ns = unique("osc-rt")
    openstack("image", "metadef", "namespace", "create", ns, "--public", "-f", "json")
    created = openstack(
        "image",
        "metadef",
        "resource",
        "type",
        "association",
        "create",
        ns,
        "OS::Cinder::Volume",
        "--properties-target",
        "image",
        "-f",
        "json",
    )
    assert (created["name"], created["properties_target"]) == ("OS::Cinder::Volume", "image")
    openstack("image", "metadef", "resource", "type", "association", "create", ns, "OS::Nova::Flavor", "-f", "json")
    listed = openstack("image", "metadef", "resource", "type", "association", "list", ns, "-f", "json")
    assert sorted(row["Name"] for row in listed) == ["OS::Cinder::Volume", "OS::Nova::Flavor"]

    openstack("image", "metadef", "resource", "type", "association", "delete", ns, "OS::Cinder::Volume")
    listed = openstack("image", "metadef", "resource", "type", "association", "list", ns, "-f", "json")
    assert [row["Name"] for row in listed] == ["OS::Nova::Flavor"]
    missing = openstack(
        "image", "metadef", "resource", "type", "association", "delete", ns, "OS::Cinder::Volume", ok=False
    )
    assert_refused(missing, 404)
    openstack("image", "metadef", "namespace", "delete", ns)


# -- openstacksdk --------------------------------------------------------------------------------


def test_openstacksdk_metadef_calls(conn, admin_url):
    image = conn.image
    name = unique("sdk")
    ns = image.create_metadef_namespace(namespace=name, display_name="SDK", visibility="public", protected=False)
    assert (ns.namespace, ns.display_name, ns.visibility, ns.is_protected) == (name, "SDK", "public", False)
    assert image.get_metadef_namespace(name).display_name == "SDK"
    assert name in [n.namespace for n in image.metadef_namespaces(visibility="public")]
    assert name not in [n.namespace for n in image.metadef_namespaces(visibility="private")]

    ascending = [n.namespace for n in image.metadef_namespaces(sort_key="namespace", sort_dir="asc", limit=2)]
    assert ascending == sorted(ascending) and name in ascending  # paged by 2, one list

    updated = image.update_metadef_namespace(name, display_name="SDK 2", visibility="public")
    assert (updated.display_name, updated.visibility) == ("SDK 2", "public")

    # resource types and associations
    assert set(CORE_RESOURCE_TYPES) <= {rt.name for rt in image.metadef_resource_types()}
    assoc = image.create_metadef_resource_type_association(name, name="OS::Glance::Image", prefix="hw_")
    assert (assoc.name, assoc.prefix) == ("OS::Glance::Image", "hw_")
    assert [a.name for a in image.metadef_resource_type_associations(name)] == ["OS::Glance::Image"]
    assert name in [n.namespace for n in image.metadef_namespaces(resource_types="OS::Glance::Image")]

    # properties
    prop = image.create_metadef_property(
        name, name="machine", title="Machine type", type="string", enum=["pc", "q35"], default="q35"
    )
    assert (prop.name, prop.title, prop.enum, prop.default) == ("machine", "Machine type", ["pc", "q35"], "q35")
    got = image.get_metadef_property("machine", name)
    assert (got.title, got.type) == ("Machine type", "string")
    image.update_metadef_property("machine", name, name="machine", title="Machine", type="string", enum=["q35"])
    assert image.get_metadef_property("machine", name).enum == ["q35"]
    assert [p.name for p in image.metadef_properties(name)] == ["machine"]
    with pytest.raises(exceptions.NotFoundException):
        image.get_metadef_property("no-such-property", name)

    # objects
    obj = image.create_metadef_object(
        name, name="Firmware", description="Boot firmware", properties={"fw": {"title": "Firmware", "type": "string"}}
    )
    assert (obj.name, obj.description, list(obj.properties)) == ("Firmware", "Boot firmware", ["fw"])
    assert image.get_metadef_object("Firmware", name).description == "Boot firmware"
    # Glance's object PUT needs the name in the body (its object schema requires it)
    image.update_metadef_object("Firmware", name, name="Firmware", description="UEFI or BIOS")
    assert image.get_metadef_object("Firmware", name).description == "UEFI or BIOS"
    assert [o.name for o in image.metadef_objects(name)] == ["Firmware"]

    # tags: one by one, bulk (replace, then append), and away again
    image.add_tag_to_metadef_namespace(name, "one")
    ns = image.get_metadef_namespace(name)
    ns.set_tags(image, ["two", "three"])
    assert names(api(admin_url, "GET", f"/namespaces/{name}/tags").json()["tags"]) == ["three", "two"]
    ns.set_tags(image, ["four"], append=True)
    assert names(ns.fetch_tags(image).tags) == ["four", "three", "two"]
    image.remove_tag_from_metadef_namespace(name, "four")
    assert names(api(admin_url, "GET", f"/namespaces/{name}/tags").json()["tags"]) == ["three", "two"]
    image.remove_tags_from_metadef_namespace(name)
    assert api(admin_url, "GET", f"/namespaces/{name}/tags").json()["tags"] == []

    # schemas
    for getter, title in (
        (image.get_metadef_namespace_schema, "namespace"),
        (image.get_metadef_namespaces_schema, "namespaces"),
        (image.get_metadef_resource_type_schema, "resource_type_association"),
        (image.get_metadef_resource_types_schema, "resource_type_associations"),
        (image.get_metadef_object_schema, "object"),
        (image.get_metadef_objects_schema, "objects"),
        (image.get_metadef_property_schema, "property"),
        (image.get_metadef_properties_schema, "properties"),
        (image.get_metadef_tag_schema, "tag"),
        (image.get_metadef_tags_schema, "tags"),
    ):
        schema = getter()
        assert schema.name == title and schema.properties, (getter.__name__, schema)

    # single and bulk deletes, and the namespace
    image.create_metadef_object(name, name="Spare")
    image.delete_metadef_object("Spare", name)
    assert [o.name for o in image.metadef_objects(name)] == ["Firmware"]
    image.delete_metadef_property("machine", name, ignore_missing=False)
    image.create_metadef_property(name, name="again", title="Again", type="boolean")
    image.delete_all_metadef_objects(name)
    assert list(image.metadef_objects(name)) == []
    image.delete_all_metadef_properties(name)
    assert list(image.metadef_properties(name)) == []
    image.delete_metadef_resource_type_association("OS::Glance::Image", name, ignore_missing=False)
    assert list(image.metadef_resource_type_associations(name)) == []
    image.delete_metadef_namespace(name, ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException):
        image.get_metadef_namespace(name)
    with pytest.raises(exceptions.NotFoundException):
        image.delete_metadef_namespace(name, ignore_missing=False)


# == project members, readers and administrators: a real Keystone ===============================

# (user, project, role): Keystone's bootstrap makes admin imply member and member imply
# reader, so tokens carry the implied roles too. The same principals as test_keystone.py.
PRINCIPALS = {
    "admin": ("abbild-admin", "abbild-admins", "admin"),
    "owner member": ("abbild-alpha-member", "abbild-alpha", "member"),
    "owner reader": ("abbild-alpha-reader", "abbild-alpha", "reader"),
    "other project member": ("abbild-beta-member", "abbild-beta", "member"),
}

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
def keystone():
    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    ks.ensure_user(SERVICE_USER, PASSWORD, SERVICE_PROJECT, ["service"])
    return ks


@pytest.fixture(scope="module")
def ks_url(keystone, server_factory):
    text = KEYSTONE_CONFIG.format(auth_url=ks.auth_url(), user=SERVICE_USER, password=PASSWORD, project=SERVICE_PROJECT)
    return server_factory("metadefs-keystone", text).url


@functools.cache
def login(who: str) -> tuple[str, str]:
    """A token of *who* (created if missing) and its project id."""
    user, project, role = PRINCIPALS[who]
    ks.ensure_user(user, PASSWORD, project, [role])
    token, project_id, _ = ks.token_for(user, PASSWORD, project)
    return token, project_id


def auth_settings(who: str) -> dict:
    user, project, _ = PRINCIPALS[who]
    login(who)
    return {
        "auth_url": ks.auth_url(),
        "username": user,
        "password": PASSWORD,
        "project_name": project,
        "user_domain_id": "default",
        "project_domain_id": "default",
    }


def sdk_as(who: str, url: str):
    import openstack

    return openstack.connect(auth_type="password", auth=auth_settings(who), image_endpoint_override=url).image


def cli_env_as(who: str, home) -> dict:
    s = auth_settings(who)
    env = clean_env(home)
    env.update(
        OS_AUTH_URL=s["auth_url"],
        OS_USERNAME=s["username"],
        OS_PASSWORD=PASSWORD,
        OS_PROJECT_NAME=s["project_name"],
        OS_USER_DOMAIN_ID="default",
        OS_PROJECT_DOMAIN_ID="default",
        OS_IDENTITY_API_VERSION="3",
        OS_AUTH_TYPE="password",
    )
    return env


@pytest.fixture(scope="module")
def catalog(ks_url):
    """Made by the administrator through openstacksdk with a real token: a public
    namespace, and a private one of each of the projects alpha and beta, each with a
    property, an object, a tag and an association."""
    admin = sdk_as("admin", ks_url)
    made = {}
    for key, visibility, owner in (
        ("public", "public", None),
        ("alpha", "private", login("owner member")[1]),
        ("beta", "private", login("other project member")[1]),
    ):
        name = unique(f"ks-{key}")
        attrs = {"namespace": name, "visibility": visibility, "display_name": f"{key} namespace"}
        if owner:
            attrs["owner"] = owner
        ns = admin.create_metadef_namespace(**attrs)
        assert (ns.visibility, ns.owner) == (visibility, owner or login("admin")[1])
        admin.create_metadef_property(name, name="speed", title="Speed", type="integer")
        admin.create_metadef_object(name, name="Thing", description="a thing")
        admin.add_tag_to_metadef_namespace(name, "shiny")
        admin.create_metadef_resource_type_association(name, name="OS::Glance::Image", prefix="x_")
        made[key] = name
    yield made
    for name in made.values():
        admin.delete_metadef_namespace(name)


def test_keystone_admin_sees_and_changes_everything_with_glance(ks_url, catalog, tmp_path):
    env = cli_env_as("admin", tmp_path)
    glance = [executable("glance"), "--os-image-url", ks_url]
    listed = {row["namespace"] for row in list_table(run(glance + ["md-namespace-list"], env).stdout)}
    assert set(catalog.values()) <= listed
    for name in catalog.values():
        shown = show_table(run(glance + ["md-namespace-show", name], env).stdout)
        assert jsonish(shown["properties"]) == ["speed"] and jsonish(shown["tags"]) == ["shiny"]
    beta = catalog["beta"]
    run(glance + ["md-tag-create", beta, "--name", "admin-was-here"], env)
    run(glance + ["md-tag-delete", beta, "admin-was-here"], env)
    name = unique("ks-admin")
    created = show_table(run(glance + ["md-namespace-create", name, "--visibility", "public"], env).stdout)
    assert created["owner"] == login("admin")[1]  # the token's project, as in Glance
    run(glance + ["md-namespace-delete", name], env)


def test_keystone_admin_update_without_owner_takes_the_namespace(ks_url, keystone, tmp_path):
    """Glance's PUT replaces the namespace: an owner left out becomes the caller's project.
    glanceclient sends the owner back (it PUTs what it read); openstacksdk sends only what
    it was given, so an administrator's update moves a project's private namespace to the
    administrator's project, out of the project's sight."""
    admin, member = sdk_as("admin", ks_url), sdk_as("owner member", ks_url)
    alpha = login("owner member")[1]
    name = unique("ks-owner")
    admin.create_metadef_namespace(namespace=name, owner=alpha)
    assert member.get_metadef_namespace(name).owner == alpha
    admin.update_metadef_namespace(name, description="kept by glanceclient, not by the sdk")
    assert admin.get_metadef_namespace(name).owner == login("admin")[1]
    with pytest.raises(exceptions.NotFoundException):
        member.get_metadef_namespace(name)
    admin.update_metadef_namespace(name, owner=alpha)
    assert member.get_metadef_namespace(name).owner == alpha
    glance = [executable("glance"), "--os-image-url", ks_url, "md-namespace-update", name, "--description", "glance"]
    updated = show_table(run(glance, cli_env_as("admin", tmp_path)).stdout)
    assert (updated["owner"], updated["description"]) == (alpha, "glance")
    admin.delete_metadef_namespace(name, ignore_missing=False)


@pytest.mark.parametrize("who", ["owner member", "owner reader"])
def test_keystone_project_reads_public_and_own_with_glance(ks_url, catalog, tmp_path, who):
    env = cli_env_as(who, tmp_path)
    glance = [executable("glance"), "--os-image-url", ks_url]
    listed = {row["namespace"] for row in list_table(run(glance + ["md-namespace-list"], env).stdout)}
    assert {catalog["public"], catalog["alpha"]} <= listed
    assert catalog["beta"] not in listed
    private = {
        row["namespace"]
        for row in list_table(run(glance + ["md-namespace-list", "--visibility", "private"], env).stdout)
    }
    assert catalog["alpha"] in private and catalog["beta"] not in private
    for key in ("public", "alpha"):
        name = catalog[key]
        shown = show_table(run(glance + ["md-namespace-show", name], env).stdout)
        assert (shown["namespace"], jsonish(shown["objects"])) == (name, ["Thing"])
        assert [p["name"] for p in list_table(run(glance + ["md-property-list", name], env).stdout)] == ["speed"]
        assert show_table(run(glance + ["md-property-show", name, "speed"], env).stdout)["type"] == "integer"
        assert [o["name"] for o in list_table(run(glance + ["md-object-list", name], env).stdout)] == ["Thing"]
        assert show_table(run(glance + ["md-object-show", name, "Thing"], env).stdout)["description"] == "a thing"
        assert [t["name"] for t in list_table(run(glance + ["md-tag-list", name], env).stdout)] == ["shiny"]
        assert show_table(run(glance + ["md-tag-show", name, "shiny"], env).stdout)["name"] == "shiny"
        associations = list_table(run(glance + ["md-namespace-resource-type-list", name], env).stdout)
        assert [(a["name"], a["prefix"]) for a in associations] == [("OS::Glance::Image", "x_")]
    assert set(CORE_RESOURCE_TYPES) <= {
        r["name"] for r in list_table(run(glance + ["md-resource-type-list"], env).stdout)
    }


@pytest.mark.parametrize("who", ["owner member", "owner reader", "other project member"])
def test_keystone_another_projects_private_namespace_is_not_found_with_glance(ks_url, catalog, tmp_path, who):
    env = cli_env_as(who, tmp_path)
    glance = [executable("glance"), "--os-image-url", ks_url]
    hidden = catalog["alpha"] if who == "other project member" else catalog["beta"]
    for command in (
        ["md-namespace-show", hidden],
        ["md-property-list", hidden],
        ["md-property-show", hidden, "speed"],
        ["md-object-list", hidden],
        ["md-object-show", hidden, "Thing"],
        ["md-tag-list", hidden],
        ["md-tag-show", hidden, "shiny"],
        ["md-namespace-resource-type-list", hidden],
        # writes too: the namespace does not exist for this caller (404, not 403)
        ["md-namespace-delete", hidden],
        ["md-property-delete", hidden, "speed"],
        ["md-tag-create", hidden, "--name", "nope"],
        ["md-namespace-tags-delete", hidden],
    ):
        proc = run(glance + command, env, ok=False)
        assert_refused(proc, 404)
    assert hidden not in {row["namespace"] for row in list_table(run(glance + ["md-namespace-list"], env).stdout)}


@pytest.mark.parametrize("who", ["owner member", "owner reader"])
def test_keystone_project_changes_nothing_with_glance(ks_url, catalog, tmp_path, who):
    env = cli_env_as(who, tmp_path)
    glance = [executable("glance"), "--os-image-url", ks_url]
    spec = json.dumps({"description": "x"})
    for key in ("public", "alpha"):
        name = catalog[key]
        for command in (
            ["md-namespace-update", name, "--display-name", "mine now"],
            ["md-namespace-delete", name],
            ["md-property-create", name, "--name", "p", "--title", "P", "--type", "string", "--schema", "{}"],
            ["md-property-update", name, "speed", "--title", "Slow"],
            ["md-property-delete", name, "speed"],
            ["md-namespace-properties-delete", name],
            ["md-object-create", name, "--name", "Other", "--schema", spec],
            ["md-object-update", name, "Thing", "--schema", spec],
            ["md-object-delete", name, "Thing"],
            ["md-namespace-objects-delete", name],
            ["md-tag-create", name, "--name", "dull"],
            ["md-tag-create-multiple", name, "--names", "a,b"],
            ["md-tag-update", name, "shiny", "--name", "dull"],
            ["md-tag-delete", name, "shiny"],
            ["md-namespace-tags-delete", name],
            ["md-resource-type-associate", name, "--name", "OS::Nova::Flavor"],
            ["md-resource-type-deassociate", name, "OS::Glance::Image"],
        ):
            proc = run(glance + command, env, ok=False)
            assert_refused(proc, 403)
    refused = run(glance + ["md-namespace-create", unique("ks-member")], env, ok=False)
    assert_refused(refused, 403)
    # nothing changed
    admin = sdk_as("admin", ks_url)
    for name in (catalog["public"], catalog["alpha"]):
        ns = admin.get_metadef_namespace(name)
        assert ns.display_name.endswith("namespace") and names(ns.tags) == ["shiny"]
        assert [p.name for p in admin.metadef_properties(name)] == ["speed"]
        assert [o.name for o in admin.metadef_objects(name)] == ["Thing"]


def test_keystone_member_with_openstack_cli(ks_url, catalog, tmp_path):
    env = cli_env_as("owner member", tmp_path)
    env["OS_IMAGE_ENDPOINT_OVERRIDE"] = ks_url
    osc = [executable("openstack"), "image", "metadef"]

    def out(*args):
        return json.loads(run(osc + [*args, "-f", "json"], env).stdout)

    listed = {row["namespace"] for row in out("namespace", "list")}
    assert {catalog["public"], catalog["alpha"]} <= listed and catalog["beta"] not in listed
    shown = out("namespace", "show", catalog["alpha"])
    assert (shown["visibility"], shown["owner"]) == ("private", login("owner member")[1])
    assert [p["name"] for p in out("property", "list", catalog["public"])] == ["speed"]
    assert out("property", "show", catalog["public"], "speed")["type"] == "integer"
    assert [o["name"] for o in out("object", "list", catalog["alpha"])] == ["Thing"]
    assert out("object", "show", catalog["alpha"], "Thing")["description"] == "a thing"
    assert [a["Name"] for a in out("resource", "type", "association", "list", catalog["public"])] == [
        "OS::Glance::Image"
    ]
    assert set(CORE_RESOURCE_TYPES) <= {r["Name"] for r in out("resource", "type", "list")}

    hidden = run(osc + ["namespace", "show", catalog["beta"]], env, ok=False)
    assert_refused(hidden, 404)
    for command in (
        ["namespace", "create", unique("osc-member")],
        ["namespace", "set", catalog["public"], "--description", "mine"],
        ["property", "create", "--name", "p", "--title", "P", "--type", "string", "--schema", "{}", catalog["alpha"]],
        ["object", "create", "--namespace", catalog["alpha"], "Other"],
        ["resource", "type", "association", "create", catalog["alpha"], "OS::Nova::Flavor"],
    ):
        proc = run(osc + command, env, ok=False)
        assert_refused(proc, 403)
    # the multi-item deletes log each failure and exit non-zero
    for command in (
        ["namespace", "delete", catalog["public"]],
        ["property", "delete", catalog["alpha"], "speed"],
        ["object", "delete", catalog["alpha"], "Thing"],
    ):
        proc = run(osc + command, env, ok=False)
        assert_refused(proc, 403)
    assert names(sdk_as("admin", ks_url).get_metadef_namespace(catalog["public"]).tags) == ["shiny"]


@pytest.mark.parametrize("who", ["owner member", "owner reader", "other project member"])
def test_keystone_openstacksdk_as_project_user(ks_url, catalog, who):
    image = sdk_as(who, ks_url)
    mine, theirs = (
        (catalog["beta"], catalog["alpha"]) if who == "other project member" else (catalog["alpha"], catalog["beta"])
    )
    visible = {n.namespace for n in image.metadef_namespaces()}
    assert {catalog["public"], mine} <= visible and theirs not in visible
    for name in (catalog["public"], mine):
        assert image.get_metadef_namespace(name).namespace == name
        assert [p.name for p in image.metadef_properties(name)] == ["speed"]
        assert image.get_metadef_object("Thing", name).description == "a thing"
        assert [a.name for a in image.metadef_resource_type_associations(name)] == ["OS::Glance::Image"]
        with pytest.raises(exceptions.ForbiddenException):
            image.create_metadef_property(name, name="p", title="P", type="string")
        with pytest.raises(exceptions.ForbiddenException):
            image.update_metadef_namespace(name, display_name="mine")
        with pytest.raises(exceptions.ForbiddenException):
            image.add_tag_to_metadef_namespace(name, "dull")
        with pytest.raises(exceptions.ForbiddenException):
            image.delete_metadef_namespace(name, ignore_missing=False)
    with pytest.raises(exceptions.ForbiddenException):
        image.create_metadef_namespace(namespace=unique("sdk-member"))
    with pytest.raises(exceptions.NotFoundException):
        image.get_metadef_namespace(theirs)
    with pytest.raises(exceptions.NotFoundException):
        image.get_metadef_property("speed", theirs)
    with pytest.raises(exceptions.NotFoundException):
        image.delete_metadef_namespace(theirs, ignore_missing=False)
