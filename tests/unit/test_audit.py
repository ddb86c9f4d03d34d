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
