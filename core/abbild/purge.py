"""The database purge: the rows of images deleted long ago go, their ids stay taken.

A deleted image keeps its row (status ``deleted``) with its properties, tags,
locations and members, so that its id is never given to another image: a compute
node that knows the id must never boot other data under it. The purge removes those
rows once they are older than ``purge_age_in_days`` and leaves a tombstone of the id
(:meth:`abbild.registry.Registry.purge`), so the database stops growing with every
image ever deleted while the ids stay taken for ever. Tasks go the same way once they
expired (``[task] task_time_to_live`` after they ended) that long ago.

``abbild db purge`` runs it once; ``purge_interval`` runs it inside the API processes
(one process per deployment at a time, under the lease ``purge``).
"""

from __future__ import annotations

import datetime
import threading

from abbild.image import utcnow
from abbild.registry import PURGE_TABLES, Registry

#: Lease of the purge: one runner per deployment (a cron job, an API process).
LEASE = "purge"
#: Rows asked of the registry per call: bounds one call's duration (an http registry
#: answers within its timeout) and how long a stop waits for the call in progress.
CHUNK = 1000
#: The most days :func:`cutoff` accepts (a thousand years: every database's dates hold it).
MAX_AGE_IN_DAYS = 365_000


def cutoff(age_in_days: int) -> datetime.datetime:
    """The moment *age_in_days* days ago (naive UTC): what was deleted before goes.

    :raises ValueError: *age_in_days* is negative or above :data:`MAX_AGE_IN_DAYS`.
    """
    if not 0 <= age_in_days <= MAX_AGE_IN_DAYS:
        raise ValueError(f"a whole number of days from 0 to {MAX_AGE_IN_DAYS}, not {age_in_days}")
    return utcnow() - datetime.timedelta(days=age_in_days)


def purge(
    registry: Registry,
    older_than: datetime.datetime,
    max_rows: int | None = None,
    stopping: threading.Event | None = None,
) -> dict[str, int]:
    """Purge what was deleted before *older_than*, in calls of at most :data:`CHUNK`
    rows, until nothing is left, *max_rows* is reached or *stopping* is set.

    :param max_rows: at most this many deleted images, at most this many removed
        memberships of other images and at most this many expired tasks (the rows of a purged image in the other tables go
        with it, however many); ``None``: all.
    :returns: the rows removed, by table (the keys of :data:`~abbild.registry.PURGE_TABLES`).
    """
    removed = dict.fromkeys(PURGE_TABLES, 0)
    left = max_rows
    while not (stopping is not None and stopping.is_set()):
        limit = CHUNK if left is None else min(CHUNK, left)
        if limit <= 0:
            break
        counts = registry.purge(older_than, limit)
        for table in PURGE_TABLES:
            removed[table] += counts.get(table, 0)
        if left is not None:
            # Each call takes up to *limit* of each kind, so the calls' limits add up to
            # at most max_rows of each.
            left -= limit
        # Fewer images, member rows and tasks than asked: no kind has more to give.
        if all(counts.get(kind, 0) < limit for kind in ("images", "image_members", "tasks")):
            break
    return removed


class Purger:
    """The periodic purge: :meth:`run` is one pass (for :class:`abbild.periodic.Periodic`)."""

    def __init__(self, registry: Registry, age_in_days: int) -> None:
        cutoff(age_in_days)  # a bad age fails here, at start-up, not at the first run
        self.registry = registry
        self.age_in_days = age_in_days

    @classmethod
    def from_config(cls, conf, registry: Registry) -> Purger:
        return cls(registry, conf.purge_age_in_days)

    def run(self, stopping: threading.Event) -> dict[str, int]:
        """Purge everything deleted more than ``age_in_days`` ago; returns soon after
        *stopping* is set (at the end of the call in progress)."""
        return purge(self.registry, cutoff(self.age_in_days), None, stopping)
