"""The legacy import task (``POST /v2/tasks``) follows the import engine's task of its
image: abbild_api.tasks.LegacyImports, on a real SQLite registry. (The whole path, over
HTTP with the glance CLI, is tests/functional/test_tasks.py.)"""

from __future__ import annotations

import uuid

import pytest

from abbild import hookimpl
from abbild.db import migrate
from abbild.db.registry import SQLRegistry
from abbild.plugins import get_plugin_manager
from abbild.tasks import Task, TaskStatus
from abbild_api.tasks import LegacyImports


class TaskHooks:
    def __init__(self):
        self.calls = []

    @hookimpl
    def abbild_task_processing(self, task):
        self.calls.append(("processing", task.id, task.status.value))

    @hookimpl
    def abbild_task_succeeded(self, task):
        self.calls.append(("succeeded", task.id, task.status.value))

    @hookimpl
    def abbild_task_failed(self, task):
        self.calls.append(("failed", task.id, task.status.value))


@pytest.fixture
def setup(tmp_path):
    registry = SQLRegistry(url=f"sqlite:///{tmp_path}/r.sqlite")
    migrate.sync(registry.engine)
    pm = get_plugin_manager(load_entrypoints=False)
    hooks = TaskHooks()
    pm.register(hooks)
    follower = LegacyImports(registry, pm)
    pm.register(follower)
    yield registry, pm, hooks, follower
    registry.close()


def tasks(registry, image_id: str) -> tuple[Task, Task]:
    """A legacy task of *image_id* and the engine's task of the same image."""
    legacy = registry.create_task(Task(id=str(uuid.uuid4()), type="import", owner="p1", image_id=image_id))
    engine = registry.create_task(Task(id=str(uuid.uuid4()), type="api_image_import", owner="p1", image_id=image_id))
    return legacy, engine


def test_the_legacy_task_follows_its_import_to_success(setup):
    registry, pm, hooks, follower = setup
    image_id = str(uuid.uuid4())
    legacy, engine = tasks(registry, image_id)
    follower.follow(image_id, legacy.id)
    engine = registry.update_task(engine.id, lambda t: t.transition(TaskStatus.PROCESSING))
    pm.hook.abbild_task_processing(task=engine)
    assert registry.get_task(legacy.id).status is TaskStatus.PROCESSING
    engine = registry.update_task(engine.id, lambda t: t.transition(TaskStatus.SUCCESS))
    pm.hook.abbild_task_succeeded(task=engine)
    done = registry.get_task(legacy.id)
    assert done.status is TaskStatus.SUCCESS and done.result == {"image_id": image_id}
    assert done.expires_at is not None
    # The legacy task's own hooks, once each; the engine's task's calls are the test's.
    legacy_calls = [call for call in hooks.calls if call[1] == legacy.id]
    assert legacy_calls == [("processing", legacy.id, "processing"), ("succeeded", legacy.id, "success")]
    pm.hook.abbild_task_succeeded(task=engine)  # no longer followed: nothing happens
    assert [call for call in hooks.calls if call[1] == legacy.id] == legacy_calls


def test_a_failed_import_fails_the_legacy_task_with_its_message(setup):
    registry, pm, hooks, follower = setup
    image_id = str(uuid.uuid4())
    legacy, engine = tasks(registry, image_id)
    follower.follow(image_id, legacy.id)

    def fail(task: Task) -> None:
        task.transition(TaskStatus.FAILURE)
        task.message = "No image data found at http://example.com/x"

    pm.hook.abbild_task_failed(task=registry.update_task(engine.id, fail))
    failed = registry.get_task(legacy.id)
    assert failed.status is TaskStatus.FAILURE and failed.message == "No image data found at http://example.com/x"
    assert [call for call in hooks.calls if call[1] == legacy.id] == [("failed", legacy.id, "failure")]


def test_tasks_of_other_images_and_types_are_not_followed(setup):
    registry, pm, hooks, follower = setup
    image_id = str(uuid.uuid4())
    legacy, engine = tasks(registry, image_id)
    follower.follow(image_id, legacy.id)
    other = registry.create_task(Task(id=str(uuid.uuid4()), type="api_image_import", image_id=str(uuid.uuid4())))
    pm.hook.abbild_task_failed(task=registry.update_task(other.id, lambda t: t.transition(TaskStatus.FAILURE)))
    pm.hook.abbild_task_processing(task=legacy)  # a legacy task's own hook: not an import's
    assert registry.get_task(legacy.id).status is TaskStatus.PENDING
    assert [call for call in hooks.calls if call[1] == legacy.id] == [("processing", legacy.id, "pending")]
