"""The periodic runner (abbild.periodic) over a real SQLite registry: its leases keep a
deployment-wide task to one process, and graceful shutdown stops it."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from abbild.db.registry import SQLRegistry
from abbild.periodic import Periodic, holder, lease


@pytest.fixture
def registry(tmp_path):
    registry = SQLRegistry(url=f"sqlite:///{tmp_path}/registry.db")
    registry.prepare()
    yield registry
    registry.close()


def test_a_lease_is_held_for_the_block_renewed_and_released(registry, monkeypatch):
    with lease(registry, "scrub", "host-a:1", seconds=3) as held:
        assert held
        # Longer than the lease: only its renewals (every second) keep it, and a busy
        # host would have to delay three in a row to lose it.
        time.sleep(4)
        assert registry.acquire_lease("scrub", "host-b:2", 60) is False
        with lease(registry, "scrub", "host-b:2") as other:
            assert other is False
    assert registry.acquire_lease("scrub", "host-b:2", 60) is True


def _hold_in_another_process(url: str, started, release) -> None:
    registry = SQLRegistry(url=url)
    with lease(registry, "purge", holder()) as held:
        assert held
        started.set()
        release.wait(30)
    registry.close()


def test_a_task_runs_where_its_lease_is_and_nowhere_else(registry, tmp_path):
    runs: list[str] = []
    periodic = Periodic(registry, "host-a:1", threading.Event())
    periodic.add("purge", 3600, lambda stopping: runs.append("purge"))
    periodic.add("local", 3600, lambda stopping: runs.append("local"), deployment_wide=False)
    periodic.add("off", 0, lambda stopping: runs.append("off"))
    assert [t.name for t in periodic.tasks] == ["purge", "local"]

    ctx = multiprocessing.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_in_another_process, args=(f"sqlite:///{tmp_path}/registry.db", started, release))
    other.start()
    try:
        assert started.wait(30)
        assert periodic.run_once("purge") is False  # another process holds the lease
        assert periodic.run_once("local") is True  # this node's own work needs no lease
    finally:
        release.set()
        other.join(30)
    assert periodic.run_once("purge") is True
    assert runs == ["local", "purge"]


def test_tasks_repeat_survive_failures_and_stop_with_graceful_shutdown(registry):
    calls: list[float] = []
    stopping = threading.Event()

    def flaky(stop: threading.Event) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("the store is down")

    periodic = Periodic(registry, "host-a:1", stopping).start()  # nothing to run: no thread
    assert periodic._thread is None
    periodic.add("audit", 0.1, flaky)
    periodic.start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) >= 3, "a failed run must not end the task"
    stopping.set()  # graceful shutdown sets the jobs' event
    periodic._thread.join(5)
    assert not periodic._thread.is_alive()
    assert registry.acquire_lease("audit", "host-b:2", 60) is True  # released after each run
