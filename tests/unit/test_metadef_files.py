"""The metadata definitions shipped in etc/metadefs, and how ``abbild db load-metadefs``
reads and checks metadefs files (cmd/abbild_cmd/metadefs.py). No database here: loading
is tested in tests/functional/test_metadefs_cli.py."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from abbild.errors import Invalid
from abbild.metadef_service import check_property_definition
from abbild.metadefs import CORE_RESOURCE_TYPES, IMAGE_RESOURCE_TYPE, PROPERTY_TYPES, Namespace
from abbild_cmd import metadefs

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "etc/metadefs").glob("*.json"))

# The names Nova (and its libvirt driver) reads, from its documentation: image
# properties (nova/objects/image_meta.py, with the legacy names its ImageMetaProps still
# maps: architecture, hypervisor_type, vm_mode) and flavor extra specs
# (nova/api/validation/extra_specs/). A shipped property must be one of them under the
# prefix of each resource type it is associated with.
NOVA_IMAGE_PROPERTIES = {
    "architecture",
    "hypervisor_type",
    "vm_mode",
    "os_type",
    "os_distro",
    "os_version",
    "os_admin_user",
    "os_require_quiesce",
    "os_secure_boot",
    "hw_cpu_sockets",
    "hw_cpu_cores",
    "hw_cpu_threads",
    "hw_cpu_max_sockets",
    "hw_cpu_max_cores",
    "hw_cpu_max_threads",
    "hw_cpu_policy",
    "hw_cpu_thread_policy",
    "hw_mem_page_size",
    "hw_numa_nodes",
    "hw_locked_memory",
    "hw_mem_encryption",
    "hw_disk_bus",
    "hw_cdrom_bus",
    "hw_scsi_model",
    "hw_vif_model",
    "hw_vif_multiqueue_enabled",
    "hw_rng_model",
    "hw_qemu_guest_agent",
    "hw_input_bus",
    "hw_pointer_model",
    "hw_virtio_packed_ring",
    "hw_firmware_type",
    "hw_machine_type",
    "hw_boot_menu",
    "hw_watchdog_action",
    "hw_tpm_version",
    "hw_tpm_model",
    "hw_video_model",
    "hw_video_ram",
}
NOVA_FLAVOR_EXTRA_SPECS = {
    "hw:cpu_sockets",
    "hw:cpu_cores",
    "hw:cpu_threads",
    "hw:cpu_max_sockets",
    "hw:cpu_max_cores",
    "hw:cpu_max_threads",
    "hw:cpu_policy",
    "hw:cpu_thread_policy",
    "hw:mem_page_size",
    "hw:numa_nodes",
    "hw:locked_memory",
    "hw:mem_encryption",
    "hw:watchdog_action",
    "hw:tpm_version",
    "hw:tpm_model",
}
# What the issue asks the shipped set to cover, by the image property that shows it.
REQUIRED_TOPICS = {
    "CPU topology": "hw_cpu_sockets",
    "CPU pinning": "hw_cpu_policy",
    "memory and huge pages": "hw_mem_page_size",
    "hypervisor type": "hypervisor_type",
    "OS type": "os_type",
    "OS distribution": "os_distro",
    "OS version": "os_version",
    "virtio disks": "hw_disk_bus",
    "virtio network": "hw_vif_model",
    "virtio SCSI": "hw_scsi_model",
    "firmware": "hw_firmware_type",
    "machine type": "hw_machine_type",
    "secure boot": "os_secure_boot",
    "watchdog": "hw_watchdog_action",
    "TPM version": "hw_tpm_version",
    "TPM model": "hw_tpm_model",
    "graphics": "hw_video_model",
    "video memory": "hw_video_ram",
}
PYTHON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list}


def shipped_namespaces() -> list[tuple[pathlib.Path, Namespace]]:
    return [(s.file, s.namespace) for s in metadefs.read(ROOT / "etc/metadefs")]


def definitions(namespace: Namespace):
    """(where, name, definition) of every property definition, the objects' too."""
    for name, definition in namespace.properties.items():
        yield "properties", name, definition
    for obj in namespace.objects:
        for name, definition in obj.properties.items():
            yield f"object {obj.name}", name, definition


def full_names(namespace: Namespace, resource_type: str) -> list[str]:
    association = namespace.association(resource_type)
    prefix = association.prefix or ""
    return [prefix + name for _, name, _ in definitions(namespace)]


def test_the_shipped_path_is_etc_metadefs_in_a_checkout():
    assert metadefs.shipped_path() == ROOT / "etc/metadefs"
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_file_loads(path):
    [source] = metadefs.read(path)
    assert source.file == path
    doc = json.loads(path.read_text())
    assert source.namespace.namespace == doc["namespace"]
    # The file says what a namespace_document says: nothing the reader drops or adds.
    assert metadefs.namespace_document(source.namespace) == {**doc, "owner": metadefs.DEFAULT_OWNER}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_namespace_is_public_protected_described_and_for_images(path):
    [source] = metadefs.read(path)
    namespace = source.namespace
    assert namespace.visibility == "public" and namespace.protected is True
    assert namespace.display_name and namespace.description and len(namespace.description) <= 500
    assert namespace.properties, "a namespace without properties describes nothing"
    names = {a.name for a in namespace.associations}
    assert IMAGE_RESOURCE_TYPE in names and names <= set(CORE_RESOURCE_TYPES), names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_property_definition_is_valid_for_the_api(path):
    [source] = metadefs.read(path)
    for where, name, definition in definitions(source.namespace):
        label = f"{path.name} {where} {name}"
        assert check_property_definition(name, definition) == definition, label  # the API keeps it as it is
        assert metadefs.definition_problems(name, definition) == [], label
        assert isinstance(definition.get("title"), str) and definition["title"].strip(), label
        assert definition["type"] in PROPERTY_TYPES and definition["type"] != "null", label
        python_type = PYTHON_TYPES[definition["type"]]
        if "enum" in definition:
            enum = definition["enum"]
            assert enum and len(set(enum)) == len(enum), label
            assert all(isinstance(v, python_type) and not isinstance(v, bool) or python_type is bool for v in enum)
        for low, high in (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems")):
            if low in definition and high in definition:
                assert definition[low] <= definition[high], label
        if "pattern" in definition:
            re.compile(definition["pattern"])
            assert definition["pattern"].startswith("^") and definition["pattern"].endswith("$"), (
                f"{label}: an unanchored pattern lets anything through that contains a match"
            )
        if "description" in definition:
            assert definition["description"].strip(), label


def test_shipped_names_are_what_nova_reads_under_each_prefix():
    for path, namespace in shipped_namespaces():
        for association in namespace.associations:
            if association.name == "OS::Nova::Flavor":
                known = NOVA_FLAVOR_EXTRA_SPECS
            else:  # images, and volumes' image metadata (what Nova reads from a boot volume)
                known = NOVA_IMAGE_PROPERTIES
                if association.name == "OS::Cinder::Volume":
                    assert association.properties_target == "image", path.name
            unknown = set(full_names(namespace, association.name)) - known
            assert not unknown, f"{path.name}: {association.name} does not know {sorted(unknown)}"


def test_a_volume_association_mirrors_the_image_one():
    for path, namespace in shipped_namespaces():
        volume = namespace.association("OS::Cinder::Volume")
        if volume is not None:
            assert volume.prefix == namespace.association(IMAGE_RESOURCE_TYPE).prefix, path.name


def test_shipped_names_are_unique_across_files():
    seen_namespaces, seen = {}, {}
    for path, namespace in shipped_namespaces():
        assert namespace.namespace not in seen_namespaces, (path.name, seen_namespaces.get(namespace.namespace))
        seen_namespaces[namespace.namespace] = path.name
        for association in namespace.associations:
            for name in full_names(namespace, association.name):
                key = (association.name, name)
                assert key not in seen, f"{name} for {association.name} is in {path.name} and {seen[key]}"
                seen[key] = path.name


def test_the_shipped_set_covers_what_the_issue_asks_for():
    image_names = {
        name
        for _, namespace in shipped_namespaces()
        if namespace.association(IMAGE_RESOURCE_TYPE)
        for name in full_names(namespace, IMAGE_RESOURCE_TYPE)
    }
    missing = {topic: name for topic, name in REQUIRED_TOPICS.items() if name not in image_names}
    assert not missing


def test_shipped_values_are_novas():
    """Spot checks of allowed values against Nova's enums (nova/objects/fields.py)."""
    by_name = {}
    for _, namespace in shipped_namespaces():
        for name in full_names(namespace, IMAGE_RESOURCE_TYPE) if namespace.association(IMAGE_RESOURCE_TYPE) else ():
            prefix = namespace.association(IMAGE_RESOURCE_TYPE).prefix or ""
            by_name[name] = namespace.properties[name.removeprefix(prefix)]
    assert set(by_name["hw_cpu_policy"]["enum"]) == {"shared", "dedicated", "mixed"}
    assert set(by_name["hw_cpu_thread_policy"]["enum"]) == {"prefer", "isolate", "require"}
    assert set(by_name["hw_watchdog_action"]["enum"]) == {"disabled", "reset", "poweroff", "pause", "none"}
    assert set(by_name["hw_tpm_version"]["enum"]) == {"1.2", "2.0"}
    assert set(by_name["hw_tpm_model"]["enum"]) == {"tpm-tis", "tpm-crb"}
    assert set(by_name["hw_firmware_type"]["enum"]) == {"bios", "uefi"}
    assert set(by_name["os_secure_boot"]["enum"]) == {"required", "disabled", "optional"}
    assert set(by_name["os_type"]["enum"]) == {"linux", "windows"}
    assert {"virtio", "scsi", "ide", "sata"} <= set(by_name["hw_disk_bus"]["enum"])
    assert {"virtio", "e1000", "rtl8139"} <= set(by_name["hw_vif_model"]["enum"])
    assert "virtio-scsi" in by_name["hw_scsi_model"]["enum"]
    assert {"virtio", "qxl", "vga", "cirrus", "none"} <= set(by_name["hw_video_model"]["enum"])
    assert {"qemu", "kvm", "xen", "vmware", "ironic", "lxc"} <= set(by_name["hypervisor_type"]["enum"])
    page_size = re.compile(by_name["hw_mem_page_size"]["pattern"])
    for good in ("small", "large", "any", "2048", "2MB", "1GB", "1GiB"):
        assert page_size.match(good), good
    for bad in ("huge", "2 MB", "-1"):
        assert not page_size.match(bad), bad
    assert by_name["hw_cpu_sockets"] == {**by_name["hw_cpu_sockets"], "type": "integer", "minimum": 1}


# -- reading files: every problem, named -------------------------------------------------


def write(path: pathlib.Path, doc) -> pathlib.Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = {
    "namespace": "Test::Good",
    "display_name": "Good",
    "visibility": "public",
    "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "t_"}],
    "properties": {"size": {"title": "Size", "type": "integer", "minimum": 1}},
    "objects": [{"name": "O", "required": ["p"], "properties": {"p": {"title": "P", "type": "string"}}}],
    "tags": [{"name": "t"}],
}


def test_read_a_directory_by_file_name_and_the_owner_defaults_to_admin(tmp_path):
    write(tmp_path / "b.json", {**GOOD, "namespace": "Test::B"})
    write(tmp_path / "a.json", {**GOOD, "namespace": "Test::A", "owner": "p1"})
    write(tmp_path / "notes.txt", "not a metadefs file")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.json", {**GOOD, "namespace": "Test::C"})  # subdirectories are not read
    sources = metadefs.read(tmp_path)
    assert [(s.file.name, s.namespace.namespace, s.namespace.owner) for s in sources] == [
        ("a.json", "Test::A", "p1"),
        ("b.json", "Test::B", "admin"),
    ]
    assert [s.namespace.namespace for s in metadefs.read(tmp_path / "sub" / "c.json")] == ["Test::C"]


@pytest.mark.parametrize(
    "doc, expected",
    [
        ("{not json", "not valid JSON: Expecting property name"),
        ([GOOD], "the document must be an object"),
        ({**GOOD, "namespace": 7}, "'namespace' must be a string"),
        ({**GOOD, "visibility": "shared"}, "'visibility' must be one of public, private, not 'shared'"),
        ({**GOOD, "protected": "yes"}, "'protected' must be true or false"),
        ({**GOOD, "description": "x" * 501}, "'description' is longer than 500 characters"),
        ({**GOOD, "namespace": "a/b"}, "'namespace': The namespace name 'a/b' contains '/'"),
        (
            {**GOOD, "resource_type_associations": [{"name": "OS::Glance::Image"}, {"name": "OS::Glance::Image"}]},
            "resource_type_associations: 'OS::Glance::Image' appears twice",
        ),
        ({**GOOD, "resource_type_associations": [{"prefix": "x"}]}, "resource_type_associations[0].name must be"),
        ({**GOOD, "properties": {"size": {"type": "integer"}}}, "properties: Property 'size': 'title' is required"),
        (
            {**GOOD, "properties": {"size": {"title": "S", "type": "int"}}},
            "properties: Property 'size': type 'int' is not one of array",
        ),
        (
            {**GOOD, "properties": {"size": {"title": "S", "type": "integer", "minimun": 1}}},
            "properties: Property 'size': unknown key(s) 'minimun'",
        ),
        (
            {**GOOD, "properties": {"size": {"title": "S", "type": "integer", "minimum": 5, "maximum": 1}}},
            "'minimum' (5) is greater than 'maximum' (1)",
        ),
        (
            {**GOOD, "properties": {"s": {"title": "S", "type": "string", "pattern": "(unclosed"}}},
            "Property 's': 'pattern' '(unclosed' is no regular expression",
        ),
        ({**GOOD, "properties": {"s": {"title": "S", "type": "string", "enum": []}}}, "'enum' is empty"),
        (
            {**GOOD, "properties": {"s": {"title": "S", "type": "string", "enum": ["a", 1]}}},
            "enum value 1 is not of type string",
        ),
        (
            {**GOOD, "properties": {"s": {"title": "S", "type": "string", "enum": ["a", "a"]}}},
            "'enum' has 'a' more than once",
        ),
        (
            {**GOOD, "properties": {"s": {"title": "S", "type": "string", "enum": ["a"], "default": "b"}}},
            "the default 'b' is not one of the enum values",
        ),
        ({**GOOD, "properties": {"s": {"title": " ", "type": "string"}}}, "Property 's': 'title' is empty"),
        (
            {**GOOD, "objects": [{"name": "O", "required": ["q"], "properties": {}}]},
            "objects[0].required: 'q' is not one of the object's properties",
        ),
        (
            {**GOOD, "objects": [{"name": "O", "properties": {"p": {"title": "P"}}}]},
            "objects[0].properties: Property 'p': 'type' is required",
        ),
        ({**GOOD, "tags": [{"name": "t"}, {"name": "t"}]}, "tags: 't' appears twice"),
        ({**GOOD, "tags": [{"name": "x" * 81}]}, "tags[0].name: The tag name"),
    ],
)
def test_a_malformed_file_is_named_with_its_field_and_nothing_is_read(tmp_path, doc, expected):
    write(tmp_path / "a-good.json", {**GOOD, "namespace": "Test::Other"})
    bad = write(tmp_path / "bad.json", doc)
    with pytest.raises(Invalid) as caught:
        metadefs.read(tmp_path)
    message = str(caught.value)
    assert "nothing was loaded" in message
    [line] = [line.strip() for line in message.splitlines()[1:]]
    assert line.startswith(f"{bad}: "), line
    assert expected in line, line


def test_every_problem_of_every_file_is_reported_at_once(tmp_path):
    write(tmp_path / "one.json", {**GOOD, "visibility": "nobody"})
    write(tmp_path / "two.json", {**GOOD, "namespace": "Test::Two", "properties": {"p": {"type": "string"}}})
    write(tmp_path / "three.json", {**GOOD, "namespace": "Test::Good"})  # GOOD's name, as one.json's
    write(tmp_path / "four.json", GOOD)
    with pytest.raises(Invalid) as caught:
        metadefs.read(tmp_path)
    lines = str(caught.value).splitlines()
    assert lines[0] == "3 problem(s) in the metadefs files; nothing was loaded:"
    assert any(line.strip().startswith(f"{tmp_path / 'one.json'}: ") for line in lines)
    assert any(line.strip().startswith(f"{tmp_path / 'two.json'}: properties: Property 'p'") for line in lines)
    assert any(
        f"{tmp_path / 'three.json'}: namespace 'Test::Good' is in {tmp_path / 'four.json'} too" in line
        for line in lines
    )


def test_nothing_to_read(tmp_path):
    with pytest.raises(Invalid, match="no metadefs files"):
        metadefs.read(tmp_path)
    with pytest.raises(Invalid, match="no such file or directory"):
        metadefs.read(tmp_path / "missing")


def test_options_that_need_merge():
    metadefs.check_options(merge=True, prefer_new=True, overwrite=False)
    with pytest.raises(Invalid, match="with --merge"):
        metadefs.check_options(merge=False, prefer_new=True, overwrite=False)
    with pytest.raises(Invalid, match="with --merge"):
        metadefs.check_options(merge=False, prefer_new=False, overwrite=True)
    with pytest.raises(Invalid, match="not both"):
        metadefs.check_options(merge=True, prefer_new=True, overwrite=True)


def test_export_file_names_are_glances():
    taken = set()
    names = []
    for display_name, name in [
        ("Guest CPU topology", "A"),
        ("Guest CPU_topology!", "B"),  # the same once stripped: a second file
        (None, "OS::Compute::Thing"),  # no display name: the namespace's name
        ("***", "C"),  # nothing left of it: the namespace's name
    ]:
        names.append(metadefs.file_name(Namespace(namespace=name, display_name=display_name), taken))
        taken.add(names[-1])
    assert names == ["GuestCPUtopology.json", "GuestCPUtopology-2.json", "OSComputeThing.json", "C.json"]
