"""``abbild db purge``: remove the rows of images deleted long ago (:mod:`abbild.purge`),
for cron or an operator. Exits 0 when done, 2 on an error, when interrupted, or when
another purge holds the deployment's lease."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from abbild.purge import MAX_AGE_IN_DAYS


def add_parser(sub, with_config, embedded) -> None:
    """``purge`` under *sub*, the subcommands of ``abbild db``."""
    p = with_config(
        sub.add_parser(
            "purge",
            help="remove the rows of images deleted (and of tasks expired) more than N days ago; the "
            "images' ids stay taken (tombstones)",
        ),
        data_dir=embedded,
    )
    p.add_argument(
        "--age-in-days",
        type=_age_in_days,
        default=30,
        metavar="N",
        help="purge what was deleted more than N days ago (0: everything deleted so far; default 30)",
    )
    p.add_argument(
        "--max-rows",
        type=_max_rows,
        default=-1,
        metavar="M",
        help="purge at most M deleted images (each with all its properties, tags, locations, members "
        "and cache entries), at most M removed memberships of other images and at most M expired "
        "tasks in this run; "
        "-1 (the default): all",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_purge)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _age_in_days(text: str) -> int:
    days = _whole_number(text)
    if not 0 <= days <= MAX_AGE_IN_DAYS:
        raise argparse.ArgumentTypeError(f"{days} days: give 0 to {MAX_AGE_IN_DAYS}")
    return days


def _max_rows(text: str) -> int:
    rows = _whole_number(text)
    if rows == 0 or rows < -1:
        raise argparse.ArgumentTypeError(f"{rows} rows: give 1 or more, or -1 for all")
    return rows


def cmd_purge(args) -> int:
    from abbild import periodic, purge
    from abbild.errors import Busy
    from abbild.service import load_registry
    from abbild_cmd.cli import _safe_url, command_config

    conf = command_config(args, "abbild-purge")
    older_than = purge.cutoff(args.age_in_days)
    max_rows = None if args.max_rows == -1 else args.max_rows
    # Stop between two calls, not in one: every call leaves the database consistent.
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    registry = load_registry(conf)
    try:
        with periodic.lease(registry, purge.LEASE, periodic.holder()) as held:
            if not held:
                raise Busy(
                    "another purge is running in this deployment (it holds the 'purge' lease: "
                    "abbild db purge, or an API process with purge_interval); try later"
                )
            removed = purge.purge(registry, older_than, max_rows, stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        registry.close()
    where = conf.registry_client.url if conf.registry == "http" else _safe_url(conf.database.connection)
    if args.json:
        print(
            json.dumps(
                {
                    "registry": where,
                    "older_than": older_than.replace(microsecond=0).isoformat(),
                    "removed": removed,
                    "interrupted": stopping.is_set(),
                },
                indent=2,
            )
        )
    else:
        print(f"{where}: purged what was deleted before {older_than:%Y-%m-%d %H:%M:%S} UTC")
        width = max(len(table) for table in removed)
        print(f"{'TABLE'.ljust(width)}  ROWS")
        for table, count in removed.items():
            print(f"{table.ljust(width)}  {count}")
        print(f"{removed['images']} image id(s) kept as tombstones: they are never given to a new image")
    if stopping.is_set():
        print("abbild: purge interrupted; the rows above are gone, the rest stays for the next run", file=sys.stderr)
        return 2
    return 0
