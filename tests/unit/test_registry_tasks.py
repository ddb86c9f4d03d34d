"""The registry's tasks (``create_task``, ``get_task``, ``list_tasks``, ``save_task``,
``tasks_of_image``, ``update_task``), their expiry and purge, on SQLite, MariaDB and
PostgreSQL; test_registry_http.py runs these tests again through the http registry."""

from __future__ import annotations

import datetime
import threading
import uuid

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from abbild.db.models import TaskRow
from abbild.errors import ConcurrentUpdate, Conflict, Invalid, TaskNotFound
from abbild.image import Image, utcnow
from abbild.registry import PURGE_TABLES
from abbild.tasks import Task, TaskFilters, TaskStatus

HOUR = datetime.timedelta(hours=1)


def new_task(registry, **fields) -> Task:
    values = {"id": str(uuid.uuid4()), "type": "import", "owner": "p1", "input": {"import_from": "http://x/a.img"}}
    values.update(fields)
    return registry.create_task(Task(**values))


def new_image(registry) -> str:
    return registry.create_image(Image(id=str(uuid.uuid4()), owner="p1")).id


def age(registry, task_id: str, **columns) -> None:
    """Move the task's times behind the registry's back."""
    with Session(registry.engine) as session, session.begin():
        session.execute(update(TaskRow).where(TaskRow.id == task_id).values(**columns))


def task_rows(registry) -> int:
    with Session(registry.engine) as session:
        return session.scalar(select(func.count()).select_from(TaskRow))


def test_a_task_reads_back_as_it_was_created(sql_registry):
    image_id = str(uuid.uuid4())
    task = new_task(
        sql_registry,
        image_id=image_id,
        request_id="req-1",
        user_id="u1",
        input={"import_from": "http://x/a.img", "image_properties": {"name": "ü", "min_ram": 1}},
    )
    assert task.version == 1 and task.status is TaskStatus.PENDING
    assert task.created_at == task.updated_at and task.expires_at is None
    read = sql_registry.get_task(task.id)
    assert read == task
    assert read.input["image_properties"] == {"name": "ü", "min_ram": 1}
    assert read.result is None and read.message == ""


def test_a_taken_id_is_a_conflict(sql_registry):
    task = new_task(sql_registry)
    with pytest.raises(Conflict):
        new_task(sql_registry, id=task.id)


def test_unknown_task_is_not_found(sql_registry):
    with pytest.raises(TaskNotFound):
        sql_registry.get_task(str(uuid.uuid4()))


@pytest.mark.parametrize("fields", [{"type": "export"}, {"owner": "o" * 256}, {"image_id": "i" * 37}])
def test_values_the_table_cannot_hold_are_invalid(sql_registry, fields):
    with pytest.raises(Invalid):
        new_task(sql_registry, **fields)


def test_save_is_a_compare_and_swap(sql_registry):
    task = new_task(sql_registry)
    first, second = sql_registry.get_task(task.id), sql_registry.get_task(task.id)
    first.transition(TaskStatus.PROCESSING)
    saved = sql_registry.save_task(first)
    assert saved.version == 2 and saved.status is TaskStatus.PROCESSING
    second.message = "stale"
    with pytest.raises(ConcurrentUpdate):
        sql_registry.save_task(second)
    assert sql_registry.get_task(task.id) == saved


def test_saving_an_unknown_task_is_not_found(sql_registry):
    with pytest.raises(TaskNotFound):
        sql_registry.save_task(Task(id=str(uuid.uuid4()), type="import", version=1))


def test_an_ended_task_expires_after_its_time_to_live(sql_registry):
    task = new_task(sql_registry)
    sql_registry.update_task(task.id, lambda t: t.transition(TaskStatus.PROCESSING))
    assert sql_registry.get_task(task.id).expires_at is None
    done = sql_registry.update_task(
        task.id, lambda t: (t.transition(TaskStatus.SUCCESS), setattr(t, "result", {"image_id": "i"}))
    )
    assert done.expires_at == done.updated_at + 48 * HOUR
    assert sql_registry.get_task(task.id).result == {"image_id": "i"}
    # A later write keeps the expiry it got when it ended.
    again = sql_registry.update_task(task.id, lambda t: setattr(t, "message", "done"))
    assert again.expires_at == done.expires_at


def test_expired_tasks_are_gone(sql_registry):
    image_id = new_image(sql_registry)
    kept = new_task(sql_registry, image_id=image_id)
    expired = new_task(sql_registry, image_id=image_id, status=TaskStatus.FAILURE, message="boom")
    assert expired.expires_at is not None
    age(sql_registry, expired.id, expires_at=utcnow() - HOUR)
    with pytest.raises(TaskNotFound):
        sql_registry.get_task(expired.id)
    assert [t.id for t in sql_registry.list_tasks(TaskFilters())] == [kept.id]
    assert [t.id for t in sql_registry.tasks_of_image(image_id)] == [kept.id]
    stale = dataclass_copy(expired)
    with pytest.raises(TaskNotFound):
        sql_registry.save_task(stale)
    with pytest.raises(Invalid):
        sql_registry.list_tasks(TaskFilters(), marker=expired.id)


def dataclass_copy(task: Task) -> Task:
    import dataclasses

    return dataclasses.replace(task, message="changed")


def test_concurrent_updates_lose_nothing(sql_registry):
    task = new_task(sql_registry, input={"count": 0})
    start = threading.Barrier(4)
    failures = []

    def bump():
        start.wait()
        for _ in range(5):
            try:
                sql_registry.update_task(task.id, lambda t: t.input.update(count=t.input["count"] + 1))
            except Exception as error:  # reported below
                failures.append(error)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    final = sql_registry.get_task(task.id)
    assert final.input["count"] == 20 and final.version == 21


def test_of_two_writers_of_one_version_exactly_one_wins(sql_registry):
    task = new_task(sql_registry)
    copies = [sql_registry.get_task(task.id) for _ in range(4)]
    start = threading.Barrier(len(copies))
    outcomes = []

    def save(copy: Task, n: int):
        copy.message = f"writer {n}"
        start.wait()
        try:
            sql_registry.save_task(copy)
            outcomes.append("saved")
        except ConcurrentUpdate:
            outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(c, n)) for n, c in enumerate(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "saved"]
    assert sql_registry.get_task(task.id).version == 2


def many_tasks(registry) -> list[Task]:
    """Five tasks a minute apart, of two owners, types and statuses."""
    tasks = []
    now = utcnow()
    for n in range(5):
        task = new_task(
            registry,
            owner="p1" if n % 2 == 0 else "p2",
            type="import" if n < 3 else "api_image_import",
            status=TaskStatus.PROCESSING if n in (1, 4) else TaskStatus.PENDING,
        )
        age(
            registry,
            task.id,
            created_at=now - (5 - n) * datetime.timedelta(minutes=1),
            updated_at=now - n * datetime.timedelta(minutes=1),
        )
        tasks.append(registry.get_task(task.id))
    return tasks


def ids(tasks) -> list[str]:
    return [t.id for t in tasks]


def test_lists_are_sorted_and_filtered(sql_registry):
    tasks = many_tasks(sql_registry)
    assert ids(sql_registry.list_tasks(TaskFilters())) == ids(reversed(tasks))  # newest first
    assert ids(sql_registry.list_tasks(TaskFilters(), "created_at", "asc")) == ids(tasks)
    assert ids(sql_registry.list_tasks(TaskFilters(), "updated_at", "asc")) == ids(reversed(tasks))
    assert ids(sql_registry.list_tasks(TaskFilters(), "id", "asc")) == sorted(ids(tasks))
    by_status = sql_registry.list_tasks(TaskFilters(), "status", "asc")
    assert [t.status.value for t in by_status] == ["pending"] * 3 + ["processing"] * 2
    assert ids(sql_registry.list_tasks(TaskFilters(owner="p2"), "created_at", "asc")) == ids(tasks[1::2])
    assert ids(sql_registry.list_tasks(TaskFilters(type="import"), "created_at", "asc")) == ids(tasks[:3])
    processing = sql_registry.list_tasks(TaskFilters(status="processing", type="api_image_import"))
    assert ids(processing) == [tasks[4].id]
    assert sql_registry.list_tasks(TaskFilters(owner="nobody")) == []


@pytest.mark.parametrize(
    ("sort_key", "sort_dir"), [("created_at", "desc"), ("status", "asc"), ("type", "desc"), ("id", "asc")]
)
def test_pages_follow_the_marker(sql_registry, sort_key, sort_dir):
    many_tasks(sql_registry)
    whole = ids(sql_registry.list_tasks(TaskFilters(), sort_key, sort_dir))
    pages, marker = [], None
    while True:
        page = sql_registry.list_tasks(TaskFilters(), sort_key, sort_dir, limit=2, marker=marker)
        if not page:
            break
        pages += ids(page)
        marker = page[-1].id
    assert pages == whole and len(whole) == 5


@pytest.mark.parametrize(
    "args",
    [
        {"sort_key": "name"},
        {"sort_dir": "up"},
        {"marker": "00000000-0000-4000-8000-000000000000"},
        {"limit": -1},
    ],
)
def test_bad_list_arguments_are_invalid(sql_registry, args):
    many_tasks(sql_registry)
    with pytest.raises(Invalid):
        sql_registry.list_tasks(TaskFilters(), **args)


def test_a_marker_outside_the_filter_is_invalid(sql_registry):
    """Another project's task does not mark a page of mine: that would tell its id exists."""
    tasks = many_tasks(sql_registry)
    with pytest.raises(Invalid):
        sql_registry.list_tasks(TaskFilters(owner="p1"), marker=tasks[1].id)


def test_tasks_of_an_image_newest_first(sql_registry):
    image_id = new_image(sql_registry)
    older = new_task(sql_registry, image_id=image_id, type="api_image_import")
    age(sql_registry, older.id, created_at=utcnow() - HOUR)
    newer = new_task(sql_registry, image_id=image_id, owner="p2")
    other = new_image(sql_registry)
    new_task(sql_registry, image_id=other)
    assert ids(sql_registry.tasks_of_image(image_id)) == [newer.id, older.id]
    assert len(sql_registry.tasks_of_image(other)) == 1
    assert sql_registry.tasks_of_image(new_image(sql_registry)) == []


def test_purge_removes_tasks_that_expired_before_the_cutoff(sql_registry):
    now = utcnow()
    long_ago = [new_task(sql_registry, status=TaskStatus.SUCCESS) for _ in range(3)]
    for task in long_ago:
        age(sql_registry, task.id, expires_at=now - 40 * 24 * HOUR)
    recent = new_task(sql_registry, status=TaskStatus.FAILURE)
    age(sql_registry, recent.id, expires_at=now - HOUR)  # expired, not long enough
    running = new_task(sql_registry)
    cutoff = now - 30 * 24 * HOUR
    removed = sql_registry.purge(cutoff, max_rows=2)
    assert removed == {table: (2 if table == "tasks" else 0) for table in PURGE_TABLES}
    assert task_rows(sql_registry) == 3
    assert sql_registry.purge(cutoff)["tasks"] == 1
    assert task_rows(sql_registry) == 2
    assert sql_registry.get_task(running.id).id == running.id
    assert sql_registry.purge(now)["tasks"] == 1  # the recently expired one
    assert task_rows(sql_registry) == 1


def test_the_purge_loop_goes_on_while_tasks_are_left(sql_registry, monkeypatch):
    """abbild.purge.purge asks again while a call removed a whole chunk of tasks, even
    when no image or membership went."""
    from abbild import purge as purging

    monkeypatch.setattr(purging, "CHUNK", 2)
    for _ in range(5):
        task = new_task(sql_registry, status=TaskStatus.SUCCESS)
        age(sql_registry, task.id, expires_at=utcnow() - 40 * 24 * HOUR)
    assert purging.purge(sql_registry, purging.cutoff(30))["tasks"] == 5
    assert task_rows(sql_registry) == 0
