"""``abbild audit``: the auditor and updater (:mod:`abbild.audit`) from the command line,
for cron or an operator. Exits 0 when all is well, 1 with findings, 2 when something
could not be checked (or another audit holds the deployment's lease)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from abbild.errors import Busy, ConfigError


def add_parser(sub, with_config, embedded) -> None:
    a = with_config(
        sub.add_parser(
            "audit",
            help="re-hash image data, find orphaned data, stuck images and bad cache copies; "
            "--repair what is safe, --update missing sizes and hashes",
        ),
        data_dir=embedded,
    )
    a.add_argument("--store", metavar="S", help="check this store only (default: every store)")
    a.add_argument(
        "--repair",
        action="store_true",
        help="requeue stuck uploads whose claim is stale, delete orphans older than the grace period, "
        "deactivate images with corrupt data, remove bad cache copies (default: audit_repair)",
    )
    a.add_argument(
        "--update",
        action="store_true",
        help="fill in size and os_hash_algo/os_hash_value where images lack them (default: audit_update)",
    )
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument(
        "--rate",
        type=_non_negative(float),
        metavar="MIB_S",
        help="read image data at most this many MiB/s (0: unlimited; default: audit_rate_limit)",
    )
    a.add_argument(
        "--grace",
        type=_non_negative(int),
        metavar="SECONDS",
        help="delete orphans only once they are this old (default: audit_orphan_grace)",
    )
    a.set_defaults(func=cmd_audit)


def _non_negative(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
        return value

    parse.__name__ = kind.__name__
    return parse


def cmd_audit(args) -> int:
    from abbild import periodic
    from abbild.audit import LEASE, Auditor
    from abbild.service import ImageService
    from abbild_cmd.cli import _check_cache, command_config
    from abbild_cmd.progress import ProgressBar
    from abbild_cmd.server import server_opts

    conf = command_config(args, "abbild-audit")
    conf.register_opts(server_opts(default_port=9292))  # bind_port names this node's cache
    service = ImageService.from_config(conf, recover=False)
    # On a terminal only: a line per image would flood cron's mail.
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.store and service.stores.for_location(args.store) is None:
            names = ", ".join(s.name for s in service.stores)
            raise ConfigError(f"--store {args.store}: no such store; the stores are: {names}")
        auditor = Auditor.from_config(
            service,
            _check_cache(conf, service),
            store=args.store,
            repair=args.repair or None,
            update=args.update or None,
            rate=args.rate,
            grace=args.grace,
            progress=progress,
        )
        with periodic.lease(service.registry, LEASE, periodic.holder()) as held:
            if not held:
                raise Busy("another audit is running in this deployment (it holds the 'audit' lease); try later")
            counts = auditor.run(stopping)
    finally:
        if progress is not None:
            progress.done()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.registry.close()
    if args.json:
        print(json.dumps(_as_json(auditor, counts, stopping.is_set()), indent=2))
    else:
        _print_report(auditor, counts)
    if stopping.is_set():
        print("abbild: audit interrupted; the report covers what was checked until then", file=sys.stderr)
        return 2
    if counts["error"]:
        return 2
    return 1 if auditor.findings else 0


def _as_json(auditor, counts: dict, interrupted: bool) -> dict:
    return {
        "findings": [vars(f) for f in auditor.findings],
        "updates": [vars(u) for u in auditor.updates],
        "counts": counts,
        "interrupted": interrupted,
    }


def _print_report(auditor, counts: dict) -> None:
    from abbild.audit import KINDS

    rows = [("KIND", "IMAGE", "STORE", "ACTION", "DETAIL")]
    for f in auditor.findings:
        rows.append((f.kind, f.image_id or "-", f.store or "-", f.action or "-", f.detail))
    for u in auditor.updates:
        rows.append(("updated", u.image_id, "-", "-", ", ".join(f"{k}={v}" for k, v in u.fields.items())))
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(4)]  # the detail runs on
        for row in rows:
            print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[4]]))
    found = sum(counts[kind] for kind in KINDS)
    print(
        f"{counts['checked']} location(s) checked, {counts['bytes'] / (1 << 20):.1f} MiB read; "
        f"{found} finding(s), {counts['repaired']} repaired, {counts['updated']} image(s) updated"
    )
