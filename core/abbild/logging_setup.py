"""Logging for abbild's server processes: oslo.log, so lines look like every other
OpenStack service's, and carry the id of the request the logging thread serves::

    2026-11-25 21:40:01.123 4242 INFO abbild.service [- req-5f0c... admin admin - - -] ...

Any server process uses it the same way (``abbild serve``, ``abbild api``, the registry,
mod_wsgi): :func:`register_opts` before the config is parsed (``abbild.config.load``
does it), :func:`setup` once the config is known, and :func:`per_request` around the
WSGI application.
"""

from __future__ import annotations

import logging
import threading

from oslo_config import cfg
from oslo_log import log as oslo_log

# The environ of the request each thread is serving. Left in place after the response:
# gunicorn writes its access line afterwards in the same thread, and the next request
# on that thread replaces it.
_current = threading.local()

# Libraries whose INFO lines say nothing an operator needs.
QUIET_LOGGERS = [
    "alembic=WARN",
    "stevedore=WARN",
    "urllib3=WARN",
    "keystonemiddleware=WARN",
    "swiftclient=WARN",
    "botocore=WARN",
    "boto3=WARN",
]  # swiftclient: 3 INFO lines per 404


def register_opts(conf: cfg.ConfigOpts) -> None:
    """oslo.log's options (debug, log_file, log_dir, use_json, use_stderr, ...)."""
    oslo_log.register_options(conf)


def setup(conf: cfg.ConfigOpts, program: str) -> None:
    """Configure the root logger from *conf* (replacing any handlers it had)."""
    oslo_log.set_defaults(default_log_levels=oslo_log.get_default_log_levels() + QUIET_LOGGERS)
    oslo_log.setup(conf, program)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_add_request_fields)


def _add_request_fields(record: logging.LogRecord) -> bool:
    """Give a record logged while serving a request that request's id and caller, the
    fields oslo.log's ``logging_context_format_string`` prints."""
    environ = getattr(_current, "environ", None)
    if environ is not None and not getattr(record, "request_id", None):
        record.request_id = environ.get("abbild.request_id")
        record.global_request_id = environ.get("abbild.global_request_id") or "-"
        caller = environ.get("abbild.context")
        if caller is not None and not getattr(record, "user_identity", None):
            # The shape of oslo.log's default logging_user_identity_format.
            user, project = getattr(caller, "user_id", None), getattr(caller, "project_id", None)
            record.user_identity = f"{user or '-'} {project or '-'} - - -"
    return True


def per_request(app):
    """Wrap a WSGI *app* so that log lines written while serving a request carry its id.

    The returned iterable is the app's own, so a server can still recognise its
    ``wsgi.file_wrapper`` and send the file with ``sendfile``.
    """

    def application(environ, start_response):
        _current.environ = environ
        return app(environ, start_response)

    return application
