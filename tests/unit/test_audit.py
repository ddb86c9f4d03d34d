"""The auditor as the periodic task runs it: ``Auditor.run(stopping)`` returns counts,
honours its options, and returns at once when asked to stop. (The command and the
findings on real stores: tests/functional/test_audit.py.)"""

from __future__ import annotations

import threading
import time
import uuid

from abbild.audit import KINDS, Auditor, Throttle
from abbild.image import Image
from abbild.registry import Viewer

ADMIN = Viewer(is_admin=True)


def active_image(service, data: bytes) -> Image:
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)
    return service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)


def test_a_pass_returns_its_counts(service):
    active_image(service, b"x" * 1000)
    active_image(service, b"y" * 24)
    counts = Auditor.from_config(service).run(threading.Event())
    assert counts == {**dict.fromkeys(KINDS, 0), "repaired": 0, "updated": 0, "checked": 2, "bytes": 1024}


def test_options_configure_the_periodic_auditor_and_arguments_override_them(service):
    service.conf.set_override("audit_repair", True)
    service.conf.set_override("audit_rate_limit", 3.5)
    auditor = Auditor.from_config(service, grace=10, update=None)
    assert (auditor.repair, auditor.update, auditor.rate, auditor.grace) == (True, False, 3.5, 10)
    assert [s.name for s in Auditor.from_config(service, store="other").stores] == ["other"]


def test_a_set_stopping_event_ends_the_pass_before_any_data_is_read(service):
    active_image(service, b"z" * 100)
    stopping = threading.Event()
    stopping.set()
    counts = Auditor.from_config(service).run(stopping)
    assert counts["checked"] == 0 and counts["bytes"] == 0


def test_the_throttle_paces_reads_and_stops_waiting_when_asked():
    stopping = threading.Event()
    throttle = Throttle(1 << 20, stopping)
    started = time.monotonic()
    for _ in range(8):
        throttle.take(128 << 10)  # 1 MiB at 1 MiB/s
    assert time.monotonic() - started >= 0.8
    stopping.set()
    started = time.monotonic()
    throttle.take(100 << 20)  # 100 s of reading, but stopping is set
    assert time.monotonic() - started < 1


def test_update_fills_the_virtual_size_from_the_same_read(service, tmp_path):
    """An image from before format inspection (no virtual_size) gets the one an upload
    would set today, from the read that checks its hashes; an image whose data would be
    refused today gets none, and the pass still reads and updates nothing else."""
    from abbild import formats
    from tests import disk_images

    data = disk_images.qcow2(tmp_path)
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="qcow2", container_format="bare"), ADMIN)
    image = service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)
    assert image.virtual_size == 1 << 20
    raw = active_image(service, b"r" * 5000)
    for done in (image, raw):
        service.registry.update_image(done.id, lambda i: setattr(i, "virtual_size", None))

    # Data that today's inspection would refuse: qcow2 bytes kept under disk_format vmdk.
    vmdk = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)
    vmdk = service.uploads.upload(vmdk.id, [data], declared_size=len(data), viewer=ADMIN)

    def as_vmdk(i):
        i.disk_format, i.virtual_size = "vmdk", None

    service.registry.update_image(vmdk.id, as_vmdk)

    auditor = Auditor.from_config(service, update=True)
    counts = auditor.run(threading.Event())
    assert counts["checked"] == 3 and counts["corrupt"] == 0
    assert {u.image_id: u.fields for u in auditor.updates} == {
        image.id: {"virtual_size": 1 << 20},
        raw.id: {"virtual_size": 5000},
    }
    assert service.registry.get_image(image.id).virtual_size == 1 << 20
    assert service.registry.get_image(raw.id).virtual_size == 5000
    assert service.registry.get_image(vmdk.id).virtual_size is None
    assert isinstance(auditor.format_settings, formats.Settings)

    # Without --update nothing is inspected or filled.
    service.registry.update_image(image.id, lambda i: setattr(i, "virtual_size", None))
    auditor = Auditor.from_config(service, update=False)
    auditor.run(threading.Event())
    assert auditor.updates == [] and service.registry.get_image(image.id).virtual_size is None
