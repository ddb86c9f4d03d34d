"""The embedded HTTP server of ``abbild serve``: gunicorn's threaded worker, chosen by
measurement (bench/README.md): it streams request bodies, de-chunks chunked uploads,
serves requests on threads, and sends files with ``sendfile``."""

from __future__ import annotations

from collections.abc import Sequence

from gunicorn.app.base import BaseApplication


class EmbeddedServer(BaseApplication):
    def __init__(self, config_files: Sequence[str], host: str, port: int, threads: int = 16,
                 workers: int = 1, access_log: bool = False, flavor: str | None = None) -> None:  # fmt: skip
        self.config_files = list(config_files)
        self.flavor = flavor
        self.options = {
            "bind": f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
            "worker_class": "gthread",
            "workers": workers,
            "threads": threads,
            # "sendfile" stays unset: gunicorn 27 treats any value but None as "off".
            # Uploads of tens of GiB take long; gthread keeps its heartbeat from the main
            # loop, so the timeout only catches a wedged worker, not a long request.
            "timeout": 120,
            "graceful_timeout": 60,
            "keepalive": 5,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "abbild",
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        from abbild_paste.pipeline import load_api

        return load_api(self.config_files, self.flavor)
