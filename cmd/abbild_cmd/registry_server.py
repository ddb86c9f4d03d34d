"""Serving the registry: its paste pipeline, on the same embedded gunicorn as the API."""

from __future__ import annotations

from collections.abc import Sequence

from abbild import logging_setup
from abbild_cmd.server import EmbeddedServer
from abbild_registry.pipeline import load_registry_app


class RegistryServer(EmbeddedServer):
    """One worker process: the replay memory of the signature check lives in it (its
    threads share it); a second process would accept a request the first has seen."""

    def __init__(
        self, config_files: Sequence[str], host: str, port: int, threads: int = 16, access_log: bool = False
    ) -> None:
        super().__init__(config_files, host, port, threads=threads, workers=1, access_log=access_log)

    def load_config(self) -> None:
        super().load_config()
        self.cfg.set("proc_name", "abbild-registry")

    def load(self):
        return logging_setup.per_request(load_registry_app(self.config_files))


def serve(
    config_files: Sequence[str],
    host: str | None,
    port: int | None,
    threads: int = 16,
    access_log: bool = False,
    out=None,
) -> None:
    """Check everything, then serve until stopped.

    :raises abbild.errors.ConfigError: no authentication beyond loopback, no secret for
        hmac, a database that is not ready, ...
    """
    import sys

    from abbild.db.registry import SQLRegistry
    from abbild_registry.app import load_conf
    from abbild_registry.auth import check_bind
    from abbild_registry.rules import ImageRules

    out = out or sys.stderr
    conf = load_conf(config_files)
    logging_setup.setup(conf, "abbild-registry")
    host = host or conf.registry_server.bind_host
    port = port or conf.registry_server.bind_port
    check_bind(host, conf)
    # Build once before forking: a broken config fails here, with its message.
    ImageRules(conf)
    registry = SQLRegistry(conf)
    try:
        registry.prepare()
    finally:
        registry.close()
    auth = {
        "hmac": "HMAC-signed requests",
        "keystone": "Keystone tokens (the user's and a service token)",
        "noauth": "OFF (noauth: loopback only)",
    }[conf.registry_server.auth_strategy]
    print(f"abbild-registry on http://{host}:{port}/", file=out)
    print(f"  config:   {', '.join(config_files) or '(defaults)'}", file=out)
    print(f"  auth:     {auth}", file=out)
    RegistryServer(config_files, host, port, threads=threads, access_log=access_log).run()
