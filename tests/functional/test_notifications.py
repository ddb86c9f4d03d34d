"""Glance's notifications from a real ``abbild serve``, over the machine's RabbitMQ.

The server runs with ``[oslo_messaging_notifications] driver = messagingv2`` and a topic
of this module's own; python-glanceclient does the work, and a consumer reads what
reaches the broker straight from the queues oslo.messaging declares (``<topic>.info``,
``<topic>.error`` in the exchange ``glance``), so the test sees what Ceilometer would.
A second server points at a port nobody listens at: its requests neither fail nor wait.

RabbitMQ is one of this kind of machine's services (tools/start-rabbitmq.sh starts it
when it stopped); ``ABBILD_TEST_RABBITMQ`` names another (``host:port``, guest/guest).
Under CI=true a broker that cannot be reached is a failure, not a skip.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid

import pytest
import requests
from glanceclient import Client, exc

from tests.functional.conftest import free_port
from tests.functional.helpers import server_config, who

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")

RABBITMQ = os.environ.get("ABBILD_TEST_RABBITMQ", "127.0.0.1:5672")
TOPIC = f"abbild-test-{uuid.uuid4().hex[:12]}"
SIZE = 3 * 1024 * 1024 + 17
# More than loopback's socket buffers hold, so a client that leaves early cuts it short.
BIG = 48 * 1024 * 1024


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rabbitmq():
    if not _reachable(RABBITMQ):
        reason = f"RabbitMQ is not reachable at {RABBITMQ} (bash tools/start-rabbitmq.sh starts it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return RABBITMQ


class Consumer:
    """What the server published to *topic*, read from its queues as it comes."""

    def __init__(self, address: str, topic: str) -> None:
        import amqp

        self.topic = topic
        self.connection = amqp.Connection(address, userid="guest", password="guest", connect_timeout=10)
        self.connection.connect()
        self.messages: list[dict] = []

    def _drain(self) -> None:
        import amqp

        for priority in ("info", "error"):
            channel = self.connection.channel()
            try:
                while (message := channel.basic_get(queue=f"{self.topic}.{priority}", no_ack=True)) is not None:
                    envelope = json.loads(message.body)
                    assert envelope["oslo.version"] == "2.0"  # messagingv2's envelope
                    self.messages.append(json.loads(envelope["oslo.message"]))
            except amqp.NotFound:
                pass  # no notification of this priority yet: the server declares the queue as it sends
            finally:
                if channel.is_open:
                    channel.close()

    def of(self, event_type: str, about: str) -> list[dict]:
        """The notifications of *event_type* about the image (or member) *about*."""

        def concerns(payload) -> bool:
            if isinstance(payload, str):  # an error's message
                return about in payload
            return about in (payload.get("id"), payload.get("image_id"))

        return [m for m in self.messages if m["event_type"] == event_type and concerns(m["payload"])]

    def wait(self, event_type: str, about: str, count: int = 1, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            found = self.of(event_type, about)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) == count, f"{event_type} about {about}: {found} (all: {self.messages})"
                return found
            time.sleep(0.1)

    def where(self, event_type: str, test, count: int = 1, timeout: float = 30) -> list[dict]:
        """The notifications of *event_type* whose payload passes *test*, once *count* came."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            found = [m for m in self.messages if m["event_type"] == event_type and test(m["payload"])]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) == count, f"{event_type}: {found} (all: {self.messages})"
                return found
            time.sleep(0.1)

    def close(self) -> None:
        channel = self.connection.channel()
        for priority in ("info", "error"):
            try:
                channel.queue_delete(f"{self.topic}.{priority}")
            except Exception:
                channel = self.connection.channel()
        self.connection.close()


NOTIFYING = """
transport_url = rabbit://guest:guest@{rabbitmq}/
default_publisher_id = image.functional
image_size_cap = {cap}
"""


@pytest.fixture(scope="module")
def notifying(server_factory, rabbitmq):
    """The server sending its notifications to this module's topic."""
    config = server_config(
        flavor="trusted-headers",
        default=NOTIFYING.format(rabbitmq=rabbitmq, cap=BIG + 1024),
        stores=f"[oslo_messaging_notifications]\ndriver = messagingv2\ntopics = {TOPIC}\n",
    )
    return server_factory("notifications", config)


@pytest.fixture(scope="module")
def consumer(rabbitmq, notifying):
    consumer = Consumer(rabbitmq, TOPIC)
    yield consumer
    consumer.close()


def _client(url: str, project: str) -> Client:
    """python-glanceclient as a member of *project*, behind a gateway that sets the
    trusted headers. glanceclient %-escapes its identity headers' values, the comma of
    X-Roles too, so the roles go in as its session's header."""
    headers = who(project, "member", "reader")
    roles = headers.pop("X-Roles")
    client = Client("2", endpoint=url, token="x", identity_headers=headers)
    client.http_client.session.headers["X-Roles"] = roles
    return client


@pytest.fixture
def owner(notifying):
    project = f"owner-{uuid.uuid4().hex[:8]}"
    return project, _client(notifying.url, project)


@pytest.fixture
def friend(notifying):
    project = f"friend-{uuid.uuid4().hex[:8]}"
    return project, _client(notifying.url, project)


def _check_image_payload(payload: dict, image_id: str, owner: str, status: str) -> None:
    assert set(payload) >= {"id", "name", "status", "created_at", "updated_at", "checksum", "size", "virtual_size"}
    assert payload["id"] == image_id and payload["owner"] == owner and payload["status"] == status
    assert payload["created_at"].endswith("Z") and "T" in payload["created_at"]
    assert "locations" not in payload and "file://" not in json.dumps(payload)


def test_an_images_life_reaches_the_broker_as_glances_notifications(owner, friend, consumer):
    (owner_project, glance), (friend_project, glance_friend) = owner, friend
    image = glance.images.create(name="n1", disk_format="raw", container_format="bare", visibility="shared", foo="bar")
    [create] = consumer.wait("image.create", image.id)
    assert create["publisher_id"] == "image.functional" and create["priority"] == "INFO"
    _check_image_payload(create["payload"], image.id, owner_project, "queued")
    assert create["payload"]["properties"] == {"foo": "bar"} and create["payload"]["is_public"] is False
    assert create["payload"]["visibility"] == "shared" and create["payload"]["deleted"] is False

    glance.images.update(image.id, name="n2")
    [update] = consumer.wait("image.update", image.id)
    assert update["payload"]["name"] == "n2"

    data = os.urandom(SIZE)
    glance.images.upload(image.id, io.BytesIO(data), image_size=SIZE)
    [prepare] = consumer.wait("image.prepare", image.id)
    _check_image_payload(prepare["payload"], image.id, owner_project, "saving")
    assert prepare["payload"]["backend"] == "local"
    assert prepare["payload"]["os_glance_importing_to_stores"] == [] == prepare["payload"]["os_glance_failed_import"]
    [upload] = consumer.wait("image.upload", image.id)
    _check_image_payload(upload["payload"], image.id, owner_project, "active")
    assert upload["priority"] == "INFO" and upload["payload"]["size"] == SIZE
    assert upload["payload"]["checksum"] == glance.images.get(image.id).checksum
    [activate] = consumer.wait("image.activate", image.id)
    _check_image_payload(activate["payload"], image.id, owner_project, "active")

    glance.image_members.create(image.id, friend_project)
    [member_create] = consumer.wait("image.member.create", image.id)
    assert member_create["payload"]["member_id"] == friend_project and member_create["payload"]["status"] == "pending"
    glance_friend.image_members.update(image.id, friend_project, "accepted")
    [member_update] = consumer.wait("image.member.update", image.id)
    assert member_update["payload"]["status"] == "accepted" and member_update["payload"]["deleted"] is False

    assert b"".join(glance_friend.images.data(image.id)) == data  # sent with sendfile, zero-copy
    [send] = consumer.wait("image.send", image.id)
    assert send["priority"] == "INFO"
    assert send["payload"] == {
        "bytes_sent": SIZE,
        "image_id": image.id,
        "owner_id": owner_project,
        "receiver_tenant_id": friend_project,
        "receiver_user_id": f"u-{friend_project}",
    }

    glance.image_members.delete(image.id, friend_project)
    [member_delete] = consumer.wait("image.member.delete", image.id)
    assert member_delete["payload"]["deleted"] is True and member_delete["payload"]["deleted_at"].endswith("Z")

    glance.images.delete(image.id)
    [delete] = consumer.wait("image.delete", image.id)
    _check_image_payload(delete["payload"], image.id, owner_project, "deleted")
    assert delete["payload"]["deleted"] is True and delete["payload"]["deleted_at"].endswith("Z")
    # Each event once, none at ERROR.
    for event in ("image.create", "image.update", "image.prepare", "image.upload", "image.activate", "image.send"):
        assert len(consumer.of(event, image.id)) == 1, event
    assert [m for m in consumer.messages if m["priority"] != "INFO" and image.id in json.dumps(m)] == []


def test_a_range_is_a_whole_send_and_a_cut_download_an_error(owner, consumer, notifying):
    owner_project, glance = owner
    image = glance.images.create(disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(bytes(BIG)), image_size=BIG)
    url = f"{notifying.url}/v2/images/{image.id}/file"
    resp = requests.get(url, headers={**who(owner_project), "Range": "bytes=10-19"}, timeout=10)
    assert resp.status_code == 206 and resp.content == bytes(10)
    [ranged] = consumer.wait("image.send", image.id)
    assert ranged["priority"] == "INFO" and ranged["payload"]["bytes_sent"] == 10
    # The client leaves after the first KiB: the server's sendfile stops where the
    # connection broke, and says so.
    with requests.get(url, headers=who(owner_project), stream=True, timeout=10) as resp:
        assert resp.status_code == 200 and len(resp.raw.read(1024)) == 1024
    [_, cut] = consumer.wait("image.send", image.id, count=2)
    assert cut["priority"] == "ERROR" and 1024 <= cut["payload"]["bytes_sent"] < BIG


def test_an_import_sends_its_tasks_and_the_images_events(owner, consumer):
    """glance-direct through python-glanceclient: the import engine's task hooks and the
    image's prepare/upload/activate, as Glance sends them for an import."""
    owner_project, glance = owner
    image = glance.images.create(disk_format="raw", container_format="bare")
    glance.images.stage(image.id, io.BytesIO(b"s" * SIZE))
    glance.images.image_import(image.id, method="glance-direct")
    [activate] = consumer.wait("image.activate", image.id, timeout=60)
    _check_image_payload(activate["payload"], image.id, owner_project, "active")
    [upload] = consumer.wait("image.upload", image.id)
    assert upload["priority"] == "INFO" and upload["payload"]["size"] == SIZE
    assert upload["payload"]["os_glance_failed_import"] == []
    prepares = consumer.of("image.prepare", image.id)
    assert prepares and prepares[-1]["payload"]["backend"] == "local"

    def ours(payload) -> bool:
        return payload["owner"] == owner_project and payload["type"] == "api_image_import"

    [created] = consumer.where("task.create", ours)
    task_id = created["payload"]["id"]
    assert created["payload"]["status"] == "pending" and "input" not in created["payload"]
    for event, status in (("task.run", "processing"), ("task.processing", "processing"), ("task.success", "success")):
        [task] = consumer.where(event, ours)
        assert (task["payload"]["id"], task["payload"]["status"]) == (task_id, status), event
        assert task["payload"]["result"] is None and task["payload"]["message"] is None
    assert consumer.where("task.success", ours)[0]["payload"]["expires_at"].endswith("Z")


def test_a_failed_upload_is_an_error_notification(owner, consumer):
    _, glance = owner
    image = glance.images.create(disk_format="raw", container_format="bare")
    with pytest.raises(exc.HTTPException) as raised:
        glance.images.upload(image.id, io.BytesIO(bytes(BIG + 4096)))  # past image_size_cap
    assert raised.value.code == 413
    [failed] = consumer.wait("image.upload", image.id)
    assert failed["priority"] == "ERROR"
    assert failed["payload"].startswith(f"Cannot save data for image {image.id}: ")
    assert "image_size_cap" in failed["payload"]
    assert glance.images.get(image.id).status == "queued"


def test_metadef_changes_reach_the_broker_as_glances_notifications(notifying, consumer):
    """A namespace, its object, property, tags and resource type association created,
    renamed and deleted through /v2/metadefs with python-glanceclient as an
    administrator: Glance's metadef_* events, each once, at INFO, with Glance's payloads."""
    project = f"md-{uuid.uuid4().hex[:8]}"
    headers = who(project, "admin", "member", "reader")
    roles = headers.pop("X-Roles")
    admin = Client("2", endpoint=notifying.url, token="x", identity_headers=headers)
    admin.http_client.session.headers["X-Roles"] = roles
    first, name = f"Test::Notify::{project}", f"Test::Notified::{project}"
    ours = {first, name}

    def one(event_type: str, test=lambda payload: True) -> dict:
        [message] = consumer.where(event_type, lambda p: p.get("namespace") in ours and test(p))
        assert message["priority"] == "INFO" and message["publisher_id"] == "image.functional", message
        return message["payload"]

    admin.metadefs_namespace.create(namespace=first, display_name="Notify", visibility="public")
    created = one("metadef_namespace.create")
    assert created["namespace"] == created["namespace_old"] == first and created["owner"] == project
    assert (created["visibility"], created["protected"], created["display_name"]) == ("public", False, "Notify")
    assert created["created_at"].endswith("Z") and created["deleted"] is False and created["deleted_at"] is None
    admin.metadefs_namespace.update(first, namespace=name, description="renamed")
    renamed = one("metadef_namespace.update")
    assert (renamed["namespace"], renamed["namespace_old"], renamed["description"]) == (name, first, "renamed")

    admin.metadefs_object.create(
        name,
        name="Limits",
        required=["cores"],
        properties={"cores": {"title": "Cores", "type": "integer", "minimum": 1}},
    )
    obj = one("metadef_object.create")
    assert (obj["namespace"], obj["name"], obj["name_old"], obj["required"]) == (name, "Limits", "Limits", ["cores"])
    [cores] = obj["properties"]
    assert (cores["name"], cores["type"], cores["title"], cores["minimum"]) == ("cores", "integer", "Cores", 1)
    admin.metadefs_object.update(name, "Limits", name="CPU Limits")
    renamed_object = one("metadef_object.update")
    assert (renamed_object["name"], renamed_object["name_old"]) == ("CPU Limits", "Limits")
    admin.metadefs_object.create(name, name="Spare")
    one("metadef_object.create", lambda p: p["name"] == "Spare")
    admin.metadefs_object.delete(name, "Spare")
    spare = one("metadef_object.delete")
    assert spare["name"] == "Spare" and spare["deleted"] is True and spare["deleted_at"].endswith("Z")

    admin.metadefs_property.create(name, name="policy", title="Policy", type="string", enum=["shared", "dedicated"])
    prop = one("metadef_property.create")
    assert (prop["name"], prop["type"], prop["enum"], prop["title"]) == (
        "policy",
        "string",
        ["shared", "dedicated"],
        "Policy",
    )
    assert "created_at" not in prop  # as Glance's
    admin.metadefs_property.update(name, "policy", name="cpu_policy", title="Policy", type="string")
    assert one("metadef_property.update")["name_old"] == "policy"
    admin.metadefs_property.delete(name, "cpu_policy")
    gone = one("metadef_property.delete")
    assert gone["name"] == "cpu_policy" and gone["deleted"] is True and gone["deleted_at"].endswith("Z")

    admin.metadefs_tag.create(name, "fast")
    assert one("metadef_tag.create", lambda p: p["name"] == "fast")["name_old"] == "fast"
    admin.metadefs_tag.update(name, "fast", name="quick")
    assert one("metadef_tag.update")["name_old"] == "fast"
    admin.metadefs_tag.delete(name, "quick")
    assert one("metadef_tag.delete")["deleted"] is True
    # A generator: nothing is sent until it is read. (Its append=True puts a bool in a
    # header, which requests refuses; replacing the namespace's tags is the same event.)
    list(admin.metadefs_tag.create_multiple(name, tags=["a", "b"]))
    for tag in ("a", "b"):  # a bulk create: one event per tag, as Glance
        assert one("metadef_tag.create", lambda p, tag=tag: p["name"] == tag)["deleted"] is False

    admin.metadefs_resource_type.associate(name, name="OS::Glance::Image", prefix="hw_")
    association = one("metadef_resource_type.create")
    assert (association["name"], association["prefix"], association["properties_target"]) == (
        "OS::Glance::Image",
        "hw_",
        None,
    )
    admin.metadefs_resource_type.deassociate(name, "OS::Glance::Image")
    assert one("metadef_resource_type.delete")["deleted"] is True

    admin.metadefs_property.create(name, name="again", title="Again", type="boolean")
    one("metadef_property.create", lambda p: p["name"] == "again")
    admin.metadefs_object.delete_all(name)
    admin.metadefs_property.delete_all(name)
    admin.metadefs_tag.delete_all(name)
    for event in ("delete_objects", "delete_properties", "delete_tags"):
        cleared = one(f"metadef_namespace.{event}")
        assert cleared["namespace"] == name and cleared["deleted"] is False, event
    admin.metadefs_namespace.delete(name)
    deleted = one("metadef_namespace.delete")
    assert deleted["namespace"] == name and deleted["deleted"] is True and deleted["deleted_at"].endswith("Z")
    object_deletes = [
        m
        for m in consumer.messages
        if m["event_type"] == "metadef_object.delete" and m["payload"].get("namespace") in ours
    ]
    assert len(object_deletes) == 1  # Spare's: delete_objects is one event for the namespace, not one per object


def test_a_dead_broker_fails_no_request_and_holds_none(server_factory, rabbitmq):
    """Notifications to a port nobody listens at, with oslo.messaging's default of
    retrying forever: every call answers as fast as without notifications."""
    dead = f"127.0.0.1:{free_port()}"
    config = server_config(
        flavor="trusted-headers",
        default=f"transport_url = rabbit://guest:guest@{dead}/\n",
        stores=f"[oslo_messaging_notifications]\ndriver = messagingv2\ntopics = {TOPIC}-dead\n",
    )
    srv = server_factory("notifications-dead", config)
    project = f"p-{uuid.uuid4().hex[:8]}"
    glance = _client(srv.url, project)
    started = time.monotonic()
    image = glance.images.create(disk_format="raw", container_format="bare", visibility="shared")
    glance.images.upload(image.id, io.BytesIO(b"z" * SIZE), image_size=SIZE)
    glance.image_members.create(image.id, "friend")
    assert b"".join(glance.images.data(image.id)) == b"z" * SIZE
    glance.images.update(image.id, name="still fine")
    glance.images.delete(image.id)
    assert time.monotonic() - started < 10, "the requests waited for the broker"
    # oslo.messaging tried, off the requests' path, and said so.
    deadline = time.monotonic() + 20
    while "Could not send notification to" not in srv.read_log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"Could not send notification to {TOPIC}-dead" in srv.read_log()
    assert srv.proc.poll() is None and requests.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200
