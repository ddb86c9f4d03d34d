"""Property protections (both file formats) and the per-image and per-project quotas,
enforced by the service on create, update, upload and reads."""

import uuid

import pytest

from abbild.errors import ConfigError, Forbidden, QuotaExceeded, SizeLimitExceeded
from abbild.image import Image, Status
from abbild.protections import PropertyProtections
from abbild.quotas import parse_size
from abbild.registry import Viewer

ADMIN = Viewer(is_admin=True)
# As Keystone issues it: admin implies member, member implies reader.
CLOUD_ADMIN = Viewer(project_id="admins", is_admin=True, roles=("admin", "member", "reader"))
OWNER = "owner"

ROLES_FILE = """
[^x_billing_]
create = admin
read = admin,billing
update = admin
delete = !

[^x_owner_]
create = member
read = @
update = member
delete = member

[.*]
create = @
read = @
update = @
delete = @
"""

POLICIES_FILE = """
[^x_billing_]
create = billing_admin
read = billing_reader
update = billing_admin
delete = billing_admin
"""


def viewer(*roles):
    return Viewer(project_id=OWNER, roles=roles)


def protect(service, tmp_path, text, fmt="roles"):
    path = tmp_path / "protections.conf"
    path.write_text(text)
    service.conf.set_override("property_protection_file", str(path))
    service.conf.set_override("property_protection_rule_format", fmt)
    service.protections = PropertyProtections.from_config(service.conf, service.policy)
    return service.protections


def create(service, who, **properties):
    image = Image(id=str(uuid.uuid4()), owner=OWNER, disk_format="raw", container_format="bare", properties=properties)
    return service.create(image, who)


def set_property(name, value):
    def change(image):
        if value is None:
            del image.properties[name]
        else:
            image.properties[name] = value

    return change


# -- the file ---------------------------------------------------------------------------------


def test_first_matching_section_wins_and_unmatched_is_denied(service, tmp_path):
    rules = protect(service, tmp_path, ROLES_FILE.replace("[.*]", "[^y_]"))
    assert rules.allows("x_billing_code", "read", viewer("billing"))
    assert not rules.allows("x_billing_code", "update", viewer("billing"))
    assert rules.allows("x_owner_note", "read", viewer())  # @: everyone
    assert not rules.allows("x_billing_code", "delete", ADMIN)  # !: nobody, admins included
    assert not rules.allows("anything_else", "read", ADMIN)  # no section matches: denied


def test_roles_compare_case_insensitively(service, tmp_path):
    rules = protect(service, tmp_path, ROLES_FILE.replace("read = admin,billing", "read = Billing"))
    assert rules.allows("x_billing_code", "read", viewer("BILLING"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[a]\ncreate = @\nread = @\nupdate = @\n", "must set delete"),
        ("[(unclosed]\ncreate = @\nread = @\nupdate = @\ndelete = @\n", "not a valid regular expression"),
        ("[a]\ncreate = @,admin\nread = @\nupdate = @\ndelete = @\n", "stand alone"),
        ("not an ini file", "property_protection_file"),
    ],
)
def test_invalid_files_fail_with_the_reason(service, tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        protect(service, tmp_path, text)


def test_missing_file_is_a_config_error(service, tmp_path):
    service.conf.set_override("property_protection_file", str(tmp_path / "nope.conf"))
    with pytest.raises(ConfigError, match="nope.conf"):
        PropertyProtections.from_config(service.conf, service.policy)


def test_policies_format_checks_the_named_rules(service, tmp_path):
    service.policy.add_rule("billing_admin", "role:admin")
    service.policy.add_rule("billing_reader", "role:billing or role:admin")
    rules = protect(service, tmp_path, POLICIES_FILE, fmt="policies")
    assert rules.allows("x_billing_code", "read", viewer("billing"))
    assert not rules.allows("x_billing_code", "create", viewer("billing"))
    assert rules.allows("x_billing_code", "create", ADMIN)
    assert not rules.allows("x_other", "read", ADMIN)


# -- enforced by the service -------------------------------------------------------------------


def test_create_update_delete_and_read_are_enforced(service, tmp_path):
    protect(service, tmp_path, ROLES_FILE)
    member = viewer("member", "reader")
    with pytest.raises(Forbidden, match="x_billing_code.*create"):
        create(service, member, x_billing_code="42")
    image = create(service, CLOUD_ADMIN, x_billing_code="42", x_owner_note="hi")
    # A member reads the image without the property protected from it.
    shown = service.readable(service.get(image.id, member), member)
    assert "x_billing_code" not in shown.properties and shown.properties["x_owner_note"] == "hi"
    assert service.readable(service.get(image.id, viewer("billing", "reader")), member)
    # Changing other properties keeps the protected one untouched.
    service.update(image.id, set_property("x_owner_note", "changed"), member)
    assert service.registry.get_image(image.id).properties["x_billing_code"] == "42"
    with pytest.raises(Forbidden, match="update"):
        service.update(image.id, set_property("x_billing_code", "43"), member)
    with pytest.raises(Forbidden, match="delete"):
        service.update(image.id, set_property("x_billing_code", None), ADMIN)
    service.update(image.id, set_property("x_owner_note", None), member)
    assert service.registry.get_image(image.id).properties == {"x_billing_code": "42"}


def test_without_a_file_every_property_is_open(service):
    image = create(service, viewer("member", "reader"), anything="goes")
    assert service.readable(image, viewer("reader")) is image


# -- quotas ----------------------------------------------------------------------------------------


def test_property_and_tag_quotas(service):
    service.conf.set_override("image_property_quota", 2)
    service.conf.set_override("image_tag_quota", 1)
    with pytest.raises(QuotaExceeded, match="3 properties; at most 2.*image_property_quota"):
        create(service, ADMIN, a="1", b="2", c="3")
    image = create(service, ADMIN, a="1", b="2")
    with pytest.raises(QuotaExceeded, match="image_property_quota"):
        service.update(image.id, set_property("c", "3"), ADMIN)
    service.update(image.id, lambda i: i.tags.add("one"), ADMIN)
    with pytest.raises(QuotaExceeded, match="2 tags; at most 1.*image_tag_quota"):
        service.update(image.id, lambda i: i.tags.add("two"), ADMIN)
    # Lowering a quota leaves existing images over it able to shrink, not to grow.
    service.conf.set_override("image_property_quota", 0)
    service.update(image.id, set_property("a", None), ADMIN)
    with pytest.raises(QuotaExceeded):
        service.update(image.id, set_property("z", "1"), ADMIN)


def test_a_negative_quota_means_no_limit(service):
    service.conf.set_override("image_property_quota", -1)
    assert len(create(service, ADMIN, **{f"p{i}": "v" for i in range(200)}).properties) == 200


@pytest.mark.parametrize(
    "text, size",
    [("0", 0), ("1024", 1024), ("10B", 10), ("2KB", 2048), ("3 mb", 3 << 20), ("1GB", 1 << 30), ("1TB", 1 << 40)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5GB", "10 PB", "lots"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="user_storage_quota"):
        parse_size(text)


def test_storage_quota_cuts_off_the_upload_and_leaves_nothing(service):
    service.storage_quota = 1000
    owner = viewer("member", "reader")
    first = create(service, owner)
    service.uploads.upload(first.id, [b"x" * 600], declared_size=None, viewer=owner)
    second = create(service, owner)
    with pytest.raises(SizeLimitExceeded, match="user_storage_quota"):
        service.uploads.upload(second.id, [b"y" * 300, b"y" * 300], declared_size=None, viewer=owner)
    assert service.registry.get_image(second.id).status is Status.QUEUED
    assert second.id not in service.stores["mem"].driver._objects
    with pytest.raises(SizeLimitExceeded):  # a declared size over the room fails before any byte
        service.uploads.upload(second.id, iter(()), declared_size=401, viewer=owner)
    service.uploads.upload(second.id, [b"y" * 400], declared_size=400, viewer=owner)  # exactly the room left
    usage = service.usage(owner)
    assert usage["image_count_total"] == {"limit": -1, "usage": 2}
    assert usage["image_size_total"]["usage"] == 0  # MiB, rounded down


def test_storage_quota_rechecked_after_parallel_uploads(service, monkeypatch):
    """Two uploads that each fit alone: the one finishing second must not activate."""
    service.storage_quota = 1000
    owner = viewer("member", "reader")
    first, second = create(service, owner), create(service, owner)
    service.uploads.upload(first.id, [b"x" * 600], declared_size=None, viewer=owner)

    # The second upload checked its room before the first had finished.
    real = service.uploads.limit
    monkeypatch.setattr(
        service.uploads, "limit", lambda image, uploaded=0: (1000, "x") if not uploaded else real(image, uploaded)
    )
    with pytest.raises(QuotaExceeded, match="user_storage_quota allows 1000"):
        service.uploads.upload(second.id, [b"y" * 600], declared_size=None, viewer=owner)
    assert service.registry.get_image(second.id).status is Status.QUEUED
    assert second.id not in service.stores["mem"].driver._objects


def test_location_quota(service):
    service.conf.set_override("image_location_quota", 2)
    image = create(service, ADMIN)
    other = service.stores["other"]
    uris = [other.put(f"copy-{i}", [b"same data"], 9).uri for i in range(3)]
    service.locations.add(image.id, uris[0], {}, None, ADMIN)  # queued -> active
    service.locations.add(image.id, uris[1], {}, None, ADMIN)
    with pytest.raises(QuotaExceeded, match="3 locations; at most 2.*image_location_quota"):
        service.locations.add(image.id, uris[2], {}, None, ADMIN)
    assert [loc.uri for loc in service.registry.get_image(image.id).locations] == uris[:2]


def test_each_name_keeps_its_first_matching_section_when_asked_again(service, tmp_path):
    protections = protect(service, tmp_path, ROLES_FILE)
    for _ in range(2):  # the second round answers from the remembered sections
        assert protections.allows("x_billing_code", "read", viewer("billing"))
        assert not protections.allows("x_billing_code", "update", viewer("billing"))
        assert not protections.allows("x_billing_code", "delete", ADMIN)
        assert protections.allows("x_owner_note", "update", viewer("member"))
        assert not protections.allows("x_owner_note", "update", viewer("reader"))
        assert protections.allows("anything", "delete", viewer())
    strict = protect(service, tmp_path, POLICIES_FILE, fmt="policies")
    assert not strict.allows("anything", "read", ADMIN)  # no section: nobody, in this file
