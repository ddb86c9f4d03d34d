"""``abbild scrub``: the scrubber (:mod:`abbild.scrubber`) from the command line, once
(for cron), as a daemon, or to restore a delayed delete. Exits 0 when every due
image's data is deleted (or the image restored), 1 when some data could not be
deleted yet (the next pass retries it), 2 on an error."""

from __future__ import annotations

import json
import signal
import sys
import threading

from abbild.errors import ConfigError, Forbidden


def add_parser(sub, with_config, embedded) -> None:
    p = with_config(
        sub.add_parser(
            "scrub",
            help="delete the data of deleted images (pending_delete) that is due; --restore a delayed delete",
        ),
        data_dir=embedded,
    )
    p.add_argument(
        "--daemon", action="store_true", help="run a pass every scrub_interval seconds until SIGTERM or Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="print each pass's counts as one line of JSON")
    p.add_argument(
        "--restore",
        metavar="ID",
        help="bring back image ID, deleted with delayed_delete and its data not yet scrubbed, as 'active'",
    )
    p.set_defaults(func=cmd_scrub)


def cmd_scrub(args) -> int:
    from abbild.scrubber import Scrubber
    from abbild.service import ImageService
    from abbild_cmd.cli import command_config

    if args.restore and args.daemon:
        raise ConfigError("give --restore or --daemon, not both")
    conf = command_config(args, "abbild-scrub")
    if args.daemon and conf.scrub_interval <= 0:
        raise ConfigError("abbild scrub --daemon needs scrub_interval above 0 (seconds between passes)")
    service = ImageService.from_config(conf, recover=False)
    try:
        scrubber = Scrubber(service)
        if args.restore:
            return _restore(scrubber, args.restore.strip().lower(), args.json)
        stopping = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                counts = scrubber.run(stopping)
                _print_counts(counts, args.json)
                if not args.daemon:
                    return 1 if counts["failed"] or counts["in_use"] else 0
                if stopping.wait(conf.scrub_interval):
                    return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        service.registry.close()


def _restore(scrubber, image_id: str, as_json: bool) -> int:
    try:
        image = scrubber.restore(image_id)
    except Forbidden as exc:
        raise Forbidden(
            f"{exc} Restoring takes the registry's full trust: run abbild scrub --restore with the "
            f"registry's shared secret (auth_strategy = hmac) or on the database itself (registry = sql)."
        ) from None
    if as_json:
        print(json.dumps({"restored": image.id, "status": image.status.value, "locations": len(image.locations)}))
    else:
        print(f"image {image.id} restored: {image.status.value}, with {len(image.locations)} location(s)")
    return 0


def _print_counts(counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        print(json.dumps(counts), flush=True)
    else:
        print(
            f"scrub: {counts['deleted']} image(s) deleted with their data, {counts['failed']} failed and "
            f"{counts['in_use']} in use (tried again later); not due: {counts['waiting']} waiting for "
            f"scrub_time, {counts['held']} held by another process, {counts['backing_off']} backing off",
            flush=True,
        )
    if counts["failed"] or counts["in_use"]:
        print("abbild: some data could not be deleted yet; the log says why, the next pass retries", file=sys.stderr)
