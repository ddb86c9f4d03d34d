"""``abbild db load-metadefs``, ``export-metadefs`` and ``unload-metadefs`` on SQLite,
MariaDB and PostgreSQL (in process and as the real command), and ``abbild serve``
loading the shipped definitions on the first start of its embedded database only."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request

import pytest

from abbild.errors import Invalid
from abbild.metadefs import CORE_RESOURCE_TYPES, Namespace, namespace_document
from abbild_cmd import metadefs
from tests.functional.conftest import REGISTRY

SHIPPED = metadefs.shipped_path()
SHIPPED_NAMES = sorted(json.loads(p.read_text())["namespace"] for p in SHIPPED.glob("*.json"))


def write(directory: pathlib.Path, name: str, doc: dict) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(doc))
    return directory


def documents(registry) -> dict[str, dict]:
    """Every namespace as its file would hold it."""
    return {n.namespace: namespace_document(n) for n in metadefs.all_namespaces(registry)}


def prop(title: str, **more) -> dict:
    return {"title": title, "type": "string", **more}


FIRST = {
    "namespace": "Test::Merging",
    "display_name": "First",
    "description": "as first loaded",
    "visibility": "public",
    "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "one_"}],
    "properties": {"a": prop("A"), "b": prop("B")},
    "objects": [{"name": "o1", "description": "old", "properties": {"x": prop("X")}}],
    "tags": [{"name": "t1"}],
}
SECOND = {
    "namespace": "Test::Merging",
    "display_name": "Second",
    "visibility": "private",
    "protected": False,
    "owner": "p-second",
    "resource_type_associations": [
        {"name": "OS::Glance::Image", "prefix": "two_"},
        {"name": "Test::Thing", "prefix": "t:"},
    ],
    "properties": {"a": prop("A, newer", enum=["x", "y"]), "c": prop("C")},
    "objects": [
        {"name": "o1", "description": "new", "required": ["y"], "properties": {"y": prop("Y")}},
        {"name": "o2", "properties": {"z": prop("Z")}},
    ],
    "tags": [{"name": "t2"}],
}


def load(registry, directory, **options):
    return [(o.result, o.namespace) for o in metadefs.load(registry, metadefs.read(directory), **options)]


def test_load_skip_merge_prefer_new_overwrite(sql_registry, tmp_path):
    first, second = write(tmp_path / "1", "ns.json", FIRST), write(tmp_path / "2", "ns.json", SECOND)
    assert load(sql_registry, first) == [("created", "Test::Merging")]
    as_loaded = documents(sql_registry)["Test::Merging"]
    assert as_loaded == {**FIRST, "owner": "admin"}  # Glance's owner when the file names none

    # Without --merge, a namespace the database has is left alone (Glance skips it).
    assert load(sql_registry, second) == [("skipped", "Test::Merging")]
    assert documents(sql_registry)["Test::Merging"] == as_loaded

    # --merge: what it lacks is added; what it has stays, its own fields too.
    assert load(sql_registry, second, merge=True) == [("merged", "Test::Merging")]
    merged = documents(sql_registry)["Test::Merging"]
    assert {k: merged[k] for k in ("display_name", "description", "visibility", "protected", "owner")} == {
        "display_name": "First",
        "description": "as first loaded",
        "visibility": "public",
        "protected": True,
        "owner": "admin",
    }
    assert merged["properties"] == {"a": prop("A"), "b": prop("B"), "c": prop("C")}
    assert [(o["name"], o.get("description")) for o in merged["objects"]] == [("o1", "old"), ("o2", None)]
    assert merged["tags"] == [{"name": "t1"}, {"name": "t2"}]
    assert sorted((a["name"], a["prefix"]) for a in merged["resource_type_associations"]) == [
        ("OS::Glance::Image", "one_"),
        ("Test::Thing", "t:"),
    ]
    assert load(sql_registry, second, merge=True) == [("unchanged", "Test::Merging")]

    # --prefer-new: the file wins where both have something; the rest stays.
    assert load(sql_registry, second, merge=True, prefer_new=True) == [("updated", "Test::Merging")]
    updated = documents(sql_registry)["Test::Merging"]
    assert (updated["display_name"], updated["visibility"], updated["protected"], updated["owner"]) == (
        "Second",
        "private",
        False,
        "p-second",
    )
    assert "description" not in updated  # the file has none: the newer says so
    assert updated["properties"] == {"a": SECOND["properties"]["a"], "b": prop("B"), "c": prop("C")}
    assert updated["objects"][0] == SECOND["objects"][0]
    assert updated["tags"] == [{"name": "t1"}, {"name": "t2"}]
    assert sorted((a["name"], a["prefix"]) for a in updated["resource_type_associations"]) == [
        ("OS::Glance::Image", "two_"),
        ("Test::Thing", "t:"),
    ]

    # --overwrite: exactly the file.
    load(sql_registry, first, merge=True)  # b, o1's old x... are back in part; overwrite drops them
    assert load(sql_registry, second, merge=True, overwrite=True) == [("replaced", "Test::Merging")]
    assert documents(sql_registry)["Test::Merging"] == SECOND
    assert load(sql_registry, second, merge=True, overwrite=True) == [("unchanged", "Test::Merging")]


def test_a_namespace_that_fails_is_reported_and_the_others_load(sql_registry, tmp_path):
    class Refusing:
        """The registry, but it cannot store Test::A (as a database might refuse a value)."""

        def __getattr__(self, name):
            return getattr(sql_registry, name)

        def create_namespace(self, namespace):
            if namespace.namespace == "Test::A":
                raise Invalid("The database cannot store a value of this request: too long")
            return sql_registry.create_namespace(namespace)

    write(tmp_path, "a.json", {**FIRST, "namespace": "Test::A"})
    write(tmp_path, "b.json", {**FIRST, "namespace": "Test::B"})
    outcomes = metadefs.load(Refusing(), metadefs.read(tmp_path))
    assert [(o.namespace, o.result, o.detail) for o in outcomes] == [
        ("Test::A", "failed", "The database cannot store a value of this request: too long"),
        ("Test::B", "created", ""),
    ]
    assert set(documents(sql_registry)) == {"Test::B"}


def test_export_round_trip(sql_registry, tmp_path):
    assert {r for r, _ in load(sql_registry, SHIPPED)} == {"created"}
    write(tmp_path / "more", "x.json", {**SECOND, "namespace": "Test::Exported"})
    load(sql_registry, tmp_path / "more")
    before = documents(sql_registry)
    assert sorted(before) == sorted([*SHIPPED_NAMES, "Test::Exported"])

    written = metadefs.export(sql_registry, tmp_path / "out")
    names = {namespace: file.name for namespace, file in written}
    assert names["OS::Compute::GuestCPUTopology"] == "GuestCPUtopology.json"  # Glance's: the display name
    assert names["Test::Exported"] == "Second.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names.values())
    for namespace, file in written:
        assert json.loads(file.read_text()) == before[namespace]

    metadefs.unload(sql_registry)
    assert documents(sql_registry) == {}
    assert {r for r, _ in load(sql_registry, tmp_path / "out")} == {"created"}
    assert documents(sql_registry) == before


def test_unload_removes_every_namespace_and_the_unprotected_resource_types(sql_registry, tmp_path):
    load(sql_registry, write(tmp_path, "ns.json", SECOND))  # protected or not: removed all the same
    load(sql_registry, SHIPPED)
    sql_registry.create_namespace(Namespace(namespace="Test::Private", owner="p1"))
    assert {rt.name for rt in sql_registry.list_resource_types()} == {*CORE_RESOURCE_TYPES, "Test::Thing"}

    namespaces, resource_types = metadefs.unload(sql_registry)
    assert sorted(namespaces) == sorted([*SHIPPED_NAMES, "Test::Merging", "Test::Private"])
    assert resource_types == ["Test::Thing"]
    assert list(metadefs.all_namespaces(sql_registry)) == []
    assert {(rt.name, rt.protected) for rt in sql_registry.list_resource_types()} == {
        (name, True) for name in CORE_RESOURCE_TYPES
    }
    assert metadefs.unload(sql_registry) == ([], [])


def test_all_namespaces_pages(sql_registry):
    for i in range(7):
        sql_registry.create_namespace(Namespace(namespace=f"Test::{i}"))
    assert [n.namespace for n in metadefs.all_namespaces(sql_registry, page=3)] == [f"Test::{i}" for i in range(7)]


# -- the command -------------------------------------------------------------------------------


def abbild(*args, check=True, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_commands(sql_registry, tmp_path):
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(f"[database]\nconnection = {sql_registry.url}\n")
    db = ("--config-file", conf)

    out = abbild("db", "load-metadefs", *db).stdout
    assert f"{len(SHIPPED_NAMES)} namespace(s) from {SHIPPED}: {len(SHIPPED_NAMES)} created" in out
    for name in SHIPPED_NAMES:
        assert f"created    {name}" in out
    assert sorted(documents(sql_registry)) == SHIPPED_NAMES
    assert f": {len(SHIPPED_NAMES)} skipped" in abbild("db", "load-metadefs", *db).stdout

    # A malformed file: named with its field, non-zero exit, nothing loaded.
    bad_dir = write(tmp_path / "bad", "good.json", {**FIRST, "namespace": "Test::Good"})
    bad = write(bad_dir, "bad.json", {**FIRST, "properties": {"a": {"title": "A", "type": "text"}}}) / "bad.json"
    proc = abbild("db", "load-metadefs", *db, "--path", bad_dir, check=False)
    assert proc.returncode != 0
    assert f"{bad}: properties: Property 'a': type 'text' is not one of" in proc.stderr
    assert "nothing was loaded" in proc.stderr
    assert "Test::Good" not in documents(sql_registry)

    proc = abbild("db", "load-metadefs", *db, "--path", tmp_path / "nowhere", check=False)
    assert proc.returncode != 0 and "no such file or directory" in proc.stderr
    proc = abbild("db", "load-metadefs", *db, "--prefer-new", check=False)
    assert proc.returncode != 0 and "give them with --merge" in proc.stderr
    proc = abbild("db", "load-metadefs", *db, "--merge", "--prefer-new", "--overwrite", check=False)
    assert proc.returncode != 0 and "not both" in proc.stderr

    # --path to one file, --merge --overwrite.
    write(tmp_path / "one", "ns.json", {**FIRST, "namespace": "OS::Compute::GuestWatchdog", "protected": False})
    out = abbild("db", "load-metadefs", *db, "--path", tmp_path / "one" / "ns.json", "--merge", "--overwrite").stdout
    assert "replaced   OS::Compute::GuestWatchdog" in out and ": 1 replaced" in out
    assert documents(sql_registry)["OS::Compute::GuestWatchdog"]["protected"] is False

    out = abbild("db", "export-metadefs", *db, "--path", tmp_path / "export").stdout
    assert f"{len(SHIPPED_NAMES)} namespace(s) written to {tmp_path / 'export'}" in out
    assert (tmp_path / "export" / "GuestCPUtopology.json").is_file()
    abbild("db", "export-metadefs", *db, cwd=tmp_path)  # default: ./metadefs
    assert len(list((tmp_path / "metadefs").glob("*.json"))) == len(SHIPPED_NAMES)

    out = abbild("db", "unload-metadefs", *db).stdout
    assert f"removed {len(SHIPPED_NAMES)} namespace(s) and 0 resource type(s)" in out
    assert documents(sql_registry) == {}
    out = abbild("db", "load-metadefs", *db, "--path", tmp_path / "export").stdout
    assert f": {len(SHIPPED_NAMES)} created" in out


def test_help_names_the_options():
    out = abbild("db", "load-metadefs", "--help").stdout
    for option in ("--path", "--merge", "--prefer-new", "--overwrite", "--config-file", "--data-dir"):
        assert option in out
    assert "--path" in abbild("db", "export-metadefs", "--help").stdout
    assert "protected" in abbild("db", "unload-metadefs", "--help").stdout


# -- abbild serve: the first start of its database --------------------------------------------


def namespaces_of(server) -> list[str]:
    with urllib.request.urlopen(server.url + "/v2/metadefs/namespaces?limit=100", timeout=10) as resp:
        return sorted(n["namespace"] for n in json.load(resp)["namespaces"])


embedded_only = pytest.mark.skipif(
    REGISTRY == "http", reason="the embedded default (no --config-file) is an SQL registry of its own"
)


@embedded_only
def test_serve_loads_the_shipped_definitions_on_the_first_start_only(make_server, tmp_path):
    data = tmp_path / "data"
    server = make_server(data_dir=data).start()
    assert namespaces_of(server) == SHIPPED_NAMES
    with urllib.request.urlopen(server.url + "/v2/metadefs/namespaces/OS::Compute::GuestWatchdog", timeout=10) as r:
        watchdog = json.load(r)
    assert watchdog["protected"] is True and watchdog["visibility"] == "public"
    assert {"name": "OS::Glance::Image", "prefix": "hw_"} in [
        {k: a[k] for k in ("name", "prefix")} for a in watchdog["resource_type_associations"]
    ]
    assert "first start of this database: loaded" in server.read_log()
    server.stop()

    # The operator removes them; the next start keeps that choice.
    abbild("db", "unload-metadefs", "--data-dir", data)
    log_before = len(server.read_log())
    server = make_server(data_dir=data).start()
    assert namespaces_of(server) == []
    assert "first start" not in server.read_log()[log_before:]


@embedded_only
def test_serve_loads_them_into_a_database_from_before_metadefs(make_server, tmp_path):
    from abbild import config
    from abbild.db import migrate
    from abbild.db.registry import make_engine

    data = tmp_path / "data"
    config.embedded_config_file(str(data))
    engine = make_engine(f"sqlite:///{data}/abbild.sqlite")
    previous = f"{int(metadefs.METADEFS_REVISION) - 1:04d}"
    assert migrate.sync(engine, previous) == previous
    engine.dispose()
    server = make_server(data_dir=data).start()
    assert namespaces_of(server) == SHIPPED_NAMES
    assert "first start of this database: loaded" in server.read_log()


def test_serve_with_a_config_file_loads_nothing(make_server, tmp_path):
    from tests.functional.helpers import server_config

    conf = tmp_path / "abbild-api.conf"
    conf.write_text(server_config().format(dir=tmp_path))
    server = make_server("--config-file", str(conf)).start()
    assert namespaces_of(server) == []
    assert "first start" not in server.read_log()


def test_the_commands_through_the_registry_service(make_registry, tmp_path):
    """``registry = http`` (the shared secret: the service itself): the commands work
    through ``abbild registry``, which keeps the database."""
    db_conf = tmp_path / "database.conf"
    db_conf.write_text(f"[database]\nconnection = sqlite:///{tmp_path}/abbild.sqlite\n")
    abbild("db", "sync", "--config-file", db_conf)
    registry = make_registry(tmp_path, [str(db_conf)]).start()
    client = ("--config-file", registry.client_config())

    out = abbild("db", "load-metadefs", *client).stdout
    assert f"{registry.url}: {len(SHIPPED_NAMES)} namespace(s) from {SHIPPED}: {len(SHIPPED_NAMES)} created" in out
    write(tmp_path / "more", "ns.json", SECOND)
    assert ": 1 created" in abbild("db", "load-metadefs", *client, "--path", tmp_path / "more").stdout
    out = abbild("db", "load-metadefs", *client, "--path", tmp_path / "more", "--merge", "--overwrite").stdout
    assert ": 1 unchanged" in out
    abbild("db", "export-metadefs", *client, "--path", tmp_path / "export")
    assert json.loads((tmp_path / "export" / "Second.json").read_text()) == SECOND
    out = abbild("db", "unload-metadefs", *client).stdout
    assert f"removed {len(SHIPPED_NAMES) + 1} namespace(s) and 1 resource type(s): Test::Thing" in out
    from abbild.db.registry import SQLRegistry

    direct = SQLRegistry(url=f"sqlite:///{tmp_path}/abbild.sqlite")
    try:
        assert documents(direct) == {}
    finally:
        direct.close()
