"""Glance's notifications (abbild.notifications): the payloads, the event of each hook,
disabled_notifications, and the plugin's set-up from the configuration, with
oslo.messaging's log driver (no broker needed). The messagingv2 driver over RabbitMQ is
in tests/functional/test_notifications.py."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import threading
import time
import types
import uuid

import pytest
from oslo_config import cfg

from abbild import notifications
from abbild.errors import ConfigError, Gone, QuotaExceeded, StoreFull
from abbild.image import Image, Location, Status
from abbild.metadefs import Association, MetadefObject, MetadefTag, Namespace, PropertyDefinition
from abbild.plugins import get_plugin_manager, hookimpl, notify
from abbild.registry import Member, Viewer
from abbild.tasks import Task, TaskStatus

ADMIN = Viewer(is_admin=True)
WHEN = datetime.datetime(2026, 12, 3, 5, 28, 14)
IMAGE_KEYS = {
    "id",
    "name",
    "status",
    "created_at",
    "updated_at",
    "min_disk",
    "min_ram",
    "protected",
    "checksum",
    "owner",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "is_public",
    "visibility",
    "properties",
    "tags",
    "deleted",
    "deleted_at",
}


def _image(**kw) -> Image:
    fields = dict(
        id="6a3e5f2c-1111-4222-8333-944455556666",
        name="cirros",
        status=Status.ACTIVE,
        visibility="public",
        owner="p1",
        disk_format="qcow2",
        container_format="bare",
        size=1024,
        virtual_size=4096,
        checksum="c" * 32,
        os_hash_algo="sha512",
        os_hash_value="h" * 128,
        min_disk=1,
        min_ram=64,
        created_at=WHEN,
        updated_at=WHEN + datetime.timedelta(seconds=1),
        tags={"b", "a"},
        properties={"hw_disk_bus": "scsi"},
        locations=[Location("s3", "s3://key:secret@host/bucket/obj", 1024)],
    )
    fields.update(kw)
    return Image(**fields)


class Sent:
    """A send function that records what the notifier plugin hands it."""

    def __init__(self):
        self.items = []

    def __call__(self, priority, event_type, payload):
        self.items.append((priority, event_type, payload))

    @property
    def types(self):
        return [event for _, event, _ in self.items]


def _plugged(disabled=()):
    pm = get_plugin_manager(load_entrypoints=False)
    sent = Sent()
    pm.register(notifications.Notifier(sent, list(disabled)), name="abbild.notifications")
    return pm, sent


# -- payloads -------------------------------------------------------------------------------


def test_the_image_payload_is_glances_and_never_has_locations():
    payload = notifications.image_payload(_image())
    assert set(payload) == IMAGE_KEYS  # no locations, no os_hash_*, no os_hidden (not in Glance's either)
    assert payload == {
        "id": "6a3e5f2c-1111-4222-8333-944455556666",
        "name": "cirros",
        "status": "active",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:15Z",
        "min_disk": 1,
        "min_ram": 64,
        "protected": False,
        "checksum": "c" * 32,
        "owner": "p1",
        "disk_format": "qcow2",
        "container_format": "bare",
        "size": 1024,
        "virtual_size": 4096,
        "is_public": True,
        "visibility": "public",
        "properties": {"hw_disk_bus": "scsi"},
        "tags": ["a", "b"],
        "deleted": False,
        "deleted_at": None,
    }
    assert "secret" not in repr(payload)
    assert notifications.image_payload(_image(visibility="shared"))["is_public"] is False
    staged = _image(properties={"os_glance_stage_uri": "file:///staging/x", "a": "b"})
    assert notifications.image_payload(staged)["properties"] == {"a": "b"}  # hidden from users, and here


def test_timestamps_are_glances_utc_seconds():
    assert notifications.isotime(WHEN) == "2026-12-03T05:28:14Z"
    cet = datetime.timezone(datetime.timedelta(hours=1))
    assert notifications.isotime(datetime.datetime(2026, 12, 3, 6, 28, 14, 999, tzinfo=cet)) == "2026-12-03T05:28:14Z"
    assert notifications.isotime(None) is None


def test_member_task_and_send_payloads():
    member = Member("img", "p2", "accepted", WHEN, WHEN)
    assert notifications.member_payload(member) == {
        "image_id": "img",
        "member_id": "p2",
        "status": "accepted",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:14Z",
        "deleted": False,
        "deleted_at": None,
    }
    task = Task(
        id="t1",
        type="api_image_import",
        owner="p1",
        status=TaskStatus.FAILURE,
        input={"import_req": {"method": {"uri": "https://user:pw@example.com/x"}}},
        result={"image_id": "img"},
        message="it failed",
        created_at=WHEN,
        updated_at=WHEN,
        expires_at=WHEN + datetime.timedelta(hours=48),
    )
    payload = notifications.task_payload(task)
    assert payload == {
        "id": "t1",
        "type": "api_image_import",
        "status": "failure",
        "result": None,
        "owner": "p1",
        "message": None,
        "expires_at": "2026-12-05T05:28:14Z",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:14Z",
        "deleted": False,
        "deleted_at": None,
    }
    assert "pw@" not in repr(payload)  # the input is left out: it may hold credentials
    viewer = Viewer(project_id="p2", user_id="u2")
    assert notifications.send_payload(_image(), 1000, viewer) == {
        "bytes_sent": 1000,
        "image_id": "6a3e5f2c-1111-4222-8333-944455556666",
        "owner_id": "p1",
        "receiver_tenant_id": "p2",
        "receiver_user_id": "u2",
    }


# -- each hook's event ------------------------------------------------------------------------


def test_each_image_hook_sends_its_event():
    pm, sent = _plugged()
    image = _image(properties={"os_glance_importing_to_stores": "s2,s3", "os_glance_failed_import": "s4"})
    store = types.SimpleNamespace(name="fast")
    notify(pm, "abbild_image_created", image=image)
    notify(pm, "abbild_image_updated", image=image)
    notify(pm, "abbild_image_preparing", image=image, store=store)
    notify(pm, "abbild_image_uploaded", image=image, location=image.locations[0])
    notify(pm, "abbild_image_activated", image=image)
    notify(pm, "abbild_image_deactivated", image=image)  # Glance: only the change's image.update
    notify(pm, "abbild_image_sent", image=image, bytes_sent=1024, viewer=ADMIN, error=None)
    notify(pm, "abbild_image_deleted", image=_image(status=Status.PENDING_DELETE, deleted_at=WHEN))
    assert sent.types == [
        "image.create",
        "image.update",
        "image.prepare",
        "image.upload",
        "image.activate",
        "image.send",
        "image.delete",
    ]
    assert {priority for priority, _, _ in sent.items} == {"info"}
    payloads = {event: payload for _, event, payload in sent.items}
    for event in ("image.create", "image.update", "image.activate"):
        assert set(payloads[event]) == IMAGE_KEYS
    lists = {"os_glance_importing_to_stores": ["s2", "s3"], "os_glance_failed_import": ["s4"]}
    assert payloads["image.prepare"] == {**notifications.image_payload(image), **lists, "backend": "fast"}
    assert payloads["image.upload"] == {**notifications.image_payload(image), **lists}  # no backend: as Glance
    deleted = payloads["image.delete"]
    assert deleted["deleted"] is True and deleted["deleted_at"] == "2026-12-03T05:28:14Z"
    assert deleted["status"] == "pending_delete"
    for payload in payloads.values():
        assert "locations" not in payload and "secret" not in repr(payload)


def test_an_immediate_delete_is_dated_now_and_import_lists_are_empty_without_an_import():
    pm, sent = _plugged()
    image = _image(status=Status.DELETED, properties={})
    before = notifications.isotime(datetime.datetime.now(datetime.timezone.utc))
    notify(pm, "abbild_image_deleted", image=image)
    notify(pm, "abbild_image_uploaded", image=image, location=None)
    [(_, _, deleted), (_, _, uploaded)] = sent.items
    assert deleted["deleted"] is True and deleted["deleted_at"] >= before
    assert uploaded["os_glance_importing_to_stores"] == [] and uploaded["os_glance_failed_import"] == []


@pytest.mark.parametrize(
    "error, message",
    [
        (StoreFull("fast", "no space left"), "Image storage media is full: "),
        (QuotaExceeded("no room in your quota"), "Cannot save data for image 6a3e5f2c-"),
        (Gone("6a3e5f2c"), "Image 6a3e5f2c-1111-4222-8333-944455556666 could not be found after upload."),
        (RuntimeError("boom"), "Failed to upload image data for image 6a3e5f2c-"),
    ],
)
def test_a_failed_upload_is_an_error_with_a_message(error, message):
    pm, sent = _plugged()
    notify(pm, "abbild_image_upload_failed", image=_image(status=Status.QUEUED), error=error)
    [(priority, event, payload)] = sent.items
    assert (priority, event) == ("error", "image.upload")
    assert isinstance(payload, str) and payload.startswith(message) and str(error) in payload


def test_a_download_cut_short_is_an_error():
    pm, sent = _plugged()
    viewer = Viewer(project_id="p2", user_id="u2")
    notify(pm, "abbild_image_sent", image=_image(), bytes_sent=10, viewer=viewer, error=OSError("went away"))
    assert sent.items == [("error", "image.send", notifications.send_payload(_image(), 10, viewer))]


def test_member_hooks_send_member_events():
    pm, sent = _plugged()
    image = _image(visibility="shared")
    member = Member(image.id, "p2", "pending", WHEN, WHEN)
    notify(pm, "abbild_image_member_created", image=image, member=member)
    notify(pm, "abbild_image_member_updated", image=image, member=Member(image.id, "p2", "accepted", WHEN, WHEN))
    notify(pm, "abbild_image_member_deleted", image=image, member=member)
    assert sent.types == ["image.member.create", "image.member.update", "image.member.delete"]
    assert sent.items[1][2]["status"] == "accepted"
    deleted = sent.items[2][2]
    assert deleted["deleted"] is True and deleted["deleted_at"].endswith("Z") and deleted["member_id"] == "p2"


def test_task_hooks_fed_with_tasks_send_task_events():
    """The tasks helper's engine fires these hooks; here real Task objects go through
    them as it will, along the status table."""
    pm, sent = _plugged()
    task = Task(id=str(uuid.uuid4()), type="api_image_import", owner="p1", created_at=WHEN, updated_at=WHEN)
    notify(pm, "abbild_task_created", task=task)
    task.transition(TaskStatus.PROCESSING)
    notify(pm, "abbild_task_processing", task=task)
    task.transition(TaskStatus.SUCCESS)
    task.expires_at = WHEN + datetime.timedelta(hours=48)
    notify(pm, "abbild_task_succeeded", task=task)
    failed = Task(id=str(uuid.uuid4()), type="import", status=TaskStatus.PROCESSING, message="bad URL")
    failed.transition(TaskStatus.FAILURE)
    notify(pm, "abbild_task_failed", task=failed)
    assert sent.types == ["task.create", "task.run", "task.processing", "task.success", "task.failure"]
    statuses = [payload["status"] for _, _, payload in sent.items]
    assert statuses == ["pending", "processing", "processing", "success", "failure"]
    assert sent.items[3][2]["expires_at"] == "2026-12-05T05:28:14Z"
    assert all(set(p) >= {"id", "type", "owner", "result", "message"} and "input" not in p for _, _, p in sent.items)


# -- metadefs ----------------------------------------------------------------------------------

LATER = WHEN + datetime.timedelta(seconds=1)
WATCHDOG = {"title": "Watchdog Action", "type": "string", "enum": ["disabled", "reset"], "default": "disabled"}


def _namespace() -> Namespace:
    return Namespace(
        namespace="OS::Compute::Watchdog",
        display_name="Watchdog Behavior",
        description="Compute drivers may enable a watchdog.",
        visibility="public",
        protected=True,
        owner="admin-project",
        created_at=WHEN,
        updated_at=LATER,
        properties={"hw_watchdog_action": WATCHDOG},
        objects=[
            MetadefObject(
                "Limits",
                description="CPU limits",
                required=["cpu_sockets"],
                properties={"cpu_sockets": {"type": "integer", "minimum": 0, "title": "Sockets"}},
                created_at=WHEN,
                updated_at=LATER,
            )
        ],
        tags=[MetadefTag("watchdog", WHEN, LATER)],
        associations=[Association("OS::Glance::Image", "hw_", None, WHEN, LATER)],
    )


def _definition_fields(**set_fields) -> dict:
    return {field: set_fields.get(field) for field in notifications.DEFINITION_FIELDS}


def test_metadef_payloads_are_glances():
    namespace = _namespace()
    assert notifications.namespace_payload(namespace, "OS::Compute::Dog") == {
        "namespace": "OS::Compute::Watchdog",
        "namespace_old": "OS::Compute::Dog",
        "display_name": "Watchdog Behavior",
        "protected": True,
        "visibility": "public",
        "owner": "admin-project",
        "description": "Compute drivers may enable a watchdog.",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:15Z",
        "deleted": False,
        "deleted_at": None,
    }
    assert notifications.namespace_payload(namespace)["namespace_old"] == "OS::Compute::Watchdog"
    assert notifications.object_payload(namespace, namespace.objects[0]) == {
        "namespace": "OS::Compute::Watchdog",
        "name": "Limits",
        "name_old": "Limits",
        "properties": [{"name": "cpu_sockets", **_definition_fields(type="integer", minimum=0, title="Sockets")}],
        "required": ["cpu_sockets"],
        "description": "CPU limits",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:15Z",
        "deleted": False,
        "deleted_at": None,
    }
    prop = PropertyDefinition("hw_watchdog_action", WATCHDOG)
    assert notifications.property_payload(namespace, prop, "watchdog") == {
        "namespace": "OS::Compute::Watchdog",
        "name": "hw_watchdog_action",
        "name_old": "watchdog",
        **_definition_fields(title="Watchdog Action", type="string", enum=["disabled", "reset"], default="disabled"),
        "deleted": False,
        "deleted_at": None,
    }
    assert notifications.resource_type_payload(namespace, namespace.associations[0]) == {
        "namespace": "OS::Compute::Watchdog",
        "name": "OS::Glance::Image",
        "name_old": "OS::Glance::Image",
        "prefix": "hw_",
        "properties_target": None,
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:15Z",
        "deleted": False,
        "deleted_at": None,
    }
    assert notifications.tag_payload(namespace, namespace.tags[0], "dog") == {
        "namespace": "OS::Compute::Watchdog",
        "name": "watchdog",
        "name_old": "dog",
        "created_at": "2026-12-03T05:28:14Z",
        "updated_at": "2026-12-03T05:28:15Z",
        "deleted": False,
        "deleted_at": None,
    }


METADEF_EVENTS = [
    ("metadef_namespace.create", None, None),
    ("metadef_namespace.update", None, "OS::Compute::Dog"),
    ("metadef_namespace.delete_objects", None, None),
    ("metadef_namespace.delete_properties", None, None),
    ("metadef_namespace.delete_tags", None, None),
    ("metadef_namespace.delete", None, None),
    ("metadef_object.create", "object", None),
    ("metadef_object.update", "object", "Old Limits"),
    ("metadef_object.delete", "object", None),
    ("metadef_property.create", "property", None),
    ("metadef_property.update", "property", "watchdog"),
    ("metadef_property.delete", "property", None),
    ("metadef_tag.create", "tag", None),
    ("metadef_tag.update", "tag", "dog"),
    ("metadef_tag.delete", "tag", None),
    ("metadef_resource_type.create", "association", None),
    ("metadef_resource_type.delete", "association", None),
]


def _item(kind, namespace):
    return {
        None: None,
        "object": namespace.objects[0],
        "property": PropertyDefinition("hw_watchdog_action", WATCHDOG),
        "tag": namespace.tags[0],
        "association": namespace.associations[0],
    }[kind]


def test_the_metadef_hook_sends_each_event_with_its_payload():
    pm, sent = _plugged()
    namespace = _namespace()
    before = notifications.isotime(datetime.datetime.now(datetime.timezone.utc))
    for event, kind, old_name in METADEF_EVENTS:
        notify(
            pm,
            "abbild_metadef_changed",
            event=event,
            namespace=namespace,
            item=_item(kind, namespace),
            old_name=old_name,
        )
    assert sent.types == [event for event, _, _ in METADEF_EVENTS]
    assert {priority for priority, _, _ in sent.items} == {"info"}
    for (event, kind, old_name), (_, _, payload) in zip(METADEF_EVENTS, sent.items, strict=True):
        assert payload["namespace"] == "OS::Compute::Watchdog", event
        deleted = event.endswith(".delete")  # delete_objects & co. are the namespace, still there
        assert payload["deleted"] is deleted, event
        assert (payload["deleted_at"] >= before) if deleted else payload["deleted_at"] is None, event
        name_key = "namespace_old" if kind is None else "name_old"
        expected_old = old_name or (namespace.namespace if kind is None else _item(kind, namespace).name)
        assert payload[name_key] == expected_old, event
    payloads = dict(zip(sent.types, (p for _, _, p in sent.items), strict=True))
    assert payloads["metadef_property.create"]["enum"] == ["disabled", "reset"]
    assert payloads["metadef_resource_type.create"]["prefix"] == "hw_"
    assert payloads["metadef_object.update"]["properties"][0]["name"] == "cpu_sockets"
    assert payloads["metadef_namespace.delete_tags"]["display_name"] == "Watchdog Behavior"


@pytest.mark.parametrize(
    "disabled, left",
    [
        (["metadef_tag"], {"metadef_namespace.create", "metadef_object.delete", "metadef_resource_type.create"}),
        (["metadef_namespace.create", "metadef_object"], {"metadef_tag.create", "metadef_resource_type.create"}),
        (["metadef_namespace"], {"metadef_object.delete", "metadef_tag.create", "metadef_resource_type.create"}),
        (
            ["metadef_resource_type.create", "image"],
            {"metadef_namespace.create", "metadef_object.delete", "metadef_tag.create"},
        ),
        (
            ["metadef"],
            {"metadef_namespace.create", "metadef_object.delete", "metadef_tag.create", "metadef_resource_type.create"},
        ),  # no group "metadef": a prefix up to a dot
    ],
)
def test_disabled_notifications_hold_metadef_events_by_type_and_group(disabled, left):
    pm, sent = _plugged(disabled)
    namespace = _namespace()
    for event, kind in (
        ("metadef_namespace.create", None),
        ("metadef_object.delete", "object"),
        ("metadef_tag.create", "tag"),
        ("metadef_resource_type.create", "association"),
    ):
        notify(
            pm, "abbild_metadef_changed", event=event, namespace=namespace, item=_item(kind, namespace), old_name=None
        )
    assert set(sent.types) == left


def test_a_failing_metadef_plugin_fails_no_request(caplog):
    """The hook fires after the write was committed: a broken plugin is logged, and the
    notifier still sends."""

    class Broken:
        @hookimpl
        def abbild_metadef_changed(self, event, namespace, item, old_name):
            raise RuntimeError("broken")

    pm, sent = _plugged()
    pm.register(Broken())
    notify(
        pm, "abbild_metadef_changed", event="metadef_namespace.create", namespace=_namespace(), item=None, old_name=None
    )
    assert sent.types == ["metadef_namespace.create"]
    assert "failed in abbild_metadef_changed" in caplog.text


# -- disabled_notifications -----------------------------------------------------------------

ALL_EVENTS = {
    "abbild_image_created": "image.create",
    "abbild_image_member_created": "image.member.create",
    "abbild_task_created": "task.create",
    "abbild_task_succeeded": "task.success",
}


def _fire_all(pm):
    image, task = _image(), Task(id="t", type="import")
    notify(pm, "abbild_image_created", image=image)
    notify(pm, "abbild_image_member_created", image=image, member=Member(image.id, "p2"))
    notify(pm, "abbild_task_created", task=task)
    notify(pm, "abbild_task_succeeded", task=task)


@pytest.mark.parametrize(
    "disabled, left",
    [
        ([], ["image.create", "image.member.create", "task.create", "task.success"]),
        (["image.create"], ["image.member.create", "task.create", "task.success"]),  # one event type
        (["task.success", "image.member.create"], ["image.create", "task.create"]),
        (["image.member"], ["image.create", "task.create", "task.success"]),  # a group
        (["image"], ["task.create", "task.success"]),  # a group holds its subgroups
        (["task"], ["image.create", "image.member.create"]),
        (["ima", "image.c", "tas"], ["image.create", "image.member.create", "task.create", "task.success"]),
    ],
)
def test_disabled_notifications_by_type_and_by_group(disabled, left):
    pm, sent = _plugged(disabled)
    _fire_all(pm)
    assert sent.types == left


# -- set-up from the configuration ------------------------------------------------------------


def _conf(tmp_path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / "abbild-api.conf"
    path.write_text(text)
    conf = cfg.ConfigOpts()
    conf(["--config-file", str(path)])
    return conf


def test_without_the_section_nothing_is_registered_and_oslo_messaging_stays_unimported(tmp_path):
    (tmp_path / "abbild-api.conf").write_text("[DEFAULT]\ndefault_publisher_id = image.x\n")
    # The plugins as every service sets them up, in a fresh interpreter.
    script = (
        "import sys\n"
        "from oslo_config import cfg\n"
        "from abbild import opts\n"
        "from abbild.plugins import get_plugin_manager\n"
        "conf = cfg.ConfigOpts(); opts.register_opts(conf)\n"
        f"conf(['--config-file', {str(tmp_path / 'abbild-api.conf')!r}])\n"
        "pm = get_plugin_manager()\n"
        "pm.hook.abbild_configure.call_historic(kwargs={'conf': conf})\n"
        "assert not pm.has_plugin('abbild.notifications')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('oslo_messaging', 'kombu', 'eventlet'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_noop_or_no_driver_sends_nothing(tmp_path):
    for text in ("[oslo_messaging_notifications]\ndriver = noop\n", "[oslo_messaging_notifications]\ntopics = x\n"):
        assert notifications.from_config(_conf(tmp_path, text)) is None


def test_an_unknown_driver_or_a_bad_transport_url_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match=r"driver: no notification driver named rabbitmqq; use one of .*messagingv2"):
        notifications.from_config(_conf(tmp_path, "[oslo_messaging_notifications]\ndriver = rabbitmqq\n"))
    bad = "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = nosuchbus://host/\n"
    with pytest.raises(ConfigError, match=r"transport_url .*cannot be used for notifications"):
        notifications.from_config(_conf(tmp_path, bad))


def test_the_log_driver_needs_no_broker(tmp_path, caplog):
    """driver = log, and a transport URL nobody listens at: the notifications are logged
    by oslo.messaging (logger oslo.messaging.notification.<event>) with Glance's
    publisher id, and the broker is never asked."""
    conf = _conf(
        tmp_path,
        "[DEFAULT]\ndefault_publisher_id = image.node1\ntransport_url = rabbit://guest:guest@127.0.0.1:1/\n"
        "[oslo_messaging_notifications]\ndriver = log\n",
    )
    pm = get_plugin_manager(load_entrypoints=False)
    notifications.Setup(pm).abbild_configure(conf)  # as the built-in's does, given the service's config
    notifier = pm.get_plugin("abbild.notifications")
    assert isinstance(notifier, notifications.Notifier)
    caplog.set_level(logging.INFO, logger="oslo.messaging.notification")
    started = time.monotonic()
    notify(pm, "abbild_image_created", image=_image())
    notifier.send.close(timeout=10)
    assert time.monotonic() - started < 5
    [record] = [r for r in caplog.records if r.name == "oslo.messaging.notification.image.create"]
    assert record.levelno == logging.INFO
    import json

    message = json.loads(record.getMessage())
    assert message["event_type"] == "image.create" and message["publisher_id"] == "image.node1"
    assert message["priority"] == "INFO" and message["payload"]["id"] == _image().id
    assert conf.control_exchange == "glance"


# -- the sender -------------------------------------------------------------------------------


class _Stuck:
    """A notifier whose broker never answers (until released)."""

    def __init__(self):
        self.release = threading.Event()
        self.sent = []
        self.transport = types.SimpleNamespace(cleanup=lambda: None)

    def info(self, ctxt, event_type, payload):
        self.release.wait(30)
        self.sent.append(event_type)


def test_a_stuck_broker_never_blocks_the_caller_and_the_buffer_bounds_what_waits(caplog):
    stuck = _Stuck()
    sender = notifications.Sender(lambda: stuck, buffer=10)
    started = time.monotonic()
    for i in range(100):
        sender("info", f"image.update.{i}", {})
    assert time.monotonic() - started < 1  # 100 sends, none waited for the broker
    dropped = sender.dropped
    assert dropped in (89, 90)  # ten wait in the buffer, and one in the notifier's hands, or about to be
    assert "dropped: 10 wait for the messaging transport already" in caplog.text
    stuck.release.set()
    sender.close(timeout=10)
    assert len(stuck.sent) == 100 - dropped and stuck.sent[0] == "image.update.0"
    assert stuck.sent == sorted(stuck.sent, key=lambda e: int(e.rsplit(".")[-1]))  # in order


def test_the_notifier_plugin_on_the_service(service):
    """The service's own calls, through the notifier plugin: the events of a shared
    image's life, in order."""
    sent = Sent()
    service.plugins.register(notifications.Notifier(sent), name="abbild.notifications")
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", owner="p1"), ADMIN)
    service.update(image.id, lambda i: i.properties.update(foo="bar"), ADMIN)
    service.uploads.upload(image.id, [b"data"], declared_size=4, viewer=ADMIN)
    service.add_member(image.id, "p2", ADMIN)
    service.set_member_status(image.id, "p2", "accepted", ADMIN)
    service.delete_member(image.id, "p2", ADMIN)
    service.set_active(image.id, False, ADMIN)
    service.set_active(image.id, True, ADMIN)
    service.deletes.delete(image.id, ADMIN)
    assert sent.types == [
        "image.create",
        "image.update",
        "image.prepare",
        "image.upload",
        "image.activate",
        "image.member.create",
        "image.member.update",
        "image.member.delete",
        "image.update",  # deactivated
        "image.update",  # reactivated
        "image.activate",
        "image.delete",
    ]
    payloads = [p for _, _, p in sent.items]
    assert payloads[2]["status"] == "saving" and payloads[2]["backend"] == "mem"
    assert payloads[3]["status"] == "active" and payloads[3]["size"] == 4
    assert payloads[-1]["status"] == "deleted" and payloads[-1]["deleted"] is True
