"""Background work: the one bounded pool of threads for work that outlives the request
that started it (a location import reading and hashing remote data, a failed upload's
claim released once the registry is back; a delete a store failed is the scrubber's).

Bounded three ways, so that no caller can make a process start threads or hold
memory without limit: a fixed number of threads; a fixed number of jobs waiting for
one (beyond it: :class:`~abbild.errors.Busy`, HTTP 503); and a fixed number of jobs
per project, running or waiting (beyond it: :class:`~abbild.errors.TooManyJobs`,
HTTP 429).

Graceful shutdown drains every pool of the process (:func:`drain_all`): it takes no
more jobs and sets ``closing``, which jobs that only wait to try something again
take as their cue to leave it to the next start; it gives the others the grace period
to finish, then sets ``stopping``, which jobs at work check between steps to stop and
roll back.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from abbild.errors import Busy, TooManyJobs

LOG = logging.getLogger(__name__)

_pools: weakref.WeakSet[Jobs] = weakref.WeakSet()


class Jobs:
    """A pool of *workers* threads with room for *queue_size* waiting jobs and at most
    *per_project* jobs (running or waiting) of any one project."""

    def __init__(self, workers: int, queue_size: int, per_project: int) -> None:
        self.capacity = workers + queue_size
        self.per_project = per_project
        self.closing = threading.Event()
        self.stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="abbild-job")
        self._lock = threading.Condition()
        self._pending = 0
        self._by_project: collections.Counter[str] = collections.Counter()
        _pools.add(self)

    @classmethod
    def from_config(cls, conf) -> Jobs:
        return cls(conf.background_workers, conf.background_queue_size, conf.background_jobs_per_project)

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def submit(self, job: Callable[[], None], *, project: str | None = None) -> None:
        """Run *job* on a pool thread. Its exceptions are logged, never raised.

        :param project: whom the job works for (None: the service itself, which has
            no per-project limit).
        :raises abbild.errors.TooManyJobs: *project* has its limit of jobs pending.
        :raises abbild.errors.Busy: the pool is full, or shutting down.
        """
        with self._lock:
            if self.closing.is_set():
                raise Busy("This server is shutting down; try again in a moment.")
            if project is not None and self._by_project[project] >= self.per_project:
                raise TooManyJobs(
                    f"Project {project} has {self.per_project} background jobs running or waiting "
                    f"(background_jobs_per_project); try again when one has finished."
                )
            if self._pending >= self.capacity:
                raise Busy("This server has no room for more background work now; try again in a moment.")
            self._pending += 1
            if project is not None:
                self._by_project[project] += 1
        try:
            self._executor.submit(self._run, job, project)
        except RuntimeError:  # the executor was shut down under us
            self._finished(project)
            raise Busy("This server is shutting down; try again in a moment.") from None

    def _run(self, job: Callable[[], None], project: str | None) -> None:
        try:
            job()
        except Exception:
            LOG.exception("background job %r failed", getattr(job, "__name__", job))
        finally:
            self._finished(project)

    def _finished(self, project: str | None) -> None:
        with self._lock:
            self._pending -= 1
            if project is not None:
                self._by_project[project] -= 1
                if not self._by_project[project]:
                    del self._by_project[project]
            self._lock.notify_all()

    def drain(self, grace: float, rollback: float = 10.0) -> bool:
        """Take no more jobs; give the running and waiting ones *grace* seconds to
        end, then tell them to stop (``stopping``) and wait *rollback* seconds more.

        :returns: whether all ended.
        """
        self.closing.set()
        done = self._wait_idle(grace)
        if not done:
            self.stopping.set()
            done = self._wait_idle(rollback)
        self._executor.shutdown(wait=done, cancel_futures=True)
        return done

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return not self._pending


def drain_all(grace: float, rollback: float = 10.0) -> bool:
    """Drain every pool of this process, side by side (graceful shutdown); see
    :meth:`Jobs.drain`."""
    pools = list(_pools)
    results = [False] * len(pools)

    def drain(i: int) -> None:
        results[i] = pools[i].drain(grace, rollback)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(pools))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not all(results):
        LOG.warning("graceful shutdown: background jobs still running after %ss", grace + rollback)
    return all(results)
