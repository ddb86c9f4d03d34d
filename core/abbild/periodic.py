"""The periodic processes' runner: each task every so many seconds, and a task that must
run in one place per deployment (the scrubber, the purge, the auditor) only while this
process holds the task's lease in the registry, so a cron command on one host and the
API processes on others never run it at the same time.

A lease is taken for :data:`LEASE_SECONDS` and renewed every third of that while the
task runs; a holder that dies leaves it to expire, and another process takes it then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from abbild.errors import RegistryError
from abbild.registry import Registry

LOG = logging.getLogger(__name__)

LEASE_SECONDS = 60.0

# This process's started runners, for a graceful shutdown to wait for (stop_all).
_started: weakref.WeakSet = weakref.WeakSet()


def holder() -> str:
    """This process, as a lease names its holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def lease(registry: Registry, name: str, holder: str, seconds: float = LEASE_SECONDS) -> Iterator[bool]:
    """Hold the lease *name* while the block runs, renewed on a thread; yields whether it
    was acquired (``False``: another process holds it, the block should do nothing). A
    renewal that fails is logged: the block goes on, since stopping half way is worse
    than overlapping with a successor for a moment (the tasks claim what they touch)."""
    if not registry.acquire_lease(name, holder, seconds):
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(seconds / 3):
            try:
                if not registry.acquire_lease(name, holder, seconds):
                    LOG.warning("lease %s: taken over by another process while %s held it", name, holder)
            except RegistryError as exc:
                LOG.warning("lease %s: could not renew it: %s", name, exc)

    renewer = threading.Thread(target=renew, name=f"abbild-lease-{name}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        try:
            registry.release_lease(name, holder)
        except RegistryError as exc:
            LOG.warning("lease %s: could not release it (it expires by itself): %s", name, exc)


@dataclass
class _Task:
    name: str
    interval: float
    run: Callable[[threading.Event], object]
    deployment_wide: bool
    due: float = 0.0


class Periodic:
    """Runs the added tasks, each every ``interval`` seconds, one after the other on one
    daemon thread, until *stopping* is set (graceful shutdown) or :meth:`stop`. A task's
    ``run`` gets *stopping* and must return soon after it is set."""

    def __init__(self, registry: Registry, holder: str, stopping: threading.Event) -> None:
        self.registry = registry
        self.holder = holder
        self.stopping = stopping
        self.tasks: list[_Task] = []
        self._thread: threading.Thread | None = None

    def add(
        self,
        name: str,
        interval: float,
        run: Callable[[threading.Event], object],
        deployment_wide: bool = True,
    ) -> None:
        """Run *run* every *interval* seconds (0: never), the first time one interval
        after :meth:`start`; with *deployment_wide*, only while holding the lease *name*."""
        if interval > 0:
            self.tasks.append(_Task(name, interval, run, deployment_wide, time.monotonic() + interval))

    def run_once(self, name: str) -> bool:
        """Run the task *name* now; whether it ran (not: another process holds its lease)."""
        [task] = [t for t in self.tasks if t.name == name]
        return self._run(task)

    def _run(self, task: _Task) -> bool:
        try:
            if not task.deployment_wide:
                result = task.run(self.stopping)
            else:
                with lease(self.registry, task.name, self.holder) as held:
                    if not held:
                        LOG.debug("%s: another process holds its lease", task.name)
                        return False
                    result = task.run(self.stopping)
        except Exception:
            LOG.exception("%s failed; it runs again in %s seconds", task.name, task.interval)
            return True
        LOG.info("%s: %s", task.name, result)
        return True

    def start(self) -> Periodic:
        if self.tasks and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="abbild-periodic", daemon=True)
            self._thread.start()
            _started.add(self)
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            task = min(self.tasks, key=lambda t: t.due)
            if self.stopping.wait(max(0.0, task.due - time.monotonic())):
                return
            self._run(task)
            task.due = time.monotonic() + task.interval


def stop_all(timeout: float) -> None:
    """Stop this process's runners (graceful shutdown), waiting at most *timeout* seconds
    in all for the tasks in progress to end."""
    stoppers = [threading.Thread(target=p.stop, daemon=True) for p in list(_started)]
    for stopper in stoppers:
        stopper.start()
    deadline = time.monotonic() + timeout
    for stopper in stoppers:
        stopper.join(max(0.0, deadline - time.monotonic()))
