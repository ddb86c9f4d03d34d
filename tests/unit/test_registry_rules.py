"""abbild_registry.rules: a user's write changes no more than the API would let that
user change. Each change the image service makes for a user passes; each forged one
is refused with a message naming the attribute. (Over the wire, with a real Keystone:
tests/functional/test_registry_keystone.py.)"""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from abbild.errors import Forbidden, InvalidTransition
from abbild.image import Image, Location, Status
from abbild.metadefs import Association, MetadefTag, Namespace
from abbild.registry import Viewer
from abbild.registry_wire import Caller
from abbild_registry.app import load_conf
from abbild_registry.rules import ImageRules, MetadefRules, names_image

IMAGE_ID = "7f1c5a3e-2d4b-4c8e-9a61-0b2f3d4e5f60"
OTHER_ID = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"
USER = Caller(Viewer("p1", user_id="u1", roles=("member", "reader")))
READER = Caller(Viewer("p1", user_id="u2", roles=("reader",)))
ADMIN = Caller(Viewer("admins", roles=("admin", "member"), is_admin=True))
SERVICE_USER = Caller(Viewer("service", roles=("service",)))
JOBS = Caller(None, jobs_only=True)  # a service token alone
OWN_DATA = Location("local", f"file:///var/lib/abbild/images/{IMAGE_ID}", 5)
LEASE = datetime.datetime(2030, 1, 1, 12, 0, 0)


@pytest.fixture
def rules(tmp_path):
    protections = tmp_path / "protections.conf"
    protections.write_text(
        "[^x_admin_]\ncreate = admin\nread = @\nupdate = admin\ndelete = admin\n"
        "[.*]\ncreate = @\nread = @\nupdate = @\ndelete = @\n"
    )
    conf = tmp_path / "registry.conf"
    conf.write_text(f"[DEFAULT]\nproperty_protection_file = {protections}\n")
    return ImageRules(load_conf([str(conf)]))


def queued(**fields) -> Image:
    return Image(
        id=IMAGE_ID,
        owner="p1",
        visibility="private",
        disk_format="raw",
        container_format="bare",
        created_at=LEASE,
        properties={"x_admin_note": "kept"},
        **fields,
    )


def saving() -> Image:
    return dataclasses.replace(queued(), status=Status.SAVING, upload_worker="api-1:42:99", upload_lease=LEASE)


def active(**fields) -> Image:
    values = {
        "status": Status.ACTIVE,
        "size": 5,
        "checksum": "0" * 32,
        "os_hash_algo": "sha512",
        "os_hash_value": "1" * 128,
        "locations": [OWN_DATA],
        **fields,
    }
    return dataclasses.replace(queued(), **values)


def changed(image: Image, change) -> Image:
    new = image.copy()
    change(new)
    return new


def activate(location: Location):
    def change(image: Image) -> None:
        image.size, image.checksum, image.os_hash_algo, image.os_hash_value = 5, "a" * 32, "sha512", "b" * 128
        image.locations.append(location)
        image.upload_worker = image.upload_lease = None
        image.transition(Status.ACTIVE)

    return change


def claim(image: Image) -> None:
    image.transition(Status.SAVING)
    image.upload_worker, image.upload_lease = "api-1:42:99", LEASE


def release(image: Image) -> None:
    image.transition(Status.QUEUED)
    image.upload_worker = image.upload_lease = None


def set_attributes(image: Image) -> None:
    image.name, image.protected, image.os_hidden, image.min_disk, image.min_ram = "n", True, True, 1, 2
    image.tags, image.visibility, image.disk_format = {"t"}, "community", "qcow2"
    image.properties["color"] = "blue"


def pending_delete(image: Image) -> None:
    image.transition(Status.PENDING_DELETE)
    image.upload_worker, image.upload_lease = "api-1:42:99", LEASE


def data_gone(image: Image) -> None:
    image.locations = []
    image.upload_worker = image.upload_lease = None
    image.transition(Status.DELETED)


def register_url(image: Image) -> None:
    image.locations.append(Location("web", "https://example.com/disk.img", 5, "active", {"a": "b"}))
    image.size, image.checksum = image.size or 5, image.checksum or "c" * 32
    if image.status is Status.QUEUED:
        image.transition(Status.ACTIVE)


def two_locations() -> Image:
    return active(locations=[OWN_DATA, Location("web", "https://example.com/disk.img", 5)])


# -- what the service does for a user passes --------------------------------------------------


@pytest.mark.parametrize(
    "stored, change",
    [
        (queued, set_attributes),
        (queued, claim),
        (saving, lambda i: setattr(i, "upload_lease", LEASE + datetime.timedelta(minutes=5))),
        (saving, activate(OWN_DATA)),
        (saving, activate(Location("web", "http://example.com/disk.img", 5))),  # a location import
        (saving, release),
        (queued, register_url),
        (active, register_url),
        (active, lambda i: i.transition(Status.DEACTIVATED)),
        (lambda: active(status=Status.DEACTIVATED), lambda i: i.transition(Status.ACTIVE)),
        (active, pending_delete),
        (saving, lambda i: i.transition(Status.DELETED)),  # no data yet
        (lambda: changed(two_locations(), pending_delete), lambda i: i.locations.pop(0)),
        (lambda: changed(active(), pending_delete), data_gone),
        (lambda: changed(active(), pending_delete), lambda i: i.transition(Status.ACTIVE)),  # data in use
        (queued, lambda i: i.transition(Status.DELETED)),
        (active, lambda i: setattr(i, "properties", {"x_admin_note": "kept", "os_distro": "debian"})),
        (two_locations, lambda i: setattr(i.locations[1], "metadata", {"rack": "a1"})),
    ],
    ids=[
        "attributes",
        "claim",
        "lease",
        "activation",
        "import",
        "release",
        "url on queued",
        "url on active",
        "deactivate",
        "reactivate",
        "delete",
        "delete upload",
        "data going",
        "data gone",
        "undelete",
        "delete queued",
        "property",
        "location metadata",
    ],
)
def test_the_services_own_changes_pass(rules, stored, change):
    before = stored()
    rules.check_save(before, changed(before, change), USER)


@pytest.mark.parametrize(
    "stored, change",
    [
        (saving, lambda i: setattr(i, "upload_lease", LEASE + datetime.timedelta(minutes=5))),
        (saving, activate(OWN_DATA)),
        (saving, activate(Location("web", "https://example.com/disk.img", 5))),
        (saving, release),
    ],
    ids=["lease", "activation", "import", "release"],
)
def test_service_jobs_pass(rules, stored, change):
    before = stored()
    rules.check_save(before, changed(before, change), JOBS)


def test_a_users_new_image_passes(rules):
    rules.check_create(Image(id=IMAGE_ID, owner="p1", visibility="shared", properties={"os_distro": "x"}), USER)


# -- forged changes are refused, naming the attribute --------------------------------------


def _refused(call, attribute: str) -> None:
    with pytest.raises(Forbidden) as refusal:
        call()
    assert f"'{attribute}'" in str(refusal.value), refusal.value


@pytest.mark.parametrize(
    "stored, change, attribute",
    [
        (queued, lambda i: setattr(i, "owner", "p2"), "owner"),
        (queued, lambda i: setattr(i, "visibility", "public"), "visibility"),
        (queued, lambda i: setattr(i, "status", Status.ACTIVE), "status"),
        (active, lambda i: setattr(i, "checksum", "f" * 32), "checksum"),
        (active, lambda i: setattr(i, "size", 1 << 40), "size"),
        (active, lambda i: setattr(i, "os_hash_value", "f" * 128), "os_hash_value"),
        (active, lambda i: setattr(i, "virtual_size", 7), "virtual_size"),
        (active, lambda i: setattr(i, "created_at", LEASE - datetime.timedelta(days=9)), "created_at"),
        (active, lambda i: setattr(i, "deleted_at", LEASE), "deleted_at"),
        (active, lambda i: setattr(i, "upload_worker", "me"), "upload_worker"),
        (active, lambda i: setattr(i, "disk_format", "qcow2"), "disk_format"),
        (active, lambda i: i.properties.update(x_admin_note="changed"), "x_admin_note"),
        (active, lambda i: i.properties.pop("x_admin_note"), "x_admin_note"),
        (queued, lambda i: i.properties.update(x_admin_flag="1"), "x_admin_flag"),
        (queued, lambda i: i.properties.update(os_glance_import_task="t"), "os_glance_import_task"),
        (saving, activate(Location("local", f"file:///var/lib/abbild/images/{OTHER_ID}", 5)), "locations"),
        (saving, activate(Location("local", f"file:///var/lib/abbild/images/{OTHER_ID}/../{IMAGE_ID}")), "locations"),
        (saving, lambda i: [activate(OWN_DATA)(i), i.locations.append(OWN_DATA)], "locations"),
        (saving, lambda i: [activate(OWN_DATA)(i), setattr(i, "owner", "p2")], "owner"),
        (saving, lambda i: setattr(i, "upload_worker", "thief:1:1"), "upload_worker"),
        (
            lambda: dataclasses.replace(saving(), checksum="a" * 32),
            lambda i: setattr(i, "status", Status.QUEUED),
            "checksum",
        ),
        (
            active,
            lambda i: i.locations.append(Location("local", f"file:///var/lib/abbild/images/{OTHER_ID}")),
            "locations",
        ),
        (active, lambda i: i.locations.append(Location("ceph", f"rbd://fsid/images/{IMAGE_ID}/snap")), "locations"),
        (
            active,
            lambda i: [i.locations.append(Location("web", "https://example.com/x")), setattr(i, "size", 9)],
            "size",
        ),
        (active, lambda i: i.locations.pop(), "locations"),  # the last one
        (two_locations, lambda i: i.locations.reverse(), "locations"),
        (active, lambda i: [i.transition(Status.DEACTIVATED), setattr(i, "size", 6)], "size"),
        (active, lambda i: [pending_delete(i), i.locations.clear()], "locations"),
        (active, lambda i: [pending_delete(i), setattr(i, "checksum", None)], "checksum"),
        (
            lambda: changed(active(), pending_delete),
            lambda i: [i.transition(Status.ACTIVE), i.locations.clear()],
            "locations",
        ),
        (saving, lambda i: i.transition(Status.KILLED), "status"),
        (two_locations, lambda i: [setattr(i.locations[1], "metadata", {"rack": "a1"}), setattr(i, "size", 9)], "size"),
    ],
    ids=[
        "owner",
        "public",
        "status",
        "checksum",
        "size",
        "os_hash_value",
        "virtual_size",
        "created_at",
        "deleted_at",
        "claim",
        "format",
        "protected update",
        "protected delete",
        "protected create",
        "reserved",
        "another image's data",
        "dot-dot",
        "two locations",
        "activation and owner",
        "steal",
        "release keeps hash",
        "file url",
        "own rbd on active",
        "url and size",
        "last location",
        "reorder",
        "deactivate and size",
        "pending_delete drops data",
        "pending_delete and hash",
        "undelete without data",
        "killed",
        "location metadata and size",
    ],
)
def test_forged_changes_are_refused(rules, stored, change, attribute):
    before = stored()
    _refused(lambda: rules.check_save(before, changed(before, change), USER), attribute)


@pytest.mark.parametrize(
    "fields, attribute",
    [
        ({"visibility": "public"}, "visibility"),
        ({"status": Status.ACTIVE}, "status"),
        ({"checksum": "0" * 32}, "checksum"),
        ({"size": 5}, "size"),
        ({"os_hash_algo": "sha512"}, "os_hash_algo"),
        ({"locations": [OWN_DATA]}, "locations"),
        ({"upload_worker": "api-1:1:1"}, "upload_worker"),
        ({"properties": {"x_admin_note": "mine"}}, "x_admin_note"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_forged_new_images_are_refused(rules, fields, attribute):
    _refused(lambda: rules.check_create(Image(id=IMAGE_ID, owner="p1", **fields), USER), attribute)


def test_service_jobs_change_no_attribute(rules):
    _refused(lambda: rules.check_save(saving(), changed(saving(), lambda i: setattr(i, "name", "x")), JOBS), "name")
    foreign = activate(Location("local", f"file:///var/lib/abbild/images/{OTHER_ID}", 5))
    _refused(lambda: rules.check_save(saving(), changed(saving(), foreign), JOBS), "locations")


def test_the_policy_applies(rules):
    """A reader changes nothing; a protected image is not deleted."""
    with pytest.raises(Forbidden, match="modify_image"):
        rules.check_save(queued(), changed(queued(), lambda i: setattr(i, "name", "x")), READER)
    with pytest.raises(Forbidden, match="upload_image"):
        rules.check_save(queued(), changed(queued(), claim), READER)
    with pytest.raises(Forbidden, match="add_image"):
        rules.check_create(Image(id=IMAGE_ID, owner="p1"), READER)
    with pytest.raises(Forbidden, match="delete_image_location"):
        rules.check_save(two_locations(), changed(two_locations(), lambda i: i.locations.pop(0)), USER)
    protected = active(protected=True)
    with pytest.raises(Forbidden, match="protected"):
        rules.check_save(protected, changed(protected, pending_delete), USER)


def test_where_the_policy_lets_members_remove_locations_they_do(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('"delete_image_location": "role:member"\n')
    conf = tmp_path / "registry.conf"
    conf.write_text(f"[oslo_policy]\npolicy_file = {policy}\n")
    rules = ImageRules(load_conf([str(conf)]))
    rules.check_save(two_locations(), changed(two_locations(), lambda i: i.locations.pop(0)), USER)
    _refused(lambda: rules.check_save(active(), changed(active(), lambda i: i.locations.pop()), USER), "locations")


def test_transitions_follow_the_status_table(rules):
    with pytest.raises(InvalidTransition):
        rules.check_save(active(), changed(active(), lambda i: setattr(i, "status", Status.SAVING)), USER)


@pytest.mark.parametrize("caller", [ADMIN, SERVICE_USER, Caller(None)], ids=["admin", "service role", "service"])
def test_admins_and_services_are_trusted(rules, caller):
    forged = active(
        owner="p2",
        visibility="public",
        checksum="f" * 32,
        locations=[Location("local", f"file:///var/lib/abbild/images/{OTHER_ID}")],
    )
    rules.check_save(queued(), forged, caller)
    rules.check_create(forged, caller)


@pytest.mark.parametrize(
    "uri",
    [
        f"file:///var/lib/abbild/images/{IMAGE_ID}",
        f"s3://bucket/{IMAGE_ID}",
        f"swift://glance_7f/{IMAGE_ID}",
        f"rbd://fsid/images/{IMAGE_ID}/snap",
        f"vsphere://vc.example.com/folder/openstack_glance/{IMAGE_ID}?dcPath=dc1&dsName=ds%201",
        f"blobs://mine/{IMAGE_ID}",
    ],
)
def test_each_stores_uri_names_the_image(uri):
    assert names_image(uri, IMAGE_ID)
    assert not names_image(uri.replace(IMAGE_ID, OTHER_ID), IMAGE_ID)


@pytest.mark.parametrize(
    "uri",
    [
        f"file:///var/lib/abbild/images/{OTHER_ID}",
        f"file:///var/lib/abbild/images/{OTHER_ID}/../{IMAGE_ID}",
        f"file:///var/lib/abbild/images/%2E%2E/{IMAGE_ID}",
        f"rbd://fsid/images/{OTHER_ID}/{IMAGE_ID}",
        f"s3://bucket/{OTHER_ID}?{IMAGE_ID}",
        f"s3://{IMAGE_ID}",
    ],
)
def test_other_data_does_not_name_the_image(uri):
    assert not names_image(uri, IMAGE_ID)


# -- delayed delete and the scrubber ---------------------------------------------------------


def delayed_delete(image: Image) -> None:
    image.transition(Status.PENDING_DELETE)
    image.deleted_at = LEASE


def scrubber_claim(image: Image) -> None:
    image.upload_worker, image.upload_lease, image.deleted_at = "scrubber-1:7:9", LEASE, None


def test_a_users_delayed_delete_passes(rules):
    rules.check_save(active(), changed(active(), delayed_delete), USER)


@pytest.mark.parametrize(
    "change",
    [
        scrubber_claim,
        lambda i: [scrubber_claim(i), data_gone(i)],
        lambda i: [scrubber_claim(i), i.locations.pop(0)],  # a store failed: the rest is left
    ],
    ids=["claim", "data gone", "data going"],
)
def test_the_scrubber_passes_as_a_service_job(rules, change):
    """A scrubber over a keystone registry has the service token alone."""
    waiting = changed(two_locations(), delayed_delete)
    after = changed(waiting, change)
    rules.check_save(waiting, after, JOBS)


@pytest.mark.parametrize(
    "change",
    [
        lambda i: [i.transition(Status.ACTIVE), setattr(i, "deleted_at", None)],  # a restore
        scrubber_claim,
        data_gone,
    ],
    ids=["restore", "claim", "deleted"],
)
def test_an_image_waiting_for_the_scrubber_is_no_users_to_change(rules, change):
    waiting = changed(active(), delayed_delete)
    with pytest.raises(Forbidden, match="waits for the scrubber"):
        rules.check_save(waiting, changed(waiting, change), USER)
    rules.check_save(waiting, changed(waiting, change), ADMIN)  # a restore by the trusted service passes


# -- interoperable import: the stage, the lock and the background job ---------------------------

TASK_ID = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
STAGED_URI = f"file:///var/lib/abbild/staging/{IMAGE_ID}"


def import_task(status: str = "pending", **fields):
    from abbild.tasks import Task, TaskStatus

    values = {"id": TASK_ID, "type": "api_image_import", "owner": "p1", "image_id": IMAGE_ID, **fields}
    return Task(status=TaskStatus(status), **values)


def uploading(**properties) -> Image:
    return dataclasses.replace(
        queued(), status=Status.UPLOADING, upload_worker="api-1:42:99", upload_lease=LEASE, properties=properties
    )


def staged() -> Image:
    return dataclasses.replace(
        queued(),
        status=Status.UPLOADING,
        size=5,
        properties={"os_glance_stage_uri": STAGED_URI, "os_glance_stage_host": "http://api-1:9292"},
    )


def locked(status: Status = Status.IMPORTING) -> Image:
    image = staged()
    image.status = status
    image.upload_worker, image.upload_lease = "api-1:42:99", LEASE
    image.properties.update(
        {"os_glance_import_task": TASK_ID, "os_glance_importing_to_stores": "local", "os_glance_failed_import": ""}
    )
    return image


def take_lock(image: Image) -> None:
    image.status = Status.IMPORTING
    image.upload_worker, image.upload_lease = "api-1:42:99", LEASE
    image.properties.update(
        {"os_glance_import_task": TASK_ID, "os_glance_importing_to_stores": "local", "os_glance_failed_import": ""}
    )


def test_a_user_stages_and_locks_for_a_pending_task(rules):
    claimed = changed(queued(), lambda i: (setattr(i, "status", Status.UPLOADING), setattr(i, "upload_worker", "w")))
    rules.check_save(queued(), claimed, USER)

    def record(image: Image) -> None:
        image.size, image.upload_worker, image.upload_lease = 5, None, None
        image.properties.update({"os_glance_stage_uri": STAGED_URI, "os_glance_stage_host": "http://api-1:9292"})

    rules.check_save(uploading(), changed(uploading(), record), USER)
    rules.check_save(staged(), changed(staged(), take_lock), USER, import_task())
    rules.check_save(queued(), changed(queued(), take_lock), USER, import_task())  # web-download


@pytest.mark.parametrize(
    "task",
    [None, import_task("processing"), import_task(image_id=OTHER_ID), import_task(owner="p2")],
    ids=["no task", "not pending", "another image's", "another project's"],
)
def test_a_lock_without_its_pending_task_is_refused(rules, task):
    with pytest.raises(Forbidden, match="'os_glance_import_task'"):
        rules.check_save(staged(), changed(staged(), take_lock), USER, task)


def test_a_stage_elsewhere_is_refused(rules):
    def elsewhere(image: Image) -> None:
        image.properties["os_glance_stage_uri"] = f"file:///var/lib/abbild/images/{OTHER_ID}"

    with pytest.raises(Forbidden, match="'os_glance_stage_uri'"):
        rules.check_save(uploading(), changed(uploading(), elsewhere), USER)


def test_the_service_token_alone_carries_a_live_import_to_active(rules):
    def activate_import(image: Image) -> None:
        image.status = Status.ACTIVE
        image.locations = [OWN_DATA]
        image.checksum, image.os_hash_algo, image.os_hash_value = "0" * 32, "sha512", "1" * 128
        image.disk_format = "qcow2"  # an import step converted it
        image.properties.update({"os_glance_importing_to_stores": "", "os_distro": "injected"})

    for status in ("pending", "processing"):
        rules.check_save(locked(), changed(locked(), activate_import), JOBS, import_task(status))
    done = changed(locked(), activate_import)
    end = changed(done, lambda i: [i.properties.pop(n) for n in ("os_glance_import_task", "os_glance_stage_uri")])
    end.upload_worker = end.upload_lease = None
    rules.check_save(done, end, JOBS, import_task("processing"))


def test_the_service_token_alone_undoes_a_live_import(rules):
    def undo(image: Image) -> None:
        image.status = Status.UPLOADING
        image.upload_worker = image.upload_lease = None
        del image.properties["os_glance_import_task"]
        image.properties["os_glance_importing_to_stores"] = ""

    rules.check_save(locked(), changed(locked(), undo), JOBS, import_task("processing"))


@pytest.mark.parametrize(
    "change, attribute",
    [
        (lambda i: setattr(i, "locations", [Location("local", f"file:///x/{OTHER_ID}", 5)]), "locations"),
        (lambda i: i.properties.update(os_glance_stage_uri=f"file:///x/{OTHER_ID}"), "os_glance_stage_uri"),
        (lambda i: i.properties.update(os_glance_import_task="another"), "os_glance_import_task"),
    ],
    ids=["another image's data", "another image's stage", "another lock"],
)
def test_the_service_token_alone_changes_no_more_than_the_import(rules, change, attribute):
    def activate_with(image: Image) -> None:
        image.status, image.locations = Status.ACTIVE, [OWN_DATA]
        change(image)

    with pytest.raises(Forbidden, match=f"'{attribute}'"):
        rules.check_save(locked(), changed(locked(), activate_with), JOBS, import_task("processing"))


def test_an_ended_task_leaves_the_import_to_the_user(rules):
    def undo(image: Image) -> None:
        image.status = Status.UPLOADING
        image.upload_worker = image.upload_lease = None
        del image.properties["os_glance_import_task"]

    for task in (import_task("failure"), None):
        with pytest.raises(Forbidden):
            rules.check_save(locked(), changed(locked(), undo), JOBS, task)
        rules.check_save(locked(), changed(locked(), undo), USER, task)  # breaking a stale lock
    with pytest.raises(Forbidden):  # but not while it works
        rules.check_save(locked(), changed(locked(), undo), USER, import_task("processing"))
    with pytest.raises(Forbidden, match="'status'"):  # nor does a user finish one
        rules.check_save(
            locked(), changed(locked(), lambda i: setattr(i, "status", Status.ACTIVE)), USER, import_task("failure")
        )


def test_copy_image_lock_and_copies(rules):
    """copy-image: the lock on an active image needs the policy copy_image
    (administrators, who are trusted anyway); its job adds the copies."""

    def lock(image: Image) -> None:
        image.upload_worker, image.upload_lease = "api-1:42:99", LEASE
        image.properties.update({"os_glance_import_task": TASK_ID, "os_glance_importing_to_stores": "second"})

    with pytest.raises(Forbidden, match="copy_image"):
        rules.check_save(active(), changed(active(), lock), USER, import_task())
    copying = changed(active(), lock)
    copy = Location("second", f"file:///var/lib/abbild/second/{IMAGE_ID}", 5)

    def copied(image: Image) -> None:
        image.locations.append(copy)
        image.properties["os_glance_importing_to_stores"] = ""

    rules.check_save(copying, changed(copying, copied), JOBS, import_task("processing"))
    with pytest.raises(Forbidden, match="'locations'"):
        elsewhere = dataclasses.replace(copy, uri=f"file:///var/lib/abbild/second/{OTHER_ID}")
        rules.check_save(copying, changed(copying, lambda i: i.locations.append(elsewhere)), JOBS, import_task())
    with pytest.raises(Forbidden, match="'locations'"):  # a user adds no copy of their own
        rules.check_save(copying, changed(copying, copied), USER, import_task("processing"))


# -- metadata definitions ---------------------------------------------------------------------

OTHER = Caller(Viewer("p2", user_id="u3", roles=("member", "reader")))
ANONYMOUS = Caller(Viewer(anonymous=True))


def namespace(owner="p1", **fields) -> Namespace:
    return Namespace(namespace="OS::Test", owner=owner, visibility="public", **fields)


@pytest.mark.parametrize(
    "caller, owner, allowed",
    [
        (USER, "p1", True),
        (READER, "p1", True),  # the API's policy decides about roles
        (USER, "p2", False),
        (USER, None, False),
        (OTHER, "p1", False),
        (SERVICE_USER, "service", True),  # a user of its own project, like any other
        (SERVICE_USER, "p1", False),
        (ANONYMOUS, None, False),
        (JOBS, "p1", False),
        (ADMIN, "p2", True),
        (ADMIN, None, True),
        (Caller(None), "p2", True),
    ],
    ids=lambda v: repr(v) if not isinstance(v, Caller) else None,
)
def test_who_creates_namespaces(caller, owner, allowed):
    check = lambda: MetadefRules().check_create(namespace(owner), caller)  # noqa: E731
    if allowed:
        check()
    else:
        with pytest.raises(Forbidden, match="namespace OS::Test|without a user's token|Only a user of a project"):
            check()


CHANGES = {
    "description": lambda n: setattr(n, "description", "new"),
    "rename": lambda n: setattr(n, "namespace", "OS::Renamed"),
    "private": lambda n: setattr(n, "visibility", "private"),
    "tags": lambda n: n.tags.append(MetadefTag("t")),
    "association": lambda n: n.associations.append(Association("OS::Nova::Flavor")),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_the_owners_project_changes_and_deletes_its_namespace(change):
    stored = namespace()
    new = dataclasses.replace(stored, tags=list(stored.tags), associations=list(stored.associations))
    change(new)
    MetadefRules().check_save(stored, new, USER)
    MetadefRules().check_delete(stored, USER)


@pytest.mark.parametrize(
    "caller, owner, match",
    [
        (OTHER, "p1", "it is owned by p1"),
        (USER, None, "it is owned by nobody"),
        (SERVICE_USER, "p1", "it is owned by p1"),
        (ANONYMOUS, "p1", "Only a user of a project"),
        (JOBS, "p1", "without a user's token"),
    ],
    ids=["other project", "nobody's", "service role", "anonymous", "service token alone"],
)
def test_nobody_else_changes_or_deletes_a_namespace(caller, owner, match):
    stored = namespace(owner)
    with pytest.raises(Forbidden, match=match):
        MetadefRules().check_save(stored, dataclasses.replace(stored, description="new"), caller)
    with pytest.raises(Forbidden, match=match):
        MetadefRules().check_delete(stored, caller)


def test_only_administrators_give_a_namespace_away():
    stored = namespace()
    for owner in ("p2", None):
        with pytest.raises(Forbidden, match="Attribute 'owner'"):
            MetadefRules().check_save(stored, dataclasses.replace(stored, owner=owner), USER)
        MetadefRules().check_save(stored, dataclasses.replace(stored, owner=owner), ADMIN)


@pytest.mark.parametrize("caller", [ADMIN, Caller(None)], ids=["admin", "service"])
def test_administrators_and_the_service_write_any_namespace(caller):
    stored = namespace("p2")
    MetadefRules().check_save(stored, dataclasses.replace(stored, owner="p3", namespace="X"), caller)
    MetadefRules().check_delete(stored, caller)
    MetadefRules().check_delete_resource_type("OS::Custom", caller)


@pytest.mark.parametrize("caller", [USER, SERVICE_USER, ANONYMOUS, JOBS], ids=["user", "service role", "anon", "jobs"])
def test_only_administrators_remove_resource_types(caller):
    with pytest.raises(Forbidden, match="Only administrators may remove resource type OS::Custom"):
        MetadefRules().check_delete_resource_type("OS::Custom", caller)
