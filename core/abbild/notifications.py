"""Glance's notification stream, as a built-in plugin.

With ``[oslo_messaging_notifications] driver`` set (``messagingv2``, ``log``, ...), each
lifecycle hook becomes the notification Glance sends for it, with Glance's payload,
sent through oslo.messaging: to the ``topics`` of that section (``notifications``), on
the transport of its ``transport_url`` (else ``[DEFAULT] transport_url``), in Glance's
control exchange ``glance``, from ``default_publisher_id`` (``image.localhost``). The
options are oslo.messaging's own, registered by oslo.messaging, so a Glance config's
section works unchanged. Without that section nothing changes: the plugin is not
registered and oslo.messaging is not even imported.

The hooks fire after the change they tell of was committed; the notifications then go
out on a thread of their own, in order, so a slow or dead broker delays the
notifications and never a request. While the broker is away (oslo.messaging retries as
``[oslo_messaging_notifications] retry`` says) they wait in a buffer of
:data:`BUFFER` notifications; past that, new ones are dropped with a warning.

The events, by hook (Glance has no ``image.deactivate`` or ``image.reactivate``: a
deactivation is the ``image.update`` the change itself sends):

============================== =============================================
abbild_image_created           image.create
abbild_image_updated           image.update
abbild_image_deleted           image.delete (``deleted`` true, ``deleted_at``)
abbild_image_preparing         image.prepare (import lists, ``backend``)
abbild_image_uploaded          image.upload (import lists)
abbild_image_upload_failed     image.upload, ERROR, a message as payload
abbild_image_activated         image.activate
abbild_image_sent              image.send (ERROR when cut short)
abbild_image_member_*          image.member.create / update / delete
abbild_task_created            task.create
abbild_task_processing         task.run, then task.processing
abbild_task_succeeded          task.success
abbild_task_failed             task.failure
abbild_metadef_changed         its event: metadef_namespace.create / update /
                               delete / delete_objects / delete_properties /
                               delete_tags, metadef_object.*, metadef_property.*,
                               metadef_tag.* (create / update / delete),
                               metadef_resource_type.create / delete
============================== =============================================
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from oslo_config import cfg

from abbild.errors import (
    AccessDenied,
    AlreadyExists,
    ConfigError,
    Conflict,
    Forbidden,
    Gone,
    ImageNotFound,
    Invalid,
    InvalidImageData,
    QuotaExceeded,
    SizeLimitExceeded,
    SizeMismatch,
    StoreFull,
)
from abbild.imports import HIDDEN_PROPERTIES
from abbild.plugins import hookimpl

LOG = logging.getLogger(__name__)

SECTION = "oslo_messaging_notifications"
CONTROL_EXCHANGE = "glance"  # Glance's: consumers (Ceilometer, ...) listen there for image events
BUFFER = 1000
FLUSH_SECONDS = 2.0  # at exit, how long notifications still queued may take to go out

notifier_opts = [
    cfg.StrOpt(
        "default_publisher_id",
        default="image.localhost",
        help="publisher_id of the notifications this service sends (Glance's option), "
        "typically image.<host name>. Notifications are sent only when "
        "[oslo_messaging_notifications] driver is set.",
    ),
    cfg.ListOpt(
        "disabled_notifications",
        default=[],
        help="Notifications not to send (Glance's option): event types (image.create, "
        "task.success, metadef_tag.create) or groups, a prefix up to a dot (image, "
        "image.member, task, metadef_namespace).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(notifier_opts)


def list_opts():
    # The sample then shows the control exchange abbild uses (Glance's), not oslo.messaging's.
    _import_oslo_messaging().set_transport_defaults(CONTROL_EXCHANGE)
    return [("DEFAULT", notifier_opts)]


# -- payloads, as Glance's (glance/notifier.py) -------------------------------------------


def isotime(when: datetime.datetime | None) -> str | None:
    """Glance's timestamp format, ``2026-12-03T05:28:14Z`` (UTC, whole seconds). Glance
    would print the present for a missing time; ``None`` stays ``None`` here."""
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return isotime(datetime.datetime.now(datetime.timezone.utc))


def image_payload(image) -> dict:
    """An image, never its locations: their URIs may hold a store's credentials; its
    properties as the API shows them (without where its staged data lies)."""
    return {
        "id": image.id,
        "name": image.name,
        "status": str(image.status),
        "created_at": isotime(image.created_at),
        "updated_at": isotime(image.updated_at),
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "protected": image.protected,
        "checksum": image.checksum,
        "owner": image.owner,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "is_public": image.visibility == "public",
        "visibility": image.visibility,
        "properties": {k: v for k, v in image.properties.items() if k not in HIDDEN_PROPERTIES},
        "tags": sorted(image.tags),
        "deleted": False,
        "deleted_at": None,
    }


def import_lists(image) -> dict:
    """The stores an import is still writing to and those that failed, as lists."""

    def listed(name: str) -> list[str]:
        value = image.properties.get(name)
        return value.split(",") if value else []

    return {
        "os_glance_importing_to_stores": listed("os_glance_importing_to_stores"),
        "os_glance_failed_import": listed("os_glance_failed_import"),
    }


def member_payload(member) -> dict:
    return {
        "image_id": member.image_id,
        "member_id": member.member_id,
        "status": member.status,
        "created_at": isotime(member.created_at),
        "updated_at": isotime(member.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def task_payload(task) -> dict:
    """A task without its input, which may hold credentials (a web-download URL's);
    ``result`` and ``message`` are always null, as in Glance's."""
    return {
        "id": task.id,
        "type": task.type,
        "status": str(task.status),
        "result": None,
        "owner": task.owner,
        "message": None,
        "expires_at": isotime(task.expires_at),
        "created_at": isotime(task.created_at),
        "updated_at": isotime(task.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def send_payload(image, bytes_sent: int, viewer) -> dict:
    return {
        "bytes_sent": bytes_sent,
        "image_id": image.id,
        "owner_id": image.owner,
        "receiver_tenant_id": viewer.project_id,
        "receiver_user_id": viewer.user_id,
    }


def upload_failure(image, error: BaseException) -> str:
    """The message of a failed upload's ``image.upload`` (ERROR), in Glance's words."""
    if isinstance(error, StoreFull):
        return f"Image storage media is full: {error}"
    if isinstance(error, AccessDenied):
        return f"Insufficient permissions on image storage media: {error}"
    if isinstance(error, (ImageNotFound, Gone)):
        return (
            f"Image {image.id} could not be found after upload. The image may have been deleted "
            f"during the upload: {error}"
        )
    if isinstance(error, (Invalid, InvalidImageData, SizeMismatch, SizeLimitExceeded, QuotaExceeded)):
        return f"Cannot save data for image {image.id}: {error}"
    if isinstance(error, (AlreadyExists, Conflict)):
        return f"Unable to upload duplicate image data for image {image.id}: {error}"
    if isinstance(error, Forbidden):
        return f"Not allowed to upload image data for image {image.id}: {error}"
    return f"Failed to upload image data for image {image.id} due to internal error: {error}"


# Glance's fields of a property definition in its notifications (a property's, and each
# of an object's properties), in Glance's order.
DEFINITION_FIELDS = (
    "type",
    "title",
    "description",
    "default",
    "minimum",
    "maximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "confidential",
    "items",
    "uniqueItems",
    "minItems",
    "maxItems",
    "additionalItems",
)


def namespace_payload(namespace, old_name: str | None = None) -> dict:
    return {
        "namespace": namespace.namespace,
        "namespace_old": old_name or namespace.namespace,
        "display_name": namespace.display_name,
        "protected": namespace.protected,
        "visibility": namespace.visibility,
        "owner": namespace.owner,
        "description": namespace.description,
        "created_at": isotime(namespace.created_at),
        "updated_at": isotime(namespace.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def object_payload(namespace, obj, old_name: str | None = None) -> dict:
    """An object with its properties as a list, each with its name. Where Glance turns
    a false value (a ``minimum`` of 0) into null, the value is kept here."""
    properties = [
        {"name": name, **{field: definition.get(field) for field in DEFINITION_FIELDS}}
        for name, definition in obj.properties.items()
    ]
    return {
        "namespace": namespace.namespace,
        "name": obj.name,
        "name_old": old_name or obj.name,
        "properties": properties,
        "required": list(obj.required),
        "description": obj.description,
        "created_at": isotime(obj.created_at),
        "updated_at": isotime(obj.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def property_payload(namespace, prop, old_name: str | None = None) -> dict:
    """A property definition, without times (it has none of its own in Glance's payload)."""
    return {
        "namespace": namespace.namespace,
        "name": prop.name,
        "name_old": old_name or prop.name,
        **{field: prop.definition.get(field) for field in DEFINITION_FIELDS},
        "deleted": False,
        "deleted_at": None,
    }


def resource_type_payload(namespace, association) -> dict:
    """A namespace's association with a resource type (``metadef_resource_type.*``)."""
    return {
        "namespace": namespace.namespace,
        "name": association.name,
        "name_old": association.name,
        "prefix": association.prefix,
        "properties_target": association.properties_target,
        "created_at": isotime(association.created_at),
        "updated_at": isotime(association.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def tag_payload(namespace, tag, old_name: str | None = None) -> dict:
    return {
        "namespace": namespace.namespace,
        "name": tag.name,
        "name_old": old_name or tag.name,
        "created_at": isotime(tag.created_at),
        "updated_at": isotime(tag.updated_at),
        "deleted": False,
        "deleted_at": None,
    }


def metadef_payload(event: str, namespace, item, old_name: str | None) -> dict:
    """The payload of *event* (``metadef_<kind>.<action>``), as Glance's: a delete of
    the thing itself is ``deleted`` now; ``metadef_namespace.delete_objects`` (and
    ``_properties``, ``_tags``) is the namespace, not deleted."""
    kind, _, action = event.partition(".")
    if kind == "metadef_namespace":
        payload = namespace_payload(namespace, old_name)
    elif kind == "metadef_object":
        payload = object_payload(namespace, item, old_name)
    elif kind == "metadef_property":
        payload = property_payload(namespace, item, old_name)
    elif kind == "metadef_resource_type":
        payload = resource_type_payload(namespace, item)
    elif kind == "metadef_tag":
        payload = tag_payload(namespace, item, old_name)
    else:
        raise ValueError(f"no metadef notification {event!r}")
    if action == "delete":
        payload.update(deleted=True, deleted_at=_now())
    return payload


# -- the plugin -----------------------------------------------------------------------------

Send = Callable[[str, str, object], None]  # (priority, event type, payload)


class Notifier:
    """The built-in plugin: each lifecycle hook as Glance's notification, handed to
    *send* unless ``disabled_notifications`` names its type or group."""

    def __init__(self, send: Send, disabled: list[str] = ()) -> None:
        self.send = send
        self.disabled = tuple(disabled)

    def enabled(self, event_type: str) -> bool:
        return not any(event_type == d or event_type.startswith(d + ".") for d in self.disabled)

    def _emit(self, event_type: str, payload, priority: str = "info") -> None:
        if self.enabled(event_type):
            self.send(priority, event_type, payload)

    @hookimpl
    def abbild_image_created(self, image):
        self._emit("image.create", image_payload(image))

    @hookimpl
    def abbild_image_updated(self, image):
        self._emit("image.update", image_payload(image))

    @hookimpl
    def abbild_image_deleted(self, image):
        deleted_at = isotime(image.deleted_at) or _now()
        self._emit("image.delete", {**image_payload(image), "deleted": True, "deleted_at": deleted_at})

    @hookimpl
    def abbild_image_preparing(self, image, store):
        self._emit("image.prepare", {**image_payload(image), **import_lists(image), "backend": store.name})

    @hookimpl
    def abbild_image_uploaded(self, image):
        self._emit("image.upload", {**image_payload(image), **import_lists(image)})

    @hookimpl
    def abbild_image_upload_failed(self, image, error):
        self._emit("image.upload", upload_failure(image, error), priority="error")

    @hookimpl
    def abbild_image_activated(self, image):
        self._emit("image.activate", image_payload(image))

    @hookimpl
    def abbild_image_sent(self, image, bytes_sent, viewer, error):
        self._emit("image.send", send_payload(image, bytes_sent, viewer), priority="info" if error is None else "error")

    @hookimpl
    def abbild_image_member_created(self, member):
        self._emit("image.member.create", member_payload(member))

    @hookimpl
    def abbild_image_member_updated(self, member):
        self._emit("image.member.update", member_payload(member))

    @hookimpl
    def abbild_image_member_deleted(self, member):
        self._emit("image.member.delete", {**member_payload(member), "deleted": True, "deleted_at": _now()})

    @hookimpl
    def abbild_task_created(self, task):
        self._emit("task.create", task_payload(task))

    @hookimpl
    def abbild_task_processing(self, task):
        # Glance sends task.run when an executor takes the task, task.processing as it begins.
        self._emit("task.run", task_payload(task))
        self._emit("task.processing", task_payload(task))

    @hookimpl
    def abbild_task_succeeded(self, task):
        self._emit("task.success", task_payload(task))

    @hookimpl
    def abbild_task_failed(self, task):
        self._emit("task.failure", task_payload(task))

    @hookimpl
    def abbild_metadef_changed(self, event, namespace, item, old_name):
        if self.enabled(event):
            self.send("info", event, metadef_payload(event, namespace, item, old_name))


# -- sending ----------------------------------------------------------------------------------


class Sender:
    """Hands notifications to an oslo.messaging notifier on a thread of its own, in
    order; a request only puts them in a bounded buffer. The notifier (and its
    connections) is made in the process that sends, on first use: after a fork, the
    child starts its own."""

    def __init__(self, make_notifier: Callable[[], object], buffer: int = BUFFER) -> None:
        self.make_notifier = make_notifier
        self.buffer = buffer
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def __call__(self, priority: str, event_type: str, payload) -> None:
        try:
            self._started().put_nowait((priority, event_type, payload))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % self.buffer == 0:
                LOG.warning(
                    "notification %s dropped: %d wait for the messaging transport already (%d dropped so far)",
                    event_type,
                    self.buffer,
                    self.dropped,
                )

    def _started(self) -> queue.Queue:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._queue = os.getpid(), queue.Queue(self.buffer)
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="abbild-notifications", daemon=True
                )
                self._thread.start()
            return self._queue

    def _run(self, items: queue.Queue) -> None:
        notifier = None
        while True:
            item = items.get()
            if item is None:
                break
            priority, event_type, payload = item
            try:
                if notifier is None:
                    notifier = self.make_notifier()
                getattr(notifier, priority)({}, event_type, payload)
            except Exception:  # oslo.messaging logs its drivers' failures itself; this is the rest
                LOG.exception("could not send the notification %s", event_type)
            if self.dropped and items.empty():
                LOG.warning("notifications flow again, after %d were dropped", self.dropped)
                self.dropped = 0
        if notifier is not None:
            notifier.transport.cleanup()

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Let the notifications still queued go out, for up to *timeout* seconds."""
        with self._lock:
            thread, items = self._thread, self._queue
            if thread is None or self._pid != os.getpid():
                return
        try:
            items.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)
        with self._lock:
            self._pid = None  # a later notification starts a thread again


def _import_oslo_messaging():
    # oslo.messaging loads oslo.service, which loads (but does not patch in) eventlet and
    # warns that eventlet is deprecated: noise for a service that does not use eventlet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import oslo_messaging
    return oslo_messaging


def messaging_notifier(conf: cfg.ConfigOpts):
    """oslo.messaging's notifier as *conf* sets it up (driver, topics, retry, transport)."""
    oslo_messaging = _import_oslo_messaging()

    transport = oslo_messaging.get_notification_transport(conf)
    return oslo_messaging.Notifier(transport, publisher_id=conf.default_publisher_id)


def configured(conf) -> bool:
    """Whether the config files have a ``[oslo_messaging_notifications]`` section (read
    without oslo.messaging, which registers its options)."""
    return isinstance(conf, cfg.ConfigOpts) and SECTION in conf.list_all_sections()


def from_config(conf) -> Notifier | None:
    """The notifier plugin when *conf* names notification drivers, else ``None``.

    :raises abbild.errors.ConfigError: an unknown driver or a bad transport URL.
    """
    if not configured(conf):
        return None
    oslo_messaging = _import_oslo_messaging()

    register_opts(conf)
    oslo_messaging.set_transport_defaults(CONTROL_EXCHANGE)
    try:
        # Registers oslo.messaging's options and checks the URL; it connects nowhere yet.
        oslo_messaging.get_notification_transport(conf).cleanup()
    except (oslo_messaging.InvalidTransportURL, oslo_messaging.DriverLoadFailure) as exc:
        raise ConfigError(
            f"[{SECTION}] transport_url (or [DEFAULT] transport_url) cannot be used for notifications: {exc}"
        ) from None
    drivers = [d for d in conf[SECTION].driver if d != "noop"]
    if not drivers:
        return None
    known = {ep.name for ep in entry_points(group="oslo.messaging.notify.drivers")}
    unknown = sorted(set(drivers) - known)
    if unknown:
        raise ConfigError(
            f"[{SECTION}] driver: no notification driver named {', '.join(unknown)}; "
            f"use one of {', '.join(sorted(known))}"
        )
    sender = Sender(lambda: messaging_notifier(conf))
    _senders.append(sender)
    return Notifier(sender, conf.disabled_notifications)


_senders: list[Sender] = []


@atexit.register
def close_all() -> None:
    """Let the notifications every sender of this process still holds go out (see
    :meth:`Sender.close`): at exit, or before a server process ends without the
    interpreter's teardown."""
    for sender in _senders:
        sender.close()


class Setup:
    """Built-in: registers the notifier plugin in *pm* once the configuration asks for
    notifications (:func:`from_config`)."""

    def __init__(self, pm) -> None:
        self.pm = pm

    @hookimpl
    def abbild_configure(self, conf):
        notifier = from_config(conf)
        if notifier is not None and not self.pm.has_plugin("abbild.notifications"):
            self.pm.register(notifier, name="abbild.notifications")
