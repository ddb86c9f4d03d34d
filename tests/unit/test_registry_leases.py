"""The registry's leases (``acquire_lease``, ``release_lease``), on SQLite, MariaDB and
PostgreSQL; test_registry_http.py runs these tests again through the http registry."""

from __future__ import annotations

import datetime
import threading

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from abbild.db.models import LeaseRow
from abbild.errors import Invalid


def expire(registry, name: str) -> None:
    """Let the lease run out behind the registry's back."""
    with Session(registry.engine) as session, session.begin():
        session.execute(update(LeaseRow).where(LeaseRow.name == name).values(expires_at=datetime.datetime(2024, 1, 1)))


def test_one_holder_at_a_time_and_renewals(sql_registry):
    assert sql_registry.acquire_lease("scrub", "host-a:1", 60) is True
    assert sql_registry.acquire_lease("scrub", "host-b:2", 60) is False
    assert sql_registry.acquire_lease("scrub", "host-a:1", 60) is True  # a renewal
    assert sql_registry.acquire_lease("audit", "host-b:2", 60) is True  # another lease


def test_an_expired_lease_goes_to_the_next_taker(sql_registry):
    assert sql_registry.acquire_lease("scrub", "host-a:1", 60)
    expire(sql_registry, "scrub")
    assert sql_registry.acquire_lease("scrub", "host-b:2", 60) is True
    assert sql_registry.acquire_lease("scrub", "host-a:1", 60) is False


def test_release_frees_it_for_others_only_when_the_holder_releases(sql_registry):
    assert sql_registry.acquire_lease("scrub", "host-a:1", 60)
    sql_registry.release_lease("scrub", "host-b:2")  # not its lease: nothing happens
    assert sql_registry.acquire_lease("scrub", "host-b:2", 60) is False
    sql_registry.release_lease("scrub", "host-a:1")
    assert sql_registry.acquire_lease("scrub", "host-b:2", 60) is True
    sql_registry.release_lease("never-taken", "host-b:2")


@pytest.mark.parametrize(
    ("name", "holder", "seconds"),
    [("", "h", 60), ("n" * 256, "h", 60), ("scrub", "", 60), ("scrub", "h", 0), ("scrub", "h", 86401)],
)
def test_bad_leases_are_invalid(sql_registry, name, holder, seconds):
    with pytest.raises(Invalid):
        sql_registry.acquire_lease(name, holder, seconds)


def test_of_many_takers_at_once_exactly_one_gets_it(sql_registry):
    got: list[int] = []
    start = threading.Barrier(6)

    def take(i: int) -> None:
        start.wait()
        if sql_registry.acquire_lease("purge", f"host:{i}", 60):
            got.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 1
