"""The embedded HTTP server of ``abbild serve``: gunicorn's threaded worker, chosen by
measurement (bench/README.md): it streams request bodies, de-chunks chunked uploads,
serves requests on threads, and sends files with ``sendfile``."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker
from oslo_config import cfg

from abbild import logging_setup

LOG = logging.getLogger(__name__)

# After the graceful timeout, aborted uploads get this long to roll back (delete their
# partial data, return the image to 'queued') before gunicorn kills the worker.
ROLLBACK_SECONDS = 10

ACCESS_LOG_FORMAT = '%(h)s "%(r)s" status: %(s)s len: %(B)s time: %(L)ss'


def server_opts(default_port: int) -> list[cfg.Opt]:
    """Options of a service run on the embedded server (``abbild api``); a service
    registers them in its own group with its own default port."""
    return [
        cfg.HostAddressOpt("bind_host", default="127.0.0.1", help="Address to listen on."),
        cfg.PortOpt("bind_port", default=default_port, help="Port to listen on."),
        cfg.IntOpt("workers", default=2, min=1, help="Worker processes (each serves `threads` requests at once)."),
        cfg.IntOpt("threads", default=16, min=1, help="Requests served concurrently by each worker process."),
        cfg.IntOpt(
            "graceful_shutdown_timeout",
            default=60,
            min=0,
            help="On SIGTERM the server stops accepting connections and gives requests in "
            "progress this many seconds to finish. Uploads still running after that are "
            "aborted and rolled back: their partial data is removed and the image returns "
            "to 'queued'.",
        ),
        cfg.BoolOpt("access_log", default=True, help="Log one line per request, with its request id."),
    ]


def list_opts():
    return [("DEFAULT", server_opts(9292))]


# The sockets of the uploads this worker process is reading, so a shutdown can abort them.
_uploads: set[socket.socket] = set()


def track_uploads(app):
    """Wrap a WSGI *app*: remember the connection of each request with a body while the
    app reads it (the app returns only after it consumed the upload)."""

    def application(environ, start_response):
        sock = environ.get("gunicorn.socket")
        if sock is None or environ.get("REQUEST_METHOD") not in ("PUT", "POST", "PATCH"):
            return app(environ, start_response)
        _uploads.add(sock)
        try:
            return app(environ, start_response)
        finally:
            _uploads.discard(sock)

    return application


def abort_uploads() -> None:
    """Stop reading the uploads still running: their next read sees the end of the
    body, so the upload fails and the service rolls it back."""
    uploads = list(_uploads)
    if uploads:
        LOG.warning("graceful shutdown timeout reached: aborting %d upload(s); their images return to 'queued'",
                    len(uploads))  # fmt: skip
    for sock in uploads:
        try:
            sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv; the response can still be sent
        except OSError:
            pass


class GracefulThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, plus a deadline for uploads when it is told to stop."""

    def handle_exit(self, sig, frame):
        if self.alive:
            timer = threading.Timer(max(self.cfg.graceful_timeout - ROLLBACK_SECONDS, 0), abort_uploads)
            timer.daemon = True
            timer.start()
        super().handle_exit(sig, frame)


class OsloLogger(Logger):
    """Sends gunicorn's own lines and its access lines to the handlers oslo.log set up."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


class EmbeddedServer(BaseApplication):
    def __init__(self, config_files: Sequence[str], host: str, port: int, threads: int = 16,
                 workers: int = 1, access_log: bool = False, flavor: str | None = None,
                 graceful_shutdown_timeout: int = 60) -> None:  # fmt: skip
        self.config_files = list(config_files)
        self.flavor = flavor
        self.options = {
            "bind": f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
            "worker_class": GracefulThreadWorker,
            "workers": workers,
            "threads": threads,
            # "sendfile" stays unset: gunicorn 27 treats any value but None as "off".
            # Uploads of tens of GiB take long; gthread keeps its heartbeat from the main
            # loop, so the timeout only catches a wedged worker, not a long request.
            "timeout": 120,
            "graceful_timeout": graceful_shutdown_timeout + ROLLBACK_SECONDS,
            "keepalive": 5,
            "accesslog": "-" if access_log else None,
            "access_log_format": ACCESS_LOG_FORMAT,
            "errorlog": "-",
            "logger_class": OsloLogger,
            "loglevel": "info",
            "proc_name": "abbild",
            "control_socket_disable": True,
            # Forwarded headers count only through [oslo_middleware]
            # enable_proxy_headers_parsing, not because a peer is on loopback.
            "forwarded_allow_ips": "",
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        from abbild_paste.pipeline import load_api

        return logging_setup.per_request(track_uploads(load_api(self.config_files, self.flavor)))
