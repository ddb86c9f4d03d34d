"""The import engine over a real SQLite registry, memory stores and a filesystem staging
area: the task hooks, start-up refusals, the import lock and its stale cases, and the
recovery of a dead process's stage and import. The HTTP side, the clients and the
real processes are in tests/functional/test_import.py."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from abbild import hookimpl
from abbild.errors import ConfigError, Conflict
from abbild.image import Image, Status
from abbild.imports import IMPORT_TASK, STAGE_URI, Imports
from abbild.registry import Viewer
from abbild.tasks import Task, TaskStatus

ADMIN = Viewer(is_admin=True, user_id="u1")
# A worker on this host whose process does not exist (pid 4194304 is above pid_max).
DEAD_WORKER = f"{socket.gethostname()}:4194304:1"


class TaskRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def abbild_task_created(self, task):
        self.events.append(("created", task.status.value))

    @hookimpl
    def abbild_task_processing(self, task):
        self.events.append(("processing", task.status.value))

    @hookimpl
    def abbild_task_succeeded(self, task):
        self.events.append(("succeeded", task.status.value))

    @hookimpl
    def abbild_task_failed(self, task):
        self.events.append(("failed", task.message))


@pytest.fixture
def recorder(service):
    recorder = TaskRecorder()
    service.plugins.register(recorder)
    return recorder


def staged_image(service, data: bytes = b"staged data") -> Image:
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)
    return service.imports.stage(image.id, [data], declared_size=len(data), viewer=ADMIN)


def start(service, image_id: str, body: dict) -> Task:
    return service.imports.start(image_id, service.imports.parse(body, None, ADMIN, "req-1"))


def wait_task(service, task_id: str, timeout: float = 20) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = service.registry.get_task(task_id)
        if task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
            time.sleep(0.1)  # the lock is released before the task ends; the hooks follow it
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not end")


def test_hook_abbild_task_created(service, recorder):
    image = staged_image(service)
    task = start(service, image.id, {"method": {"name": "glance-direct"}})
    wait_task(service, task.id)
    assert recorder.events[0] == ("created", "pending")
    assert (task.type, task.image_id, task.user_id, task.request_id) == ("api_image_import", image.id, "u1", "req-1")


def test_hook_abbild_task_processing(service, recorder):
    image = staged_image(service)
    wait_task(service, start(service, image.id, {"method": {"name": "glance-direct"}}).id)
    assert ("processing", "processing") in recorder.events


def test_hook_abbild_task_succeeded(service, recorder):
    data = b"x" * 5000
    image = staged_image(service, data)
    task = wait_task(service, start(service, image.id, {"method": {"name": "glance-direct"}, "stores": ["other"]}).id)
    assert recorder.events == [("created", "pending"), ("processing", "processing"), ("succeeded", "success")]
    assert task.result == {"image_id": image.id, "stores": ["other"], "failed_stores": []}
    done = service.registry.get_image(image.id)
    assert (
        done.status is Status.ACTIVE and done.size == len(data) and [loc.store for loc in done.locations] == ["other"]
    )
    assert IMPORT_TASK not in done.properties and STAGE_URI not in done.properties
    assert os.listdir(service.imports.staging.store.driver._datadir) == [".work"] or not [
        f for f in os.listdir(service.imports.staging.store.driver._datadir) if not f.startswith(".")
    ]


def test_hook_abbild_task_failed(service, recorder):
    """The staged data vanished before the import (a real fault: the file is gone)."""
    image = staged_image(service)
    os.unlink(service.imports.staging.store.driver._resolve(image.properties[STAGE_URI]))
    task = wait_task(service, start(service, image.id, {"method": {"name": "glance-direct"}}).id)
    assert task.status is TaskStatus.FAILURE and task.message
    assert recorder.events[-1] == ("failed", task.message)
    after = service.registry.get_image(image.id)
    assert after.status is Status.UPLOADING  # back where the import found it
    assert IMPORT_TASK not in after.properties and after.upload_worker is None
    assert service.stores["mem"].driver._objects == {}


def test_unknown_import_step_stops_the_start(service):
    service.conf.set_override("image_import_plugins", ["no_such_step"], group="image_import_opts")
    with pytest.raises(ConfigError, match="no_such_step"):
        Imports(service)


def test_web_download_without_the_http_driver_stops_the_start(service):
    from abbild_filesystem.driver import FilesystemDriver

    with pytest.raises(ConfigError, match="web-download.*http store driver.*abbild-http"):
        Imports(service, drivers={"filesystem": FilesystemDriver})
    service.conf.set_override("enabled_import_methods", ["glance-direct"])
    assert Imports(service, drivers={"filesystem": FilesystemDriver}).web_download is None


def test_a_live_lock_is_409_and_a_stale_one_is_broken(service):
    image = staged_image(service)
    # a lock whose task does not exist: stale, broken, and the import goes on
    service.registry.update_image(image.id, lambda i: i.properties.update({IMPORT_TASK: str(uuid.uuid4())}))
    task = start(service, image.id, {"method": {"name": "glance-direct"}})
    assert wait_task(service, task.id).status is TaskStatus.SUCCESS
    # a lock of a running task of this process: 409
    other = staged_image(service)
    running = service.registry.create_task(Task(id=str(uuid.uuid4()), type="api_image_import", image_id=other.id))
    service.registry.update_task(running.id, lambda t: t.transition(TaskStatus.PROCESSING))

    def held(i: Image) -> None:
        i.transition(Status.IMPORTING)
        i.properties[IMPORT_TASK] = running.id
        i.upload_worker = service.claims.worker

    service.registry.update_image(other.id, held)
    with pytest.raises(Conflict, match="prior operation is still in progress"):
        start(service, other.id, {"method": {"name": "glance-direct"}})
    # the same lock once its worker is dead: broken, its task failed, the new import runs
    service.registry.update_image(other.id, lambda i: setattr(i, "upload_worker", DEAD_WORKER))
    task = start(service, other.id, {"method": {"name": "glance-direct"}})
    assert service.registry.get_task(running.id).status is TaskStatus.FAILURE
    assert wait_task(service, task.id).status is TaskStatus.SUCCESS
    assert service.registry.get_image(other.id).status is Status.ACTIVE


def test_recover_a_dead_import_keeps_the_staged_data(service):
    image = staged_image(service)
    task = service.registry.create_task(Task(id=str(uuid.uuid4()), type="api_image_import", image_id=image.id))

    def died_importing(i: Image) -> None:
        i.transition(Status.IMPORTING)
        i.properties[IMPORT_TASK] = task.id
        i.upload_worker = DEAD_WORKER

    service.registry.update_image(image.id, died_importing)
    assert service.imports.recover() == [image.id]
    after = service.registry.get_image(image.id)
    assert after.status is Status.UPLOADING and after.upload_worker is None and IMPORT_TASK not in after.properties
    assert service.registry.get_task(task.id).status is TaskStatus.FAILURE
    wait_task(service, start(service, image.id, {"method": {"name": "glance-direct"}}).id)
    assert service.registry.get_image(image.id).status is Status.ACTIVE


def test_recover_a_dead_stage_requeues(service):
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)

    def died_staging(i: Image) -> None:
        i.transition(Status.UPLOADING)
        i.upload_worker = DEAD_WORKER

    service.registry.update_image(image.id, died_staging)
    assert service.imports.recover() == [image.id]
    assert service.registry.get_image(image.id).status is Status.QUEUED


def test_deleting_a_staged_image_removes_its_staged_data(service):
    image = staged_image(service)
    path = service.imports.staging.store.driver._resolve(image.properties[STAGE_URI])
    assert os.path.exists(path)
    service.deletes.delete(image.id, ADMIN)
    assert not os.path.exists(path)


def test_usage_counts_staged_bytes(service):
    owner = Viewer(project_id="p1", roles=("member", "reader"), user_id="u1")
    image = service.create(Image(id=str(uuid.uuid4()), owner="p1", disk_format="raw", container_format="bare"), owner)
    service.conf.set_override("image_size_cap", 4 << 20)
    service.imports.stage(image.id, [b"x" * (3 << 20)], declared_size=None, viewer=owner)
    assert service.usage(owner)["image_stage_total"]["usage"] == 3  # MiB
    assert service.usage(Viewer(project_id="p2", roles=("member",)))["image_stage_total"]["usage"] == 0


def test_audit_reports_and_repairs_a_stuck_import_but_not_a_staged_image(service):
    import threading

    from abbild.audit import Auditor

    waiting = staged_image(service)  # staged, waiting for its import: not stuck
    stuck = staged_image(service)

    def died_importing(i: Image) -> None:
        i.transition(Status.IMPORTING)
        i.upload_worker = DEAD_WORKER

    service.registry.update_image(stuck.id, died_importing)
    time.sleep(1.1)  # updated_at has whole seconds
    auditor = Auditor(service, repair=True, stuck_after=0)
    auditor.run(threading.Event())
    found = [f for f in auditor.findings if f.kind == "stuck"]
    assert [f.image_id for f in found] == [stuck.id]
    assert "undone" in found[0].action and "uploading" in found[0].action
    assert service.registry.get_image(stuck.id).status is Status.UPLOADING
    assert service.registry.get_image(waiting.id).status is Status.UPLOADING


def test_sweep_removes_old_staged_data_no_image_waits_for(service):
    kept = staged_image(service)
    datadir = service.imports.staging.store.driver._datadir
    old_orphan, new_orphan = str(uuid.uuid4()), str(uuid.uuid4())
    for key in (old_orphan, new_orphan):
        with open(os.path.join(datadir, key), "wb") as f:
            f.write(b"left behind")
    hour_ago = time.time() - 3600
    for key in (old_orphan, kept.id):
        os.utime(os.path.join(datadir, key), (hour_ago, hour_ago))
    assert service.imports.sweep() == [old_orphan]
    assert sorted(f for f in os.listdir(datadir) if not f.startswith(".")) == sorted([kept.id, new_orphan])
