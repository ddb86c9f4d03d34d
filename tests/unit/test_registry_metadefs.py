"""The registry's metadata definitions (``create_namespace``, ``get_namespace``,
``list_namespaces``, ``save_namespace``, ``update_namespace``, ``delete_namespace``,
``list_resource_types``, ``delete_resource_type``) on SQLite, MariaDB and PostgreSQL.

Every test but those under "SQL only" (SQL_ONLY_TESTS) takes the registry from the
``metadef_registry`` fixture, so test_registry_http.py can run them again through the http
registry with the fixtures of SHARED_FIXTURES (its ``sql_registry`` is the client, and the
server runs in the test's process: the tests that set the SQL registry's clock work too)."""

from __future__ import annotations

import datetime
import json
import threading

import pytest
from sqlalchemy import delete, event, func, select

from abbild.db.models import (
    MetadefAssociationRow,
    MetadefNamespaceRow,
    MetadefObjectRow,
    MetadefPropertyRow,
    MetadefResourceTypeRow,
    MetadefTagRow,
)
from abbild.errors import ConcurrentUpdate, Conflict, Forbidden, Invalid, MetadefNotFound
from abbild.image import utcnow
from abbild.metadefs import (
    CORE_RESOURCE_TYPES,
    NAMESPACE_SORT_KEYS,
    Association,
    MetadefObject,
    MetadefTag,
    Namespace,
    NamespaceFilters,
    namespace_visible,
)
from abbild.registry import Viewer

SECOND = datetime.timedelta(seconds=1)


SHARED_FIXTURES = ("metadef_registry", "scoped_namespaces", "many_namespaces")


@pytest.fixture
def metadef_registry(sql_registry):
    """The registry under test, as freshly migrated (the core resource types only): the
    SQL registry here; test_registry_http.py may give the http one."""
    return sql_registry


def watchdog(name: str = "OS::Compute::Watchdog", **fields) -> Namespace:
    values = dict(
        namespace=name,
        display_name="Watchdog Behavior",
        description="The watchdog device of a guest.",
        visibility="public",
        protected=True,
        owner="admin-project",
        properties={
            "hw_watchdog_action": {
                "title": "Watchdog Action",
                "type": "string",
                "enum": ["disabled", "reset", "poweroff", "pause", "none"],
            }
        },
        objects=[
            MetadefObject(
                name="Limits",
                description="CPU limits",
                required=["cpu_shares"],
                properties={"cpu_shares": {"title": "Shares", "type": "integer", "minimum": 0}},
            )
        ],
        tags=[MetadefTag("watchdog"), MetadefTag("device")],
        associations=[
            Association("OS::Nova::Flavor", prefix="hw:"),
            Association("OS::Glance::Image", prefix="hw_"),
            Association("OS::Cinder::Volume", prefix="hw_", properties_target="image"),
        ],
    )
    values.update(fields)
    return Namespace(**values)


def frozen(when: datetime.datetime):
    return lambda: when


def names(namespaces) -> list[str]:
    return [n.namespace for n in namespaces]


# -- create and get ----------------------------------------------------------------------


def test_a_namespace_reads_back_whole_as_created(metadef_registry):
    before = utcnow()
    created = metadef_registry.create_namespace(watchdog())
    assert created.version == 1
    assert before <= created.created_at == created.updated_at <= utcnow()
    assert created.created_at.tzinfo is None and created.created_at.microsecond == 0
    # Children in name order, each stamped with the namespace's time.
    assert [o.name for o in created.objects] == ["Limits"]
    assert [t.name for t in created.tags] == ["device", "watchdog"]
    assert [a.name for a in created.associations] == ["OS::Cinder::Volume", "OS::Glance::Image", "OS::Nova::Flavor"]
    for child in (*created.objects, *created.tags, *created.associations):
        assert child.created_at == child.updated_at == created.created_at
    read = metadef_registry.get_namespace("OS::Compute::Watchdog")
    assert read == created
    assert read.association("OS::Cinder::Volume").properties_target == "image"
    assert read.object("Limits").properties["cpu_shares"]["minimum"] == 0
    assert read.properties["hw_watchdog_action"]["enum"][-1] == "none"


def test_a_bare_namespace(metadef_registry):
    created = metadef_registry.create_namespace(Namespace("bare"))
    read = metadef_registry.get_namespace("bare")
    assert read == created
    assert (read.display_name, read.description, read.owner, read.visibility, read.protected) == (
        None,
        None,
        None,
        "private",
        False,
    )
    assert read.properties == {} and read.objects == read.tags == read.associations == []


def test_create_does_not_change_its_argument(metadef_registry):
    namespace = watchdog()
    metadef_registry.create_namespace(namespace)
    assert namespace == watchdog()


def test_a_taken_name_is_a_conflict(metadef_registry):
    metadef_registry.create_namespace(watchdog())
    with pytest.raises(Conflict, match="namespace=OS::Compute::Watchdog already exists"):
        metadef_registry.create_namespace(watchdog(visibility="private"))


def test_unknown_namespace_is_not_found(metadef_registry):
    with pytest.raises(MetadefNotFound) as caught:
        metadef_registry.get_namespace("nope")
    assert str(caught.value) == "Metadata definition namespace=nope was not found."


def test_names_are_case_sensitive(metadef_registry):
    """ "A" and "a" are two namespaces (MariaDB would compare them equal by default), as
    are two tags or objects of one namespace."""
    upper = metadef_registry.create_namespace(Namespace("A", tags=[MetadefTag("T"), MetadefTag("t")]))
    lower = metadef_registry.create_namespace(Namespace("a", description="lower"))
    assert metadef_registry.get_namespace("A") == upper
    assert metadef_registry.get_namespace("a") == lower
    assert [t.name for t in upper.tags] == ["T", "t"]
    with pytest.raises(MetadefNotFound):
        metadef_registry.get_namespace("\N{LATIN CAPITAL LETTER A WITH GRAVE}")


def test_lookups_are_exact(metadef_registry):
    """A name with a trailing space finds nothing (MariaDB's = would find "a" for "a ")."""
    metadef_registry.create_namespace(Namespace("a", associations=[Association("OS::Trove::Instance")]))
    metadef_registry.create_namespace(Namespace("b"))
    for lookup in (
        metadef_registry.get_namespace,
        metadef_registry.delete_namespace,
        lambda name: metadef_registry.update_namespace(name, lambda ns: None),
        lambda name: metadef_registry.save_namespace(name, Namespace("a", version=1)),
    ):
        with pytest.raises(MetadefNotFound):
            lookup("a ")
    with pytest.raises(MetadefNotFound):
        metadef_registry.delete_resource_type("OS::Glance::Image ")
    with pytest.raises(Invalid):
        metadef_registry.list_namespaces(NamespaceFilters(), "namespace", "asc", marker="a ")
    assert names(metadef_registry.list_namespaces(NamespaceFilters(), "namespace", "asc", marker="a")) == ["b"]


def test_unicode_names_and_documents(metadef_registry):
    name = "Bildverarbeitung::Größe-\N{SNOWMAN}-\N{GRINNING FACE}"
    created = metadef_registry.create_namespace(
        Namespace(
            name,
            display_name="Größe \N{GRINNING FACE}",
            description="ünïcødé " * 50,
            properties={"größe": {"title": "Größe", "type": "string", "enum": ["klein", "groß", "\N{SNOWMAN}"]}},
            objects=[MetadefObject("Objekt \N{SNOWMAN}", description="\N{GRINNING FACE}" * 1000)],
            tags=[MetadefTag("étiquette"), MetadefTag("\N{GRINNING FACE}")],
            associations=[Association("OS::Ünïcødé::Typ", prefix="größe_")],
        )
    )
    assert metadef_registry.get_namespace(name) == created
    assert "OS::Ünïcødé::Typ" in [t.name for t in metadef_registry.list_resource_types()]


# -- values the tables cannot hold ----------------------------------------------------------

TOO_LONG = {
    "namespace": dict(namespace="n" * 81),
    "display_name": dict(display_name="d" * 81),
    "description": dict(description="d" * 501),
    "owner": dict(owner="o" * 256),
    "visibility": dict(visibility="shared"),
    "empty name": dict(namespace=""),
    "property name": dict(properties={"p" * 81: {"type": "string"}}),
    "property definition": dict(properties={"p": "not a document"}),
    "huge property": dict(properties={"p": {"type": "string", "description": "x" * 70000}}),
    "object name": dict(objects=[MetadefObject("o" * 81)]),
    "huge object": dict(objects=[MetadefObject("o", description="\N{GRINNING FACE}" * 20000)]),
    "tag name": dict(tags=[MetadefTag("t" * 81)]),
    "empty tag": dict(tags=[MetadefTag("")]),
    "resource type name": dict(associations=[Association("r" * 81)]),
    "prefix": dict(associations=[Association("OS::Nova::Flavor", prefix="p" * 81)]),
    "properties_target": dict(associations=[Association("OS::Nova::Flavor", properties_target="t" * 81)]),
    "two objects of one name": dict(objects=[MetadefObject("o"), MetadefObject("o", description="again")]),
    "two tags of one name": dict(tags=[MetadefTag("t"), MetadefTag("t")]),
    "two associations with one type": dict(associations=[Association("X"), Association("X", prefix="x_")]),
    "NUL": dict(display_name="a\x00b"),
    # MariaDB compares "t" and "t " equal: a trailing space would make two names one there.
    "name ending in a space": dict(namespace="trailing "),
    "tag ending in a space": dict(tags=[MetadefTag("t"), MetadefTag("t ")]),
    "object ending in a space": dict(objects=[MetadefObject("o ")]),
    "property ending in a space": dict(properties={"p ": {"type": "string"}}),
    "resource type ending in a space": dict(associations=[Association("OS::Glance::Image ")]),
}


@pytest.mark.parametrize("fields", TOO_LONG.values(), ids=TOO_LONG.keys())
def test_values_the_tables_cannot_hold_are_invalid(metadef_registry, fields):
    with pytest.raises(Invalid):
        metadef_registry.create_namespace(watchdog(**fields))
    namespace = metadef_registry.create_namespace(watchdog("ok"))
    with pytest.raises(Invalid):
        metadef_registry.save_namespace("ok", watchdog(**{"namespace": "ok", **fields}, version=namespace.version))
    assert metadef_registry.get_namespace("ok") == namespace


def test_the_longest_values_fit(metadef_registry):
    longest = Namespace(
        "n" * 80,
        display_name="\N{GRINNING FACE}" * 80,
        description="\N{GRINNING FACE}" * 500,
        owner="o" * 255,
        properties={"p" * 80: {"type": "string", "description": "\N{GRINNING FACE}" * 16000}},
        objects=[MetadefObject("o" * 80, description="d" * 65535)],
        tags=[MetadefTag("t" * 80)],
        associations=[Association("r" * 80, prefix="p" * 80, properties_target="t" * 80)],
    )
    created = metadef_registry.create_namespace(longest)
    assert metadef_registry.get_namespace("n" * 80) == created


# -- save: compare-and-swap, children's times, renames ----------------------------------------


def test_save_is_a_compare_and_swap(metadef_registry):
    created = metadef_registry.create_namespace(watchdog())
    first = watchdog(display_name="first", version=created.version)
    second = watchdog(display_name="second", version=created.version)
    saved = metadef_registry.save_namespace(created.namespace, first)
    assert saved.version == 2
    with pytest.raises(ConcurrentUpdate):
        metadef_registry.save_namespace(created.namespace, second)
    assert metadef_registry.get_namespace(created.namespace) == saved
    assert saved.display_name == "first"


def test_save_of_an_unknown_namespace_is_not_found(metadef_registry):
    with pytest.raises(MetadefNotFound, match="namespace=ghost was not found"):
        metadef_registry.save_namespace("ghost", Namespace("ghost", version=1))


def test_save_reads_back(metadef_registry):
    created = metadef_registry.create_namespace(watchdog())
    changed = metadef_registry.get_namespace(created.namespace)
    changed.properties["hw_watchdog_action"]["enum"].append("dump")
    changed.properties["new"] = {"title": "New", "type": "boolean"}
    changed.objects.append(MetadefObject("Another", required=[], properties={}))
    changed.tags = [t for t in changed.tags if t.name != "device"]
    changed.associations = [a for a in changed.associations if a.name != "OS::Nova::Flavor"]
    saved = metadef_registry.save_namespace(created.namespace, changed)
    assert saved.version == 2
    assert metadef_registry.get_namespace(created.namespace) == saved
    assert saved.properties["hw_watchdog_action"]["enum"][-1] == "dump"
    assert [o.name for o in saved.objects] == ["Another", "Limits"]
    assert [t.name for t in saved.tags] == ["watchdog"]
    assert [a.name for a in saved.associations] == ["OS::Cinder::Volume", "OS::Glance::Image"]


def test_children_times(metadef_registry, monkeypatch):
    """A new child gets created_at and updated_at now, a changed one updated_at now, an
    unchanged one keeps both; the namespace's updated_at moves only when its own fields
    change; a renamed child (a new name carrying its old created_at) keeps that."""
    import abbild.db.registry as sql

    clock = [datetime.datetime(2026, 1, 1, 12, 0, 0)]
    monkeypatch.setattr(sql, "utcnow", lambda: clock[0])
    created = metadef_registry.create_namespace(watchdog())
    t0 = clock[0]
    assert created.created_at == created.updated_at == t0

    clock[0] = t1 = t0 + 10 * SECOND
    change = metadef_registry.get_namespace(created.namespace)
    change.object("Limits").description = "changed"
    change.tags = [MetadefTag("renamed", created_at=change.tag("device").created_at), change.tag("watchdog")]
    change.tags.append(MetadefTag("new", created_at=None))
    change.association("OS::Nova::Flavor").prefix = "hw2:"
    saved = metadef_registry.save_namespace(created.namespace, change)
    assert (saved.created_at, saved.updated_at) == (t0, t0)  # own fields unchanged
    assert (saved.object("Limits").created_at, saved.object("Limits").updated_at) == (t0, t1)
    assert (saved.tag("watchdog").created_at, saved.tag("watchdog").updated_at) == (t0, t0)
    assert (saved.tag("renamed").created_at, saved.tag("renamed").updated_at) == (t0, t1)
    assert (saved.tag("new").created_at, saved.tag("new").updated_at) == (t1, t1)
    assert (saved.association("OS::Nova::Flavor").created_at, saved.association("OS::Nova::Flavor").updated_at) == (
        t0,
        t1,
    )
    assert saved.association("OS::Glance::Image").updated_at == t0
    assert metadef_registry.get_namespace(created.namespace) == saved

    clock[0] = t2 = t1 + 10 * SECOND
    change = metadef_registry.get_namespace(created.namespace)
    change.visibility = "private"
    saved = metadef_registry.save_namespace(created.namespace, change)
    assert (saved.created_at, saved.updated_at) == (t0, t2)
    assert saved.tag("new").updated_at == t1
    assert metadef_registry.get_namespace(created.namespace) == saved


def test_a_stored_child_keeps_its_created_at(metadef_registry):
    """A child matched by name to a stored one keeps the stored created_at, whatever it carries."""
    created = metadef_registry.create_namespace(watchdog())
    change = metadef_registry.get_namespace(created.namespace)
    change.tag("watchdog").created_at = datetime.datetime(2000, 1, 1)
    saved = metadef_registry.save_namespace(created.namespace, change)
    assert saved.tag("watchdog").created_at == created.tag("watchdog").created_at


def test_rename(metadef_registry):
    created = metadef_registry.create_namespace(watchdog())
    renamed = metadef_registry.get_namespace(created.namespace)
    renamed.namespace = "OS::Compute::Renamed"
    saved = metadef_registry.save_namespace(created.namespace, renamed)
    assert saved.namespace == "OS::Compute::Renamed"
    with pytest.raises(MetadefNotFound):
        metadef_registry.get_namespace(created.namespace)
    read = metadef_registry.get_namespace("OS::Compute::Renamed")
    assert read == saved
    assert read.properties == created.properties and read.tags == created.tags and read.objects == created.objects
    # The old name is free again.
    assert metadef_registry.create_namespace(Namespace(created.namespace)).version == 1


def test_rename_to_a_taken_name_is_a_conflict(metadef_registry):
    metadef_registry.create_namespace(watchdog("first"))
    second = metadef_registry.create_namespace(watchdog("second"))
    with pytest.raises(Conflict, match="namespace=first already exists"):
        metadef_registry.save_namespace("second", watchdog("first", version=second.version))
    assert metadef_registry.get_namespace("second") == second


def test_rename_to_another_case_is_no_conflict(metadef_registry):
    created = metadef_registry.create_namespace(Namespace("name"))
    metadef_registry.create_namespace(Namespace("Other"))
    saved = metadef_registry.save_namespace("name", Namespace("NAME", version=created.version))
    assert metadef_registry.get_namespace("NAME") == saved


def test_update_namespace_applies_its_change(metadef_registry):
    metadef_registry.create_namespace(watchdog())
    updated = metadef_registry.update_namespace("OS::Compute::Watchdog", lambda ns: ns.tags.append(MetadefTag("added")))
    assert updated.version == 2
    assert "added" in [t.name for t in metadef_registry.get_namespace("OS::Compute::Watchdog").tags]


def test_update_namespace_of_an_unknown_namespace_is_not_found(metadef_registry):
    with pytest.raises(MetadefNotFound, match="namespace=ghost was not found"):
        metadef_registry.update_namespace("ghost", lambda ns: None)


def test_a_failing_change_stores_nothing(metadef_registry):
    created = metadef_registry.create_namespace(watchdog())

    def change(ns):
        ns.tags.clear()
        raise ValueError("no")

    with pytest.raises(ValueError):
        metadef_registry.update_namespace(created.namespace, change)
    with pytest.raises(Invalid):
        metadef_registry.update_namespace(created.namespace, lambda ns: ns.tags.append(MetadefTag("t" * 81)))
    assert metadef_registry.get_namespace(created.namespace) == created


def test_update_namespace_renames(metadef_registry):
    metadef_registry.create_namespace(watchdog("old"))
    metadef_registry.create_namespace(watchdog("taken"))
    with pytest.raises(Conflict):
        metadef_registry.update_namespace("old", lambda ns: setattr(ns, "namespace", "taken"))
    renamed = metadef_registry.update_namespace("old", lambda ns: setattr(ns, "namespace", "new"))
    assert metadef_registry.get_namespace("new") == renamed
    with pytest.raises(MetadefNotFound):
        metadef_registry.get_namespace("old")


def test_two_writers_one_wins(metadef_registry):
    """Two saves of one version at the same time: one is stored, the other is told."""
    created = metadef_registry.create_namespace(watchdog())
    barrier = threading.Barrier(2)
    outcomes = {}

    def write(label):
        change = watchdog(display_name=label, version=created.version)
        barrier.wait()
        try:
            outcomes[label] = metadef_registry.save_namespace(created.namespace, change)
        except ConcurrentUpdate as exc:
            outcomes[label] = exc

    threads = [threading.Thread(target=write, args=(label,)) for label in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [label for label, outcome in outcomes.items() if isinstance(outcome, Namespace)]
    lost = [label for label, outcome in outcomes.items() if isinstance(outcome, ConcurrentUpdate)]
    assert len(won) == len(lost) == 1
    stored = metadef_registry.get_namespace(created.namespace)
    assert stored.display_name == won[0] and stored.version == 2


def test_concurrent_update_namespace_applies_both(metadef_registry):
    metadef_registry.create_namespace(Namespace("busy"))
    barrier = threading.Barrier(4)
    errors = []

    def add(tag):
        barrier.wait()
        try:
            for i in range(3):
                metadef_registry.update_namespace("busy", lambda ns, i=i: ns.tags.append(MetadefTag(f"{tag}-{i}")))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = metadef_registry.get_namespace("busy")
    assert sorted(t.name for t in stored.tags) == sorted(f"t{n}-{i}" for n in range(4) for i in range(3))
    assert stored.version == 13


def test_concurrent_creates_of_one_name(metadef_registry):
    """The unique key decides: one create wins, the others are conflicts."""
    barrier = threading.Barrier(4)
    outcomes = []

    def create(n):
        barrier.wait()
        try:
            outcomes.append(metadef_registry.create_namespace(Namespace("race", description=str(n))))
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Conflict", "Conflict", "Namespace"]


def test_concurrent_renames_to_one_name(metadef_registry):
    sources = [metadef_registry.create_namespace(Namespace(f"source-{n}")) for n in range(3)]
    barrier = threading.Barrier(3)
    outcomes = []

    def rename(source):
        barrier.wait()
        try:
            outcomes.append(metadef_registry.save_namespace(source.namespace, Namespace("target", version=1)))
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=rename, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "Conflict", "Namespace"]
    listed = names(metadef_registry.list_namespaces(NamespaceFilters(), "namespace", "asc"))
    assert "target" in listed and len(listed) == 3


def test_concurrent_creates_make_a_new_resource_type_once(metadef_registry):
    barrier = threading.Barrier(4)
    errors = []

    def create(n):
        barrier.wait()
        try:
            metadef_registry.create_namespace(Namespace(f"ns-{n}", associations=[Association("OS::New::Type")]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [t.name for t in metadef_registry.list_resource_types()].count("OS::New::Type") == 1
    listed = metadef_registry.list_namespaces(NamespaceFilters(resource_types=("OS::New::Type",)))
    assert len(listed) == 4


# -- delete --------------------------------------------------------------------------------


def test_delete_takes_everything_in_it(metadef_registry):
    metadef_registry.create_namespace(watchdog())
    metadef_registry.delete_namespace("OS::Compute::Watchdog")
    with pytest.raises(MetadefNotFound):
        metadef_registry.get_namespace("OS::Compute::Watchdog")
    # A new namespace of the same name starts empty: nothing of the old one is left.
    again = metadef_registry.create_namespace(Namespace("OS::Compute::Watchdog"))
    assert metadef_registry.get_namespace("OS::Compute::Watchdog") == again
    assert again.properties == {} and again.objects == again.tags == again.associations == []
    # The resource types stay, and are free to go.
    types = {t.name for t in metadef_registry.list_resource_types()}
    assert set(CORE_RESOURCE_TYPES) <= types


def test_delete_of_an_unknown_namespace_is_not_found(metadef_registry):
    with pytest.raises(MetadefNotFound, match="namespace=ghost was not found"):
        metadef_registry.delete_namespace("ghost")


# -- resource types ------------------------------------------------------------------------


def test_core_resource_types_are_there_and_protected(metadef_registry):
    types = metadef_registry.list_resource_types()
    assert [t.name for t in types] == sorted(t.name for t in types)
    core = {t.name: t for t in types if t.name in CORE_RESOURCE_TYPES}
    assert set(core) == set(CORE_RESOURCE_TYPES)
    assert all(t.protected and t.created_at is not None for t in core.values())


def test_associations_make_missing_resource_types(metadef_registry):
    before = utcnow()
    metadef_registry.create_namespace(Namespace("a", associations=[Association("OS::Trove::Instance")]))
    created = {t.name: t for t in metadef_registry.list_resource_types()}["OS::Trove::Instance"]
    assert not created.protected and before <= created.created_at == created.updated_at <= utcnow()
    metadef_registry.update_namespace("a", lambda ns: ns.associations.append(Association("OS::Heat::Stack")))
    assert "OS::Heat::Stack" in {t.name for t in metadef_registry.list_resource_types()}


def test_delete_resource_type_rules(metadef_registry):
    metadef_registry.create_namespace(Namespace("a", associations=[Association("OS::Trove::Instance")]))
    with pytest.raises(Forbidden, match="OS::Glance::Image is a seeded-system type"):
        metadef_registry.delete_resource_type("OS::Glance::Image")
    with pytest.raises(Conflict, match="OS::Trove::Instance"):
        metadef_registry.delete_resource_type("OS::Trove::Instance")
    with pytest.raises(MetadefNotFound, match="resource-type with name=OS::None, was not found"):
        metadef_registry.delete_resource_type("OS::None")
    # Once no association names it, it goes; the namespace stays.
    metadef_registry.update_namespace("a", lambda ns: ns.associations.clear())
    metadef_registry.delete_resource_type("OS::Trove::Instance")
    assert "OS::Trove::Instance" not in {t.name for t in metadef_registry.list_resource_types()}
    assert metadef_registry.get_namespace("a").associations == []
    # Deleting a namespace frees its resource types too.
    metadef_registry.create_namespace(Namespace("b", associations=[Association("OS::Gone::Soon")]))
    metadef_registry.delete_namespace("b")
    metadef_registry.delete_resource_type("OS::Gone::Soon")
    assert {t.name for t in metadef_registry.list_resource_types()} == set(CORE_RESOURCE_TYPES)


def test_resource_type_names_are_case_sensitive(metadef_registry):
    metadef_registry.create_namespace(Namespace("a", associations=[Association("os::glance::image")]))
    types = {t.name: t for t in metadef_registry.list_resource_types()}
    assert not types["os::glance::image"].protected and types["OS::Glance::Image"].protected
    listed = metadef_registry.list_namespaces(NamespaceFilters(resource_types=("OS::Glance::Image",)))
    assert listed == []


# -- list: visibility, filters, sorting, paging ---------------------------------------------

ME = "me"
SCOPED = {
    "public mine": ("public", ME),
    "public other": ("public", "other"),
    "public nobody": ("public", None),
    "private mine": ("private", ME),
    "private other": ("private", "other"),
    "private nobody": ("private", None),
}


@pytest.fixture
def scoped_namespaces(metadef_registry):
    for name, (visibility, owner) in SCOPED.items():
        metadef_registry.create_namespace(Namespace(name, visibility=visibility, owner=owner))
    return metadef_registry


VIEWERS = {
    "me": Viewer(ME),
    "other": Viewer("other"),
    "stranger": Viewer("stranger"),
    "no project": Viewer(None),
    "anonymous": Viewer(anonymous=True),
    "admin": Viewer(is_admin=True),
    "admin of a project": Viewer("stranger", is_admin=True),
    "the service": None,
}


@pytest.mark.parametrize("viewer", VIEWERS.values(), ids=VIEWERS.keys())
def test_the_list_query_and_the_visibility_rule_agree(scoped_namespaces, viewer):
    """The SQL list says what namespace_visible says, for every kind of namespace and viewer."""
    every = scoped_namespaces.list_namespaces(NamespaceFilters())
    assert len(every) == len(SCOPED)
    expected = {n.namespace for n in every if namespace_visible(n, viewer)}
    assert set(names(scoped_namespaces.list_namespaces(NamespaceFilters(), viewer=viewer))) == expected


VISIBILITY_CASES = {
    "mine": (Viewer(ME), None, {"public mine", "public other", "public nobody", "private mine", "private nobody"}),
    "mine, private": (Viewer(ME), "private", {"private mine", "private nobody"}),
    "mine, public": (Viewer(ME), "public", {"public mine", "public other", "public nobody"}),
    "stranger": (Viewer("stranger"), None, {"public mine", "public other", "public nobody", "private nobody"}),
    "no project, private": (Viewer(None), "private", {"private nobody"}),
    "admin, private": (Viewer(is_admin=True), "private", {"private mine", "private other", "private nobody"}),
}


@pytest.mark.parametrize("viewer,visibility,expected", VISIBILITY_CASES.values(), ids=VISIBILITY_CASES.keys())
def test_visibility_per_viewer(scoped_namespaces, viewer, visibility, expected):
    listed = scoped_namespaces.list_namespaces(NamespaceFilters(visibility=visibility), viewer=viewer)
    assert set(names(listed)) == expected


def test_resource_type_filter_is_any_of(metadef_registry):
    metadef_registry.create_namespace(Namespace("image", associations=[Association("OS::Glance::Image")]))
    metadef_registry.create_namespace(Namespace("flavor", associations=[Association("OS::Nova::Flavor")]))
    metadef_registry.create_namespace(
        Namespace("both", associations=[Association("OS::Glance::Image"), Association("OS::Nova::Flavor")])
    )
    metadef_registry.create_namespace(Namespace("none"))

    def listed(*types, visibility=None):
        filters = NamespaceFilters(visibility=visibility, resource_types=types)
        return set(names(metadef_registry.list_namespaces(filters)))

    assert listed("OS::Glance::Image") == {"image", "both"}
    assert listed("OS::Glance::Image", "OS::Nova::Flavor") == {"image", "flavor", "both"}
    assert listed("OS::Cinder::Volume") == set()
    assert listed("OS::Unknown") == set()
    assert listed() == {"image", "flavor", "both", "none"}
    # Each namespace once, however many of the types it has, and whole.
    both = metadef_registry.list_namespaces(NamespaceFilters(resource_types=("OS::Glance::Image", "OS::Nova::Flavor")))
    assert len(both) == 3
    assert {a.name for a in next(n for n in both if n.namespace == "both").associations} == {
        "OS::Glance::Image",
        "OS::Nova::Flavor",
    }


def test_filters_and_visibility_combine(scoped_namespaces):
    scoped_namespaces.update_namespace(
        "private other", lambda ns: ns.associations.append(Association("OS::Glance::Image"))
    )
    scoped_namespaces.update_namespace(
        "public other", lambda ns: ns.associations.append(Association("OS::Glance::Image"))
    )
    filters = NamespaceFilters(resource_types=("OS::Glance::Image",))
    assert names(scoped_namespaces.list_namespaces(filters, viewer=Viewer(ME))) == ["public other"]
    assert set(names(scoped_namespaces.list_namespaces(filters, viewer=Viewer("other")))) == {
        "public other",
        "private other",
    }


def test_list_returns_whole_namespaces(metadef_registry):
    first = metadef_registry.create_namespace(watchdog("first"))
    second = metadef_registry.create_namespace(watchdog("second", tags=[MetadefTag("only")], objects=[]))
    metadef_registry.create_namespace(Namespace("third"))
    listed = {n.namespace: n for n in metadef_registry.list_namespaces(NamespaceFilters())}
    assert listed["first"] == first and listed["second"] == second
    assert listed["third"].tags == []


@pytest.mark.parametrize(
    "arguments",
    [
        dict(sort_key="name"),
        dict(sort_key="id"),
        dict(sort_dir="up"),
        dict(limit=-1),
        dict(marker="ghost"),
    ],
    ids=["sort key name", "sort key id", "direction", "negative limit", "unknown marker"],
)
def test_invalid_list_arguments(metadef_registry, arguments):
    metadef_registry.create_namespace(Namespace("one"))
    with pytest.raises(Invalid):
        metadef_registry.list_namespaces(NamespaceFilters(), **arguments)


@pytest.mark.parametrize("marker", ["private other", "public mine"])
def test_a_marker_outside_the_list_is_invalid(scoped_namespaces, marker):
    """Only a namespace of this very list marks a page: an invisible one would tell its
    existence, one the filters leave out has no place in it."""
    with pytest.raises(Invalid, match="marker"):
        scoped_namespaces.list_namespaces(
            NamespaceFilters(visibility="private"), marker=marker, viewer=Viewer("stranger")
        )


def test_limit_zero_and_default_order(metadef_registry, monkeypatch):
    import abbild.db.registry as sql

    base = datetime.datetime(2026, 1, 1)
    for n, name in enumerate(["b", "a", "c"]):
        monkeypatch.setattr(sql, "utcnow", lambda n=n: base + n * SECOND)
        metadef_registry.create_namespace(Namespace(name))
    assert metadef_registry.list_namespaces(NamespaceFilters(), limit=0) == []
    # Newest first by default.
    assert names(metadef_registry.list_namespaces(NamespaceFilters())) == ["c", "a", "b"]


# Many namespaces with equal and missing sort values. Lowercase ASCII words sort alike in
# every collation (PostgreSQL may use a locale).
WORDS = [None, "alpha", "bravo", "charlie"]


@pytest.fixture
def many_namespaces(metadef_registry, monkeypatch):
    """23 namespaces with ties on every sort key (times in a few distinct seconds)."""
    import random

    import abbild.db.registry as sql

    rnd = random.Random(23)
    base = datetime.datetime(2026, 1, 1)
    for n in range(23):
        name = f"ns-{n:02d}-{rnd.choice('xyz')}"
        monkeypatch.setattr(sql, "utcnow", frozen(base + rnd.randrange(4) * SECOND))
        metadef_registry.create_namespace(
            Namespace(
                name,
                display_name=rnd.choice(WORDS),
                owner=rnd.choice(WORDS),
                visibility=rnd.choice(["public", "private"]),
                protected=rnd.choice([True, False]),
            )
        )
        if n % 3 == 0:  # updated later than created
            monkeypatch.setattr(sql, "utcnow", frozen(base + rnd.randrange(4, 8) * SECOND))
            metadef_registry.update_namespace(name, lambda ns: setattr(ns, "description", "changed"))
    monkeypatch.undo()
    return metadef_registry


def expected_order(namespaces, key, direction):
    """The order the list promises: *key* (NULL smallest), then the name, both in *direction*."""

    def sort_value(ns):
        value = getattr(ns, key)
        return (value is not None, value if value is not None else 0, ns.namespace)

    return names(sorted(namespaces, key=sort_value, reverse=direction == "desc"))


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("key", NAMESPACE_SORT_KEYS)
def test_paging_with_markers(many_namespaces, key, direction):
    every = many_namespaces.list_namespaces(NamespaceFilters(), key, direction)
    assert names(every) == expected_order(every, key, direction)
    for page_size in (1, 4, 7):
        pages, marker = [], None
        while True:
            page = many_namespaces.list_namespaces(NamespaceFilters(), key, direction, limit=page_size, marker=marker)
            if not page:
                break
            assert len(page) <= page_size
            pages.extend(page)
            marker = page[-1].namespace
        assert names(pages) == names(every), page_size


def test_paging_with_filters_and_viewer(many_namespaces):
    filters = NamespaceFilters(visibility="private")
    viewer = Viewer("alpha")
    every = many_namespaces.list_namespaces(filters, "display_name", "asc", viewer=viewer)
    assert every and all(n.visibility == "private" and n.owner in (None, "alpha") for n in every)
    paged, marker = [], None
    while page := many_namespaces.list_namespaces(filters, "display_name", "asc", 2, marker, viewer):
        paged.extend(page)
        marker = page[-1].namespace
    assert names(paged) == names(every)


def test_a_rename_moves_updated_at(metadef_registry, monkeypatch):
    import abbild.db.registry as sql

    t0 = datetime.datetime(2026, 1, 1)
    monkeypatch.setattr(sql, "utcnow", frozen(t0))
    created = metadef_registry.create_namespace(watchdog())
    monkeypatch.setattr(sql, "utcnow", frozen(t0 + SECOND))
    saved = metadef_registry.save_namespace(created.namespace, watchdog("renamed", version=created.version))
    assert (saved.created_at, saved.updated_at) == (t0, t0 + SECOND)
    # Its children are the same ones: their times stay.
    assert saved.tags == created.tags and saved.objects == created.objects
    assert metadef_registry.get_namespace("renamed") == saved


# -- SQL only: rows behind the registry's back ------------------------------------------------
#
# test_registry_http.py leaves these out (SQL_ONLY_TESTS): they look at the tables.

SQL_ONLY_TESTS = {
    "test_delete_leaves_no_rows",
    "test_the_database_cascades_too",
    "test_delete_cascades_without_foreign_keys",
    "test_a_page_is_read_with_one_query_per_table",
    "test_definitions_are_json_text",
    "test_update_namespace_change_must_not_write_through_the_registry",
}
CHILD_TABLES = (MetadefPropertyRow, MetadefObjectRow, MetadefTagRow, MetadefAssociationRow)


def row_counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            row.__tablename__: conn.scalar(select(func.count()).select_from(row))
            for row in (MetadefNamespaceRow, MetadefResourceTypeRow, *CHILD_TABLES)
        }


def test_delete_leaves_no_rows(sql_registry):
    kept = sql_registry.create_namespace(watchdog("kept"))
    before = row_counts(sql_registry.engine)
    sql_registry.create_namespace(watchdog("gone"))
    sql_registry.delete_namespace("gone")
    assert row_counts(sql_registry.engine) == before
    assert sql_registry.get_namespace("kept") == kept


def test_the_database_cascades_too(sql_registry):
    """The foreign keys cascade: a namespace row deleted by hand takes its children."""
    sql_registry.create_namespace(watchdog())
    with sql_registry.engine.begin() as conn:
        conn.execute(delete(MetadefNamespaceRow))
    counts = row_counts(sql_registry.engine)
    assert counts.pop("metadef_resource_types") == len(CORE_RESOURCE_TYPES)
    assert set(counts.values()) == {0}


def test_delete_cascades_without_foreign_keys(tmp_path):
    """On an SQLite database whose connections do not enforce foreign keys, the
    registry still removes every child of a namespace it deletes."""
    from abbild.db import migrate
    from abbild.db.registry import SQLRegistry

    registry = SQLRegistry(url=f"sqlite:///{tmp_path / 'nofk.db'}")
    try:
        migrate.sync(registry.engine)
        for engine in (registry.engine, registry.write_engine):  # reads and writes
            event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=OFF"))
            engine.dispose()
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        registry.create_namespace(watchdog())
        registry.delete_namespace("OS::Compute::Watchdog")
        counts = row_counts(registry.engine)
        assert counts.pop("metadef_resource_types") == len(CORE_RESOURCE_TYPES)
        assert set(counts.values()) == {0}
    finally:
        registry.close()


def test_a_page_is_read_with_one_query_per_table(sql_registry):
    """No query per namespace: a page of any size takes the marker's, the page's and one
    per kind of child."""
    for n in range(12):
        sql_registry.create_namespace(watchdog(f"ns-{n:02d}"))
    statements = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(sql_registry.engine, "before_cursor_execute", count)
    try:
        for limit in (2, 10):
            statements.clear()
            page = sql_registry.list_namespaces(NamespaceFilters(), "namespace", "asc", limit, "ns-00")
            assert len(page) == limit and all(len(n.tags) == 2 and len(n.associations) == 3 for n in page)
            assert len(statements) == 2 + len(CHILD_TABLES), statements
        statements.clear()
        sql_registry.get_namespace("ns-03")
        assert len(statements) == 1 + len(CHILD_TABLES)
    finally:
        event.remove(sql_registry.engine, "before_cursor_execute", count)


def test_definitions_are_json_text(sql_registry):
    sql_registry.create_namespace(watchdog())
    with sql_registry.engine.connect() as conn:
        definition = conn.scalar(select(MetadefPropertyRow.definition))
        obj = conn.execute(select(MetadefObjectRow.required, MetadefObjectRow.properties)).one()
    assert json.loads(definition) == watchdog().properties["hw_watchdog_action"]
    assert json.loads(obj.required) == ["cpu_shares"]
    assert json.loads(obj.properties) == watchdog().objects[0].properties


def test_update_namespace_change_must_not_write_through_the_registry(sql_registry):
    """The change runs with the namespace's row locked: a write from it would wait for
    that lock forever (on PostgreSQL), so it is refused."""
    sql_registry.create_namespace(Namespace("locked"))
    with pytest.raises(RuntimeError, match="update_namespace change .namespace locked. must not write"):
        sql_registry.update_namespace("locked", lambda ns: sql_registry.create_namespace(Namespace("other")))
    assert names(sql_registry.list_namespaces(NamespaceFilters())) == ["locked"]
