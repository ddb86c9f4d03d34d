"""The metadefs service (abbild.metadef_service) on the SQL registry (SQLite, MariaDB,
PostgreSQL): visibility and policy, protected namespaces, duplicates, property
definitions, tags, paging, concurrent writers and the abbild_metadef_changed hook."""

from __future__ import annotations

import threading
import types

import pytest
from oslo_config import cfg

from abbild import hookimpl, opts
from abbild.errors import Conflict, Forbidden, Invalid, MetadefNotFound
from abbild.metadef_service import ListPage, Metadefs, check_property_definition
from abbild.metadefs import (
    Association,
    MetadefObject,
    MetadefTag,
    Namespace,
    NamespaceFilters,
    PropertyDefinition,
)
from abbild.plugins import get_plugin_manager
from abbild.policy import Policy
from abbild.registry import Viewer

ADMIN = Viewer(project_id="admins", is_admin=True, roles=("admin", "member", "reader"))
OWNER = Viewer(project_id="p1", roles=("member", "reader"))
READER = Viewer(project_id="p1", roles=("reader",))
STRANGER = Viewer(project_id="p2", roles=("member", "reader"))
WATCHDOG = {"title": "Watchdog action", "type": "string", "enum": ["reset", "poweroff", "none"]}


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def abbild_metadef_changed(self, event, namespace, item, old_name):
        self.events.append((event, namespace.namespace, getattr(item, "name", None), old_name))


@pytest.fixture
def metadefs(sql_registry):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    plugins = get_plugin_manager(load_entrypoints=False)
    recorder = Recorder()
    plugins.register(recorder)
    service = types.SimpleNamespace(registry=sql_registry, policy=Policy(conf), plugins=plugins)
    found = Metadefs(service)
    found.recorder = recorder
    return found


def namespace(name="T::Ns", **fields) -> Namespace:
    return Namespace(namespace=name, **fields)


def private_of_p1(metadefs, name="T::Private") -> Namespace:
    return metadefs.create_namespace(namespace(name, owner="p1", visibility="private"), ADMIN)


def test_hook_abbild_metadef_changed(metadefs):
    ns = namespace(
        properties={"watchdog_action": dict(WATCHDOG)},
        objects=[MetadefObject("CPU", properties={"cores": {"title": "Cores", "type": "integer"}})],
        tags=[MetadefTag("fast")],
        associations=[Association("OS::Glance::Image", prefix="hw_")],
    )
    metadefs.create_namespace(ns, ADMIN)
    metadefs.update_namespace("T::Ns", {"namespace": "T::Renamed", "visibility": "public"}, ADMIN)
    metadefs.create_object("T::Renamed", MetadefObject("RAM"), ADMIN)
    metadefs.update_object("T::Renamed", "RAM", MetadefObject("Memory"), ADMIN)
    metadefs.delete_object("T::Renamed", "Memory", ADMIN)
    metadefs.create_property("T::Renamed", PropertyDefinition("p", {"title": "P", "type": "boolean"}), ADMIN)
    metadefs.update_property("T::Renamed", "p", PropertyDefinition("q", {"title": "Q", "type": "boolean"}), ADMIN)
    metadefs.delete_property("T::Renamed", "q", ADMIN)
    metadefs.create_tag("T::Renamed", "slow", ADMIN)
    metadefs.update_tag("T::Renamed", "slow", "slower", ADMIN)
    metadefs.delete_tag("T::Renamed", "slower", ADMIN)
    metadefs.create_tags("T::Renamed", ["a", "b"], True, ADMIN)
    metadefs.add_association("T::Renamed", Association("OS::Nova::Flavor", prefix="hw:"), ADMIN)
    metadefs.remove_association("T::Renamed", "OS::Nova::Flavor", ADMIN)
    metadefs.delete_objects("T::Renamed", ADMIN)
    metadefs.delete_properties("T::Renamed", ADMIN)
    metadefs.delete_tags("T::Renamed", ADMIN)
    metadefs.delete_namespace("T::Renamed", ADMIN)
    assert metadefs.recorder.events == [
        ("metadef_namespace.create", "T::Ns", None, None),
        ("metadef_resource_type.create", "T::Ns", "OS::Glance::Image", None),
        ("metadef_object.create", "T::Ns", "CPU", None),
        ("metadef_tag.create", "T::Ns", "fast", None),
        ("metadef_property.create", "T::Ns", "watchdog_action", None),
        ("metadef_namespace.update", "T::Renamed", None, "T::Ns"),
        ("metadef_object.create", "T::Renamed", "RAM", None),
        ("metadef_object.update", "T::Renamed", "Memory", "RAM"),
        ("metadef_object.delete", "T::Renamed", "Memory", None),
        ("metadef_property.create", "T::Renamed", "p", None),
        ("metadef_property.update", "T::Renamed", "q", "p"),
        ("metadef_property.delete", "T::Renamed", "q", None),
        ("metadef_tag.create", "T::Renamed", "slow", None),
        ("metadef_tag.update", "T::Renamed", "slower", "slow"),
        ("metadef_tag.delete", "T::Renamed", "slower", None),
        ("metadef_tag.create", "T::Renamed", "a", None),
        ("metadef_tag.create", "T::Renamed", "b", None),
        ("metadef_resource_type.create", "T::Renamed", "OS::Nova::Flavor", None),
        ("metadef_resource_type.delete", "T::Renamed", "OS::Nova::Flavor", None),
        ("metadef_namespace.delete_objects", "T::Renamed", None, None),
        ("metadef_namespace.delete_properties", "T::Renamed", None, None),
        ("metadef_namespace.delete_tags", "T::Renamed", None, None),
        ("metadef_namespace.delete", "T::Renamed", None, None),
    ]


def test_a_refused_change_fires_nothing(metadefs):
    metadefs.create_namespace(namespace(protected=True, tags=[MetadefTag("t")]), ADMIN)
    metadefs.recorder.events.clear()
    with pytest.raises(Forbidden):
        metadefs.delete_tag("T::Ns", "t", ADMIN)
    with pytest.raises(Conflict):
        metadefs.create_tag("T::Ns", "t", ADMIN)
    assert metadefs.recorder.events == []


def test_owner_defaults_to_the_callers_project(metadefs, sql_registry):
    assert metadefs.create_namespace(namespace("T::Mine"), ADMIN).owner == "admins"
    assert metadefs.create_namespace(namespace("T::Theirs", owner="p9"), ADMIN).owner == "p9"


def test_an_invisible_namespace_is_missing_for_reads_and_writes_alike(metadefs):
    private_of_p1(metadefs)
    missing_message = None
    try:
        metadefs.get_object("T::Nothing", "x", STRANGER)
    except MetadefNotFound as exc:
        missing_message = str(exc).replace("T::Nothing", "T::Private")
    for call in (
        lambda: metadefs.get_object("T::Private", "x", STRANGER),
        lambda: metadefs.create_tag("T::Private", "t", STRANGER),
        lambda: metadefs.delete_objects("T::Private", STRANGER),
        lambda: metadefs.list_properties("T::Private", STRANGER),
    ):
        with pytest.raises(MetadefNotFound) as refused:
            call()
        assert str(refused.value) == missing_message  # no hint that it exists
    with pytest.raises(MetadefNotFound, match="T::Private was not found"):
        metadefs.get_namespace("T::Private", STRANGER)
    with pytest.raises(MetadefNotFound):
        metadefs.update_namespace("T::Private", {"namespace": "T::Private"}, STRANGER)


def test_members_read_their_project_and_public_namespaces_and_change_none(metadefs):
    private_of_p1(metadefs)
    metadefs.create_namespace(namespace("T::Public", owner="p3", visibility="public"), ADMIN)
    for viewer in (OWNER, READER):
        assert metadefs.get_namespace("T::Private", viewer).owner == "p1"
        assert metadefs.get_namespace("T::Public", viewer).owner == "p3"
        with pytest.raises(Forbidden, match="add_metadef_tag"):
            metadefs.create_tag("T::Private", "t", viewer)
        with pytest.raises(Forbidden, match="delete_metadef_namespace"):
            metadefs.delete_namespace("T::Public", viewer)
    with pytest.raises(Forbidden, match="add_metadef_namespace"):
        metadefs.create_namespace(namespace("T::Other"), OWNER)
    # A project member without the reader role may not read its own namespace either.
    with pytest.raises(MetadefNotFound):
        metadefs.get_namespace("T::Private", Viewer(project_id="p1", roles=("member",)))


def test_lists_show_only_what_the_viewer_may_see(metadefs):
    private_of_p1(metadefs)
    metadefs.create_namespace(namespace("T::Public", owner="p3", visibility="public"), ADMIN)

    def names(viewer, **kw):
        found = metadefs.list_namespaces(NamespaceFilters(**kw), "namespace", "asc", None, None, viewer)
        return [ns.namespace for ns in found if ns.namespace.startswith("T::")]

    assert names(ADMIN) == ["T::Private", "T::Public"]
    assert names(OWNER) == ["T::Private", "T::Public"]
    assert names(STRANGER) == ["T::Public"]
    assert names(ADMIN, visibility="private") == ["T::Private"]
    with pytest.raises(MetadefNotFound):  # an invisible marker is as unknown as a missing one
        metadefs.list_namespaces(NamespaceFilters(), "namespace", "asc", None, "T::Private", STRANGER)
    with pytest.raises(Invalid, match="Invalid sort key"):
        metadefs.list_namespaces(NamespaceFilters(), "nonsense", "asc", None, None, ADMIN)


def test_protected_namespaces_keep_everything_in_them_but_may_change(metadefs):
    metadefs.create_namespace(
        namespace(
            protected=True,
            properties={"p": dict(WATCHDOG)},
            objects=[MetadefObject("o")],
            tags=[MetadefTag("t")],
            associations=[Association("OS::Glance::Image")],
        ),
        ADMIN,
    )
    refusals = [
        ("namespace T::Ns is protected", lambda: metadefs.delete_namespace("T::Ns", ADMIN)),
        ("namespace T::Ns is protected", lambda: metadefs.delete_objects("T::Ns", ADMIN)),
        ("namespace T::Ns is protected", lambda: metadefs.delete_properties("T::Ns", ADMIN)),
        ("namespace T::Ns is protected", lambda: metadefs.delete_tags("T::Ns", ADMIN)),
        ("object o is protected", lambda: metadefs.delete_object("T::Ns", "o", ADMIN)),
        ("property p is protected", lambda: metadefs.delete_property("T::Ns", "p", ADMIN)),
        ("tag t is protected", lambda: metadefs.delete_tag("T::Ns", "t", ADMIN)),
        (
            "resource-type-association OS::Glance::Image is protected",
            lambda: metadefs.remove_association("T::Ns", "OS::Glance::Image", ADMIN),
        ),
    ]
    for message, call in refusals:
        with pytest.raises(Forbidden, match=message):
            call()
    ns = metadefs.get_namespace("T::Ns", ADMIN)
    assert (len(ns.properties), len(ns.objects), len(ns.tags), len(ns.associations)) == (1, 1, 1, 1)
    metadefs.create_tag("T::Ns", "u", ADMIN)  # adding and changing stay allowed
    updated = metadefs.update_namespace("T::Ns", {"namespace": "T::Ns", "protected": False}, ADMIN)
    assert updated.protected is False and updated.visibility == "private"  # PUT's defaults
    metadefs.delete_namespace("T::Ns", ADMIN)


def test_duplicates_are_conflicts(metadefs):
    metadefs.create_namespace(namespace(properties={"p": dict(WATCHDOG)}, objects=[MetadefObject("o")]), ADMIN)
    metadefs.create_namespace(namespace("T::Other"), ADMIN)
    with pytest.raises(Conflict, match="namespace=T::Ns already exists"):
        metadefs.create_namespace(namespace(), ADMIN)
    with pytest.raises(Conflict, match="duplicate metadata definition namespace"):
        metadefs.update_namespace("T::Other", {"namespace": "T::Ns"}, ADMIN)
    with pytest.raises(Conflict, match="object with name=o already exists"):
        metadefs.create_object("T::Ns", MetadefObject("o"), ADMIN)
    with pytest.raises(Conflict, match="property with name=p already exists"):
        metadefs.create_property("T::Ns", PropertyDefinition("p", dict(WATCHDOG)), ADMIN)
    with pytest.raises(Conflict, match="object with name=x already exists"):
        metadefs.create_namespace(namespace("T::Twice", objects=[MetadefObject("x"), MetadefObject("x")]), ADMIN)
    metadefs.create_object("T::Ns", MetadefObject("o2"), ADMIN)
    with pytest.raises(Conflict):
        metadefs.update_object("T::Ns", "o2", MetadefObject("o"), ADMIN)


@pytest.mark.parametrize(
    "definition, problem",
    [
        ({"type": "string"}, "'title' is required"),
        ({"title": "T", "type": "text"}, "type 'text' is not one of"),
        ({"title": "T", "type": "string", "pattern": "(["}, "is no regular expression"),
        ({"title": "T", "type": "integer", "minimum": 5, "maximum": 1}, "'minimum' (5) is greater than 'maximum' (1)"),
        ({"title": "T", "type": "string", "minLength": -1}, "'minLength' must be an integer of 0 or more"),
        ({"title": "T", "type": "integer", "enum": [1, "two"]}, "enum value 'two' is not of type integer"),
        ({"title": "T", "type": "string", "enum": ["a"], "default": "b"}, "default 'b' is not one of the enum"),
        ({"title": "T", "type": "integer", "maximum": 4, "default": 8}, "default 8 is greater than the maximum 4"),
        ({"title": "T", "type": "array", "items": {"type": "float"}}, "items type 'float' is not one of"),
    ],
)
def test_a_property_definition_that_cannot_hold_is_refused_by_name(definition, problem):
    with pytest.raises(Invalid) as refused:
        check_property_definition("hw_thing", definition)
    assert "Property 'hw_thing'" in str(refused.value) and problem in str(refused.value)


def test_a_property_definition_keeps_what_glance_keeps():
    kept = check_property_definition(
        "p", {"title": "T", "type": "array", "items": {"type": "string", "enum": ["a"], "x": 1}, "unknown": 1}
    )
    assert kept == {"title": "T", "type": "array", "items": {"type": "string", "enum": ["a"]}}


def test_bulk_tags_replace_or_append(metadefs):
    metadefs.create_namespace(namespace(tags=[MetadefTag("old")]), ADMIN)
    names = lambda: sorted(t.name for t in metadefs.get_namespace("T::Ns", ADMIN).tags)  # noqa: E731
    assert [t.name for t in metadefs.create_tags("T::Ns", ["a", "b"], False, ADMIN)] == ["a", "b"]
    assert names() == ["a", "b"]
    metadefs.create_tags("T::Ns", ["c"], True, ADMIN)
    assert names() == ["a", "b", "c"]
    with pytest.raises(Conflict, match="name=c already exists"):  # appending one it has
        metadefs.create_tags("T::Ns", ["d", "c"], True, ADMIN)
    with pytest.raises(Conflict, match="name=e already exists"):  # twice in the list
        metadefs.create_tags("T::Ns", ["e", "e"], False, ADMIN)
    assert metadefs.create_tags("T::Ns", [], False, ADMIN) == []  # an empty list changes nothing
    assert names() == ["a", "b", "c"]


def test_children_lists_page_by_name_marker(metadefs):
    metadefs.create_namespace(namespace(tags=[MetadefTag(n) for n in "dcab"]), ADMIN)
    page = metadefs.list_tags("T::Ns", ListPage(sort_key="name", sort_dir="asc", limit=2), ADMIN)
    assert [t.name for t in page] == ["a", "b"]
    page = metadefs.list_tags("T::Ns", ListPage(sort_key="name", sort_dir="asc", marker="b"), ADMIN)
    assert [t.name for t in page] == ["c", "d"]
    with pytest.raises(MetadefNotFound, match="tag with name=zz was not found"):
        metadefs.list_tags("T::Ns", ListPage(marker="zz"), ADMIN)


def test_property_read_with_a_resource_type_prefix(metadefs):
    metadefs.create_namespace(
        namespace(
            properties={"watchdog_action": dict(WATCHDOG)}, associations=[Association("OS::Nova::Flavor", "hw:")]
        ),
        ADMIN,
    )
    found = metadefs.get_property("T::Ns", "hw:watchdog_action", ADMIN, "OS::Nova::Flavor")
    assert found == PropertyDefinition("watchdog_action", WATCHDOG)
    with pytest.raises(MetadefNotFound, match="does not start with the expected resource type association prefix"):
        metadefs.get_property("T::Ns", "hw_watchdog_action", ADMIN, "OS::Nova::Flavor")
    with pytest.raises(MetadefNotFound, match="resource-type=OS::Glance::Image to namespace=T::Ns"):
        metadefs.get_property("T::Ns", "hw_watchdog_action", ADMIN, "OS::Glance::Image")


def test_concurrent_writers_keep_each_others_changes(metadefs):
    metadefs.create_namespace(namespace(), ADMIN)
    errors = []

    def add(i):
        try:
            metadefs.create_tag("T::Ns", f"tag{i}", ADMIN)
            metadefs.create_object("T::Ns", MetadefObject(f"object{i}"), ADMIN)
        except Exception as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ns = metadefs.get_namespace("T::Ns", ADMIN)
    assert sorted(t.name for t in ns.tags) == [f"tag{i}" for i in range(6)]
    assert sorted(o.name for o in ns.objects) == [f"object{i}" for i in range(6)]


def test_a_policy_file_opens_metadef_writes_to_project_members(metadefs, tmp_path):
    with pytest.raises(Forbidden, match="add_metadef_namespace"):
        metadefs.create_namespace(namespace("T::Members"), OWNER)
    (tmp_path / "policy.yaml").write_text('"metadef_admin": "role:admin or role:member"\n')
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    Policy(conf)  # registers the [oslo_policy] options
    conf.set_override("policy_file", str(tmp_path / "policy.yaml"), group="oslo_policy")
    metadefs.policy = Policy(conf)
    created = metadefs.create_namespace(namespace("T::Members"), OWNER)
    assert created.owner == "p1"
    metadefs.create_tag("T::Members", "t", OWNER)
    with pytest.raises(Forbidden, match="add_metadef_tag"):  # readers still read only
        metadefs.create_tag("T::Members", "u", READER)
