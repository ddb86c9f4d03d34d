"""validate_image_properties (abbild.metadef_validation): every rule of a property
definition against string values, the prefix of the OS::Glance::Image association,
objects' properties, which namespaces count for an image's owner, the lenient cases,
and the two call sites in the image service (create and update) with the option on
and off."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from abbild import metadef_validation
from abbild.errors import Forbidden, Invalid
from abbild.image import Image
from abbild.metadef_validation import Definition, check, image_definitions, rule_broken
from abbild.metadefs import (
    IMAGE_RESOURCE_TYPE,
    Association,
    MetadefObject,
    Namespace,
    NamespaceFilters,
    namespace_from_document,
    namespace_visible,
)
from abbild.protections import PropertyProtections
from abbild.registry import Viewer

ADMIN = Viewer(is_admin=True)


class Namespaces:
    """A registry's list_namespaces over a list, with the contract's visibility rule,
    resource-type filter, sort, limit and marker; it counts its calls."""

    def __init__(self, *namespaces: Namespace) -> None:
        self.namespaces = list(namespaces)
        self.calls: list[tuple] = []

    def list_namespaces(self, filters, sort_key="created_at", sort_dir="desc", limit=None, marker=None, viewer=None):
        self.calls.append((filters, sort_key, sort_dir, limit, marker, viewer))
        assert filters == NamespaceFilters(resource_types=(IMAGE_RESOURCE_TYPE,))
        assert (sort_key, sort_dir) == ("namespace", "asc")
        found = sorted(
            (
                n
                for n in self.namespaces
                if namespace_visible(n, viewer) and {a.name for a in n.associations} & set(filters.resource_types)
            ),
            key=lambda n: n.namespace,
        )
        if marker is not None:
            found = [n for n in found if n.namespace > marker]
        return found[:limit] if limit is not None else found


def _namespace(name="OS::Compute::CPUPinning", prefix="hw_", properties=None, **kw) -> Namespace:
    kw.setdefault("visibility", "public")
    kw.setdefault("associations", [Association(IMAGE_RESOURCE_TYPE, prefix=prefix)])
    return Namespace(namespace=name, properties=properties or {}, **kw)


CPU_POLICY = {"title": "CPU Pinning policy", "type": "string", "enum": ["shared", "dedicated"]}


# -- every rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, schema, broken",
    [
        # type
        ("4", {"type": "integer"}, None),
        ("-2", {"type": "integer"}, None),
        (" 4 ", {"type": "integer"}, None),
        ("4.0", {"type": "integer"}, "is not an integer"),
        ("four", {"type": "integer"}, "is not an integer"),
        ("", {"type": "integer"}, "is not an integer"),
        ("2.5", {"type": "number"}, None),
        ("1e3", {"type": "number"}, None),
        ("nan", {"type": "number"}, "is not a number"),
        ("1e999", {"type": "number"}, "is not a number"),
        ("true", {"type": "boolean"}, None),
        ("False", {"type": "boolean"}, None),
        ("yes", {"type": "boolean"}, None),  # oslo's bool_from_string words, as Nova reads them
        ("0", {"type": "boolean"}, None),
        ("maybe", {"type": "boolean"}, "is not a boolean (true or false)"),
        ("anything at all", {"type": "string"}, None),
        # enum
        ("dedicated", CPU_POLICY, None),
        ("fast", CPU_POLICY, "is not one of ['shared', 'dedicated']"),
        ("Dedicated", CPU_POLICY, "is not one of ['shared', 'dedicated']"),  # Nova's enums are case-sensitive
        ("2", {"type": "integer", "enum": [1, 2, 4]}, None),
        ("3", {"type": "integer", "enum": [1, 2, 4]}, "is not one of [1, 2, 4]"),
        ("2", {"type": "integer", "enum": ["1", "2"]}, None),
        ("1.5", {"type": "number", "enum": [1.5, 2]}, None),
        ("TRUE", {"type": "boolean", "enum": [True]}, None),
        ("no", {"type": "boolean", "enum": [True]}, "is not one of [True]"),
        ("off", {"type": "boolean", "enum": ["false"]}, None),
        # minimum / maximum
        ("1", {"type": "integer", "minimum": 1, "maximum": 8}, None),
        ("8", {"type": "integer", "minimum": 1, "maximum": 8}, None),
        ("0", {"type": "integer", "minimum": 1, "maximum": 8}, "is less than its minimum 1"),
        ("9", {"type": "integer", "minimum": 1, "maximum": 8}, "is greater than its maximum 8"),
        ("0.25", {"type": "number", "minimum": 0.5}, "is less than its minimum 0.5"),
        # minLength / maxLength / pattern
        ("ab", {"type": "string", "minLength": 3}, "is shorter than its minLength 3"),
        ("abcdefghi", {"type": "string", "maxLength": 8}, "is longer than its maxLength 8"),
        ("abc", {"type": "string", "minLength": 3, "maxLength": 3}, None),
        ("0-3,^2", {"type": "string", "pattern": "^[0-9,^-]+$"}, None),
        ("all", {"type": "string", "pattern": "^[0-9,^-]+$"}, "does not match its pattern '^[0-9,^-]+$'"),
        ("x-ubuntu-y", {"type": "string", "pattern": "ubuntu"}, None),  # JSON schema: a search, not a full match
        # arrays: Horizon's "<in> a,b", Nova's "<or> a <or> b", comma lists and JSON arrays
        ("<in> sse,avx", {"type": "array", "items": {"type": "string", "enum": ["sse", "avx"]}}, None),
        ("<or> sse <or> avx", {"type": "array", "items": {"enum": ["sse", "avx"]}}, None),
        ("sse, avx", {"type": "array", "items": {"enum": ["sse", "avx"]}}, None),
        ('["sse", "avx"]', {"type": "array", "items": {"enum": ["sse", "avx"]}}, None),
        (
            "<in> sse,mmx",
            {"type": "array", "items": {"enum": ["sse", "avx"]}},
            "has the item 'mmx', which is not one of ['sse', 'avx']",
        ),
        ("[1, 2]", {"type": "array", "items": {"type": "integer", "maximum": 1}}, "has the item '2', which is"),
        (
            "<all-in> sse",
            {"type": "array", "operators": ["<or>"]},
            "uses the operator '<all-in>', not one of its operators ['<or>']",
        ),
        ("<or> sse", {"type": "array", "operators": ["<or>"]}, None),
        ("a,b,c", {"type": "array", "maxItems": 2}, "has more items than its maxItems 2"),
        ("", {"type": "array", "minItems": 1}, "has fewer items than its minItems 1"),
        ("a,b,a", {"type": "array", "uniqueItems": True}, "repeats an item (uniqueItems)"),
        ("a,b,a", {"type": "array"}, None),
    ],
)
def test_each_rule(value, schema, broken):
    found = rule_broken(value, schema)
    if broken is None:
        assert found is None
    else:
        assert found is not None and found.startswith(broken), found


@pytest.mark.parametrize(
    "value, schema",
    [
        ("{not json", {"type": "object"}),  # nothing a string could be checked for
        ("x", {"type": "null"}),
        ("x", {"type": "no-such-type"}),
        ("x", {"type": "string", "pattern": "(?<=unclosed"}),  # a pattern Python cannot compile
        ("5", {"type": "integer", "minimum": "one", "maximum": None}),  # limits that are no numbers
        ("x", {"type": "string", "minLength": "three"}),
        ("x", {"type": "string", "enum": []}),
        ("x", {}),  # no type: a string, as Horizon takes it
        ("4", {"type": ["integer", "string"], "pattern": "^[a-z]+$"}),  # one of its types is enough
        ("abc", {"type": ["integer", "string"], "pattern": "^[a-z]+$"}),
    ],
)
def test_lenient_where_the_definition_says_nothing_checkable(value, schema):
    assert rule_broken(value, schema) is None


def test_a_type_list_reports_its_first_types_problem():
    assert rule_broken("1.5", {"type": ["integer", "boolean"]}) == "is not an integer"


def test_the_message_names_the_property_the_rule_and_the_namespace():
    definitions = image_definitions([_namespace(properties={"cpu_policy": CPU_POLICY})])
    with pytest.raises(Invalid) as caught:
        check({"hw_cpu_policy": "fast"}, definitions)
    assert str(caught.value) == (
        "Property hw_cpu_policy='fast' is not one of ['shared', 'dedicated'] (namespace OS::Compute::CPUPinning)."
    )


def test_a_long_value_is_shortened_in_the_message():
    definitions = {"p": [Definition("N", {"type": "integer"})]}
    with pytest.raises(Invalid) as caught:
        check({"p": "x" * 5000}, definitions)
    message = str(caught.value)
    assert len(message) < 150 and "xxx...' is not an integer (namespace N)." in message


def test_properties_nobody_defines_pass():
    check({"hw_cpu_policy": "anything", "owner_note": "free text"}, {})


# -- which definitions apply ----------------------------------------------------------------


def test_the_image_associations_prefix_makes_the_name():
    flavor_only = _namespace(
        "OS::Compute::Flavor",
        properties={"cpu_policy": CPU_POLICY},
        associations=[Association("OS::Nova::Flavor", prefix="hw:")],
    )
    both = _namespace(
        "OS::Compute::Watchdog",
        properties={"watchdog_action": {"type": "string", "enum": ["none", "reset"]}},
        associations=[Association("OS::Nova::Flavor", prefix="hw:"), Association(IMAGE_RESOURCE_TYPE, prefix="hw_")],
    )
    no_prefix = _namespace("OS::OperatingSystem", prefix=None, properties={"os_distro": {"type": "string"}})
    definitions = image_definitions([flavor_only, both, no_prefix])
    assert set(definitions) == {"hw_watchdog_action", "os_distro"}  # not hw:..., not the flavor-only one
    check({"watchdog_action": "explode", "hw:watchdog_action": "explode"}, definitions)  # other names: unchecked
    with pytest.raises(Invalid, match=r"hw_watchdog_action='explode' is not one of .*OS::Compute::Watchdog"):
        check({"hw_watchdog_action": "explode"}, definitions)


def test_the_properties_of_a_namespaces_objects_count_too():
    namespace = _namespace(
        "OS::Compute::CPUTopology",
        objects=[
            MetadefObject(
                "CPU Limits", properties={"cpu_max_sockets": {"type": "integer", "minimum": 1}}, required=["x"]
            )
        ],
    )
    definitions = image_definitions([namespace])
    check({"hw_cpu_max_sockets": "2"}, definitions)
    with pytest.raises(Invalid, match=r"hw_cpu_max_sockets='0' is less than its minimum 1 .namespace OS::Compute::CPU"):
        check({"hw_cpu_max_sockets": "0"}, definitions)


def test_a_value_one_of_several_definitions_accepts_passes():
    strict = _namespace("A::Strict", properties={"video_model": {"type": "string", "enum": ["virtio"]}})
    loose = _namespace("B::Loose", properties={"video_model": {"type": "string", "enum": ["virtio", "qxl"]}})
    definitions = image_definitions([strict, loose])
    check({"hw_video_model": "qxl"}, definitions)
    with pytest.raises(Invalid) as caught:
        check({"hw_video_model": "cirrus"}, definitions)
    assert str(caught.value) == (
        "Property hw_video_model='cirrus' is not one of ['virtio'] (namespace A::Strict). "
        "Property hw_video_model='cirrus' is not one of ['virtio', 'qxl'] (namespace B::Loose)."
    )


def test_the_namespaces_the_owner_sees_count():
    rule = {"cpu_policy": CPU_POLICY}
    registry = Namespaces(
        _namespace("Public::One", properties={"a": {"type": "integer"}}, owner="p9"),
        _namespace("Mine::Private", properties={"b": {"type": "integer"}}, visibility="private", owner="p1"),
        _namespace("Nobodys::Private", properties={"c": {"type": "integer"}}, visibility="private", owner=None),
        _namespace("Theirs::Private", properties=rule, visibility="private", owner="p2"),
        _namespace(
            "Flavor::Only", properties={"d": {"type": "integer"}}, associations=[Association("OS::Nova::Flavor")]
        ),
    )
    definitions = image_definitions(metadef_validation.namespaces_for_owner(registry, "p1"))
    assert set(definitions) == {"hw_a", "hw_b", "hw_c"}  # not another project's private one, not the flavor's
    assert all(not call[-1].is_admin and call[-1].project_id == "p1" for call in registry.calls)
    metadef_validation.check_image_properties(registry, "p1", {"hw_cpu_policy": "fast"})  # p2's rule: not for p1
    with pytest.raises(Invalid, match="namespace Theirs::Private"):
        metadef_validation.check_image_properties(registry, "p2", {"hw_cpu_policy": "fast"})
    # An image nobody owns (an administrator's, without a project): public and unowned ones.
    nobodys = image_definitions(metadef_validation.namespaces_for_owner(registry, None))
    assert set(nobodys) == {"hw_a", "hw_c"}


def test_the_namespaces_the_owner_sees_in_a_sql_registry(sql_registry):
    """The same rule through the SQL registry's own query, on SQLite, MariaDB and PostgreSQL,
    across pages."""
    for i in range(metadef_validation.PAGE + 5):
        sql_registry.create_namespace(_namespace(f"Public::{i:04d}", properties={f"a{i}": {"type": "integer"}}))
    sql_registry.create_namespace(
        _namespace("Mine::Private", properties={"b": {"type": "integer"}}, visibility="private", owner="p1")
    )
    sql_registry.create_namespace(
        _namespace("Theirs::Private", properties={"c": {"type": "integer"}}, visibility="private", owner="p2")
    )
    sql_registry.create_namespace(
        _namespace(
            "Flavor::Only", properties={"d": {"type": "integer"}}, associations=[Association("OS::Nova::Flavor")]
        )
    )
    definitions = image_definitions(metadef_validation.namespaces_for_owner(sql_registry, "p1"))
    assert set(definitions) == {f"hw_a{i}" for i in range(metadef_validation.PAGE + 5)} | {"hw_b"}
    with pytest.raises(Invalid, match=r"hw_a104='x' is not an integer \(namespace Public::0104\)"):
        metadef_validation.check_image_properties(sql_registry, "p1", {"hw_a104": "x", "hw_c": "x", "hw_d": "x"})
    metadef_validation.check_image_properties(sql_registry, "p1", {"hw_c": "x", "hw_d": "x"})


def test_every_page_of_namespaces_is_read():
    many = [_namespace(f"NS::{i:04d}", properties={f"p{i}": {"type": "integer"}}) for i in range(250)]
    registry = Namespaces(*many)
    with pytest.raises(Invalid, match=r"hw_p249='x' is not an integer \(namespace NS::0249\)"):
        metadef_validation.check_image_properties(registry, "p1", {"hw_p249": "x"})
    assert [call[3:5] for call in registry.calls] == [(100, None), (100, "NS::0099"), (100, "NS::0199")]


def test_nothing_to_check_reads_nothing():
    registry = Namespaces(_namespace(properties={"cpu_policy": CPU_POLICY}))
    metadef_validation.check_image_properties(registry, "p1", {})
    assert registry.calls == []


# -- in the image service ---------------------------------------------------------------------


@pytest.fixture
def validating(service):
    """The service with the option on, over namespaces of the fake registry."""
    namespaces = Namespaces(
        _namespace(
            properties={
                "cpu_policy": CPU_POLICY,
                "cpu_cores": {"type": "integer", "minimum": 1},
            }
        )
    )
    service.registry.list_namespaces = namespaces.list_namespaces
    service.conf.set_override("validate_image_properties", True)
    service.namespaces = namespaces
    return service


def _new(service, viewer=ADMIN, **properties):
    image = Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", owner="p1", properties=properties)
    return service.create(image, viewer)


def test_off_nothing_is_checked_and_the_registry_is_not_asked(service):
    namespaces = Namespaces(_namespace(properties={"cpu_policy": CPU_POLICY}))
    service.registry.list_namespaces = namespaces.list_namespaces
    image = _new(service, hw_cpu_policy="fast")
    service.update(image.id, lambda i: i.properties.update(hw_cpu_policy="faster"), ADMIN)
    assert service.registry.get_image(image.id).properties["hw_cpu_policy"] == "faster"
    assert namespaces.calls == []


def test_create_refuses_a_bad_value_and_stores_nothing(validating):
    with pytest.raises(Invalid, match=r"^Property hw_cpu_policy='fast' is not one of \['shared', 'dedicated'\]"):
        _new(validating, hw_cpu_policy="fast", hw_cpu_cores="2")
    assert validating.recorder.events == []  # never created
    image = _new(validating, hw_cpu_policy="dedicated", hw_cpu_cores="2", other="free")
    assert image.properties["hw_cpu_policy"] == "dedicated"


def test_update_checks_new_and_changed_properties_only(validating):
    validating.conf.set_override("validate_image_properties", False)
    image = _new(validating, hw_cpu_cores="0")  # stored before the option was on
    validating.conf.set_override("validate_image_properties", True)
    validating.namespaces.calls.clear()
    validating.update(image.id, lambda i: i.properties.update(name_note="x"), ADMIN)  # the old value stays
    with pytest.raises(Invalid, match="hw_cpu_policy='fast'"):
        validating.update(image.id, lambda i: i.properties.update(hw_cpu_policy="fast"), ADMIN)
    with pytest.raises(Invalid, match=r"hw_cpu_cores='-1' is less than its minimum 1"):
        validating.update(image.id, lambda i: i.properties.update(hw_cpu_cores="-1"), ADMIN)
    after = validating.registry.get_image(image.id)
    assert after.properties == {"hw_cpu_cores": "0", "name_note": "x"}
    validating.update(image.id, lambda i: i.properties.update(hw_cpu_cores="4", hw_cpu_policy="shared"), ADMIN)
    calls = len(validating.namespaces.calls)
    validating.update(image.id, lambda i: i.properties.pop("hw_cpu_policy"), ADMIN)  # a removal: nothing to check
    validating.update(image.id, lambda i: i.tags.add("t"), ADMIN)
    assert len(validating.namespaces.calls) == calls


def test_property_protections_come_first(validating, tmp_path):
    path = tmp_path / "protections.conf"
    path.write_text(
        "[^hw_cpu_policy$]\ncreate = admin\nread = @\nupdate = admin\ndelete = admin\n\n[.*]\n"
        "create = @\nread = @\nupdate = @\ndelete = @\n"
    )
    validating.conf.set_override("property_protection_file", str(path))
    validating.protections = PropertyProtections.from_config(validating.conf, validating.policy)
    member = Viewer(project_id="p1", roles=("member",))
    with pytest.raises(Forbidden):
        _new(validating, viewer=member, hw_cpu_policy="fast")
    with pytest.raises(Invalid, match="hw_cpu_policy='fast'"):
        _new(validating, viewer=ADMIN, hw_cpu_policy="fast")


# -- the definitions shipped in etc/metadefs ----------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "metadefs"


@pytest.fixture(scope="module")
def shipped():
    files = sorted(SHIPPED.glob("*.json"))
    assert files, f"no metadefs in {SHIPPED}"
    return image_definitions(namespace_from_document(json.loads(f.read_text()), where=f.name) for f in files)


def test_the_shipped_definitions_accept_their_own_defaults(shipped):
    for name, definitions in shipped.items():
        for definition in definitions:
            if definition.schema.get("default") is not None:
                check({name: definition.schema["default"]}, {name: [definition]})


@pytest.mark.parametrize(
    "prop, good, bad",
    [
        ("hw_cpu_policy", "dedicated", "fast"),
        ("hw_cpu_cores", "4", "0"),
        ("hw_mem_page_size", "2MB", "huge"),
        ("hw_mem_page_size", "large", "2 MB"),
        ("hw_firmware_type", "uefi", "efi"),
        ("hw_vif_multiqueue_enabled", "true", "sometimes"),
        ("os_distro", "ubuntu", "Ubuntu 24.04"),
        ("os_secure_boot", "required", "on"),
    ],
)
def test_the_shipped_definitions_take_novas_values(shipped, prop, good, bad):
    check({prop: good}, shipped)
    with pytest.raises(Invalid, match=rf"^Property {prop}={bad!r} .* \(namespace OS::"):
        check({prop: bad}, shipped)
