"""``abbild``: one command with subcommands for every process of the service."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from abbild import config, logging_setup
from abbild.errors import AbbildError, ConfigError
from abbild_cmd import audit, metadefs, purge, replicate, scrub
from abbild_cmd.progress import ProgressBar
from abbild_paste import pipeline

LOG = logging.getLogger("abbild.cli")


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "abbild")


def _config_files(args) -> list[str]:
    """``abbild serve``'s: --config-file, else the embedded default in --data-dir."""
    if args.config_file:
        return args.config_file
    return [config.embedded_config_file(args.data_dir or _default_data_dir())]


def _service_config_files(args) -> list[str]:
    """``abbild db`` and ``abbild stores``: --config-file, else an explicit --data-dir
    (the embedded default of ``abbild serve``), else ``$ABBILD_CONFIG_DIR/abbild-api.conf``,
    as ``abbild api`` and the WSGI application. Never the embedded default unasked."""
    if args.config_file and args.data_dir:
        raise ConfigError("give --config-file or --data-dir, not both")
    if args.data_dir:
        return [config.embedded_config_file(args.data_dir)]
    return config.service_config_files("abbild-api", args.config_file)


def cmd_serve(args) -> int:
    from abbild.service import ImageService
    from abbild_cmd.server import EmbeddedServer

    if args.config_file and args.data_dir:
        raise ConfigError(
            "--data-dir applies to the embedded default only; with --config-file, "
            "set [database] connection and the stores' datadir in that file"
        )
    files = _config_files(args)
    conf = config.load(files)
    _setup_logging(conf, args, "abbild")
    # The embedded default is noauth on loopback; anything beyond loopback must say how
    # callers are authenticated.
    flavor = pipeline.with_cache(conf, args.auth or conf.paste_deploy.flavor or "noauth")
    auth = flavor.removesuffix(pipeline.CACHE_SUFFIX)
    if auth == "noauth":
        config.refuse_noauth_beyond_loopback(args.host, "abbild serve")
    pipeline.check(conf, files, flavor)
    # The embedded default's database gets the shipped metadata definitions on its
    # first start only: an operator who removes or changes them keeps that choice.
    first_start = not args.config_file and metadefs.database_without_metadefs(conf)
    # Build everything once before forking: a broken config fails here, with its
    # message, instead of in a worker that gunicorn restarts forever.
    service = ImageService.from_config(conf)
    if first_start:
        metadefs.load_on_first_start(service.registry)
    cache = _check_cache(conf, service)
    service.registry.close()
    where = ", ".join(f"{s.name} ({s.driver_name})" for s in service.stores)
    print(f"abbild {__import__('abbild').__version__} on http://{args.host}:{args.port}/", file=sys.stderr)
    print(f"  config:   {', '.join(files)}", file=sys.stderr)
    print(f"  metadata: {_safe_url(conf.database.connection)}", file=sys.stderr)
    print(f"  stores:   {where}; uploads go to {conf.default_backend}", file=sys.stderr)
    for store in service.stores:
        if store.driver_name == "filesystem":
            print(f"  data:     {store.driver.properties().get('data_dir')}", file=sys.stderr)
    if cache is not None:
        print(f"  cache:    {cache.directory} (node {cache.node})", file=sys.stderr)
    if auth == "noauth":
        print("  auth:     OFF (noauth: every caller is an administrator; keep this on 127.0.0.1)", file=sys.stderr)
    elif auth == "trusted-headers":
        print(
            "  auth:     trusted headers (X-Identity-Status, X-Project-Id, X-Roles from the gateway in front;"
            " only that gateway may reach this port)",
            file=sys.stderr,
        )
    elif auth == "keystone":
        print("  auth:     Keystone tokens (keystonemiddleware, [keystone_authtoken] in the config)", file=sys.stderr)
    EmbeddedServer(
        files,
        args.host,
        args.port,
        threads=args.threads,
        workers=args.workers,
        access_log=args.access_log,
        flavor=flavor,
        client_header_timeout=args.client_header_timeout,
        client_body_timeout=args.client_body_timeout,
        conf=conf,
    ).run()
    return 0


def cmd_registry(args) -> int:
    from abbild_cmd.registry_server import serve

    serve(
        config.service_config_files("abbild-registry", args.config_file),
        args.host,
        args.port,
        threads=args.threads,
        access_log=args.access_log,
    )
    return 0


def cmd_api(args) -> int:
    """The API service configured for production (``$ABBILD_CONFIG_DIR/abbild-api.conf``
    or --config-file) on the embedded multi-threaded server; SIGTERM stops it gracefully."""
    from abbild.service import ImageService
    from abbild_cmd.server import EmbeddedServer, server_opts

    files = config.service_config_files("abbild-api", args.config_file)
    conf = config.load(files)
    conf.register_opts(server_opts(default_port=9292))
    _setup_logging(conf, args, "abbild-api")
    flavor = pipeline.flavor_of(conf)
    if flavor.removesuffix(pipeline.CACHE_SUFFIX) == "noauth":
        config.refuse_noauth_beyond_loopback(conf.bind_host, "abbild api")
    pipeline.check(conf, files, flavor)
    # As in cmd_serve: a broken config fails here, before any worker is forked.
    service = ImageService.from_config(conf)
    _check_cache(conf, service)
    service.registry.close()
    LOG.info(
        "abbild-api %s listening on %s:%s with %d worker(s) x %d threads; config: %s",
        __import__("abbild").__version__,
        conf.bind_host,
        conf.bind_port,
        conf.workers,
        conf.threads,
        ", ".join(files),
    )
    EmbeddedServer(
        files,
        conf.bind_host,
        conf.bind_port,
        threads=conf.threads,
        workers=conf.workers,
        access_log=conf.access_log,
        graceful_shutdown_timeout=conf.graceful_shutdown_timeout,
        client_header_timeout=conf.client_header_timeout,
        client_body_timeout=conf.client_body_timeout,
        conf=conf,
    ).run()
    return 0


def _check_cache(conf, service):
    """This node's image cache, made ready (its directories created) before any worker
    starts, so that a cache directory it cannot use fails here; None without one."""
    from abbild.cache import ImageCache

    try:
        return ImageCache.from_config(conf, service.registry)
    except OSError as exc:
        raise ConfigError(f"image_cache_dir = {conf.image_cache_dir}: {exc}") from exc


def _setup_logging(conf, args, program: str) -> None:
    if args.verbose:
        conf.set_override("debug", True)
    logging_setup.setup(conf, program)


def command_config(args, program: str):
    """The config of a periodic process run as a command (``abbild scrub``, ``audit``,
    ``db purge``): the service's config files, and its logging in the OpenStack format,
    to ``log_file`` if set, else to stderr (stdout is the command's answer)."""
    conf = config.load(_service_config_files(args))
    if not (conf.log_file or conf.log_dir):
        conf.set_override("use_stderr", True)
    _setup_logging(conf, args, program)
    return conf


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db(args) -> int:
    from abbild.db import migrate
    from abbild.db.registry import SQLRegistry

    files = _service_config_files(args)
    conf = config.load(files)
    registry = SQLRegistry(conf)
    # Name the database: a sync of another one than meant must not pass for success.
    database = _safe_url(conf.database.connection)
    try:
        if args.db_command == "sync":
            before = migrate.current(registry.engine)
            after = migrate.sync(registry.engine)
            change = f"upgraded from {before} to" if before and before != after else "at" if before else "created at"
            print(f"{database}: {change} revision {after} (config: {', '.join(files)})")
        else:
            print(f"{database}: revision {migrate.current(registry.engine) or 'none (run abbild db sync)'}")
    finally:
        registry.close()
    return 0


def cmd_stores(args) -> int:
    from abbild.stores import StoreManager, installed_drivers

    print("Installed drivers:")
    for name, target in sorted(installed_drivers().items()):
        print(f"  {name:12} {target}")
    conf = config.load(_service_config_files(args))
    stores = StoreManager(conf)
    print("Configured stores:")
    failures = 0
    for store in stores:
        default = " (default)" if store is stores.default else ""
        caps = "|".join(c.name for c in type(store.capabilities) if c in store.capabilities and c.name != "NONE")
        try:
            health = store.driver.check()
        except AbbildError as exc:
            health, failures = f"FAILED: {exc}", failures + 1
        print(f"  {store.name}{default}: driver={store.driver_name} capabilities={caps} check: {health}")
    return 1 if failures else 0


def cmd_cache(args) -> int:
    """This node's image cache, as the API process of the same config sees it: the node
    is ``worker_self_reference_url`` (default ``http://<hostname>:<bind_port>``)."""
    import json

    from abbild.cache import ImageCache
    from abbild.service import ImageService, load_registry
    from abbild_cmd.server import server_opts

    files = _service_config_files(args)
    conf = config.load(files)
    conf.register_opts(server_opts(default_port=9292))  # bind_port names the node, as for abbild api
    if not conf.image_cache_dir:
        raise ConfigError(f"image_cache_dir is not set in {', '.join(files)}: this node has no image cache")
    service = None
    registry = load_registry(conf)
    try:
        cache = ImageCache.from_config(conf, registry)
        command = args.cache_command
        if command == "list":
            result = _cache_state(cache)
        elif command == "queue":
            image = registry.get_image(args.image_id.lower())
            if image.status.value != "active":
                raise ConfigError(f"image {image.id} is {image.status.value}: only active images can be queued")
            cache.queue(image.id)
            result = {"queued": image.id}
        elif command == "remove":
            if not cache.remove(args.image_id.lower()):
                print(f"abbild: image {args.image_id} is neither cached nor queued on {cache.node}", file=sys.stderr)
                return 1
            result = {"removed": args.image_id.lower()}
        elif command == "clear":
            result = {"removed": cache.clear(args.target or "")}
        elif command == "clean":
            result = cache.clean()
        elif command == "prune":
            result = cache.prune()
        else:
            service = ImageService.from_config(conf, recover=False)
            progress = ProgressBar(sys.stderr)
            try:
                with cache.lock("prefetch"):  # waits for a prefetch the API processes are running
                    result = {"cached": cache.prefetch(service.read_for_cache, progress)}
            finally:
                progress.done()
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            _print_cache_result(command, result, cache)
    finally:
        registry.close()
        if service is not None:
            service.registry.close()
    return 0


def _cache_state(cache) -> dict:
    """This node's cache in the form of ``GET /v2/cache`` (times in seconds since the epoch)."""
    from abbild_api.cache import cache_state

    return {"node": cache.node, "directory": cache.directory, **cache_state(cache)}


def _print_cache_result(command: str, result: dict, cache) -> None:
    if command == "list":
        import datetime

        def when(epoch: float) -> str:
            if not epoch:
                return "-"
            return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

        rows = [("ID", "State", "Last accessed (UTC)", "Last modified (UTC)", "Size", "Hits")]
        for e in result["cached_images"]:
            rows.append(
                (
                    e["image_id"],
                    "cached",
                    when(e["last_accessed"]),
                    when(e["last_modified"]),
                    str(e["size"]),
                    str(e["hits"]),
                )
            )
        rows += [(image_id, "queued", "-", "-", "-", "-") for image_id in result["queued_images"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print(f"node {cache.node}, {cache.directory}")
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    elif command == "prefetch":
        print(f"{len(result['cached'])} image(s) fetched into the cache: {' '.join(result['cached']) or '-'}")
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="abbild", description="abbild, a virtual-machine image service")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, data_dir=None, default="$ABBILD_CONFIG_DIR/abbild-api.conf, /etc/abbild"):
        sp.add_argument(
            "--config-file",
            action="append",
            metavar="PATH",
            help=f"oslo.config file (repeatable; later files win); default: {default}",
        )
        if data_dir:
            sp.add_argument("--data-dir", metavar="DIR", help=data_dir)
        return sp

    embedded = "the embedded default of `abbild serve` in DIR instead of a config file"

    s = with_config(
        sub.add_parser("serve", help="run the whole service (API on the embedded server)"),
        data_dir=f"embedded default only: where metadata and images live (default {_default_data_dir()})",
        default="the embedded default (SQLite and a local directory in --data-dir, no auth)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9292)
    s.add_argument("--threads", type=int, default=16, help="requests served concurrently per worker")
    s.add_argument("--workers", type=int, default=1, help="worker processes")
    s.add_argument("--access-log", action="store_true", help="log every request to stdout")
    s.add_argument(
        "--client-header-timeout",
        type=int,
        default=60,
        metavar="SECONDS",
        help="time a client has to send a request's headers, in all (default 60)",
    )
    s.add_argument(
        "--client-body-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="time a request body may pause before the request is abandoned (default 300)",
    )
    s.add_argument(
        "--auth",
        choices=["noauth", "trusted-headers", "keystone"],
        help="authentication flavour (default: [paste_deploy] flavor, noauth for the embedded default)",
    )
    s.set_defaults(func=cmd_serve)

    r = with_config(
        sub.add_parser("registry", help="run abbild-registry, the private metadata service"),
        default="$ABBILD_CONFIG_DIR/abbild-registry.conf, /etc/abbild",
    )
    r.add_argument("--host", help="default: [registry_server] bind_host (127.0.0.1)")
    r.add_argument("--port", type=int, help="default: [registry_server] bind_port (9191)")
    r.add_argument("--threads", type=int, default=16, help="requests served concurrently")
    r.add_argument("--access-log", action="store_true", help="log every request to stdout")
    r.set_defaults(func=cmd_registry)

    a = with_config(
        sub.add_parser(
            "api",
            help="run the API service for production (default config: $ABBILD_CONFIG_DIR/abbild-api.conf, /etc/abbild)",
        )
    )
    a.set_defaults(func=cmd_api)

    d = sub.add_parser("db", help="database schema, purging deleted images, and metadata definitions")
    db_sub = d.add_subparsers(dest="db_command", required=True)
    for name, what in (("sync", "create or upgrade the schema"), ("version", "the schema's revision")):
        with_config(db_sub.add_parser(name, help=what), data_dir=embedded).set_defaults(func=cmd_db)
    purge.add_parser(db_sub, with_config, embedded)
    metadefs.add_parsers(db_sub, with_config, embedded)

    st = with_config(
        sub.add_parser("stores", help="installed drivers, configured stores and their health"), data_dir=embedded
    )
    st.set_defaults(func=cmd_stores)

    c = sub.add_parser("cache", help="this node's image cache (image_cache_dir): list, queue, remove, clean, ...")
    cache_sub = c.add_subparsers(dest="cache_command", required=True)

    def cache_command(name, help):
        sp = with_config(cache_sub.add_parser(name, help=help), data_dir=embedded)
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table or text")
        return sp

    cache_command("list", help="cached and queued images of this node")
    cache_command("queue", help="queue an active image for the prefetcher").add_argument("image_id", metavar="ID")
    cache_command("remove", help="remove an image from the cache and the queue").add_argument("image_id", metavar="ID")
    cache_command("clear", help="remove every cached and queued image").add_argument(
        "--target", choices=["cache", "queue"], help="only the cached images, or only the queue (default: both)"
    )
    cache_command(
        "clean",
        help="remove stalled, invalid, orphaned and deleted images' cache files and re-hash the rest (for cron)",
    )
    cache_command("prune", help="remove least recently used images down to image_cache_max_size (for cron)")
    cache_command("prefetch", help="fetch the queued images into the cache now, with a progress bar")
    c.set_defaults(func=cmd_cache)
    audit.add_parser(sub, with_config, embedded)
    replicate.add_parser(sub, with_config, embedded)
    scrub.add_parser(sub, with_config, embedded)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except AbbildError as exc:
        print(f"abbild: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
