"""The embedded server's access line: OsloLogger builds it from the values it prints,
and it must read exactly as gunicorn's own Logger.access writes ACCESS_LOG_FORMAT."""

import datetime
import logging
from types import SimpleNamespace

from gunicorn.config import Config
from gunicorn.glogging import Logger

from abbild_cmd.server import ACCESS_LOG_FORMAT, OsloLogger


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def access_line(logger_class, status, sent, request_time):
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", ACCESS_LOG_FORMAT)
    logger = logger_class(cfg)
    lines = Lines()
    logger.access_log.addHandler(lines)
    logger.access_log.setLevel(logging.INFO)
    environ = {
        "REMOTE_ADDR": "127.0.0.1",
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/v2/images?limit=1&marker=%2F",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/v2/images",
        "QUERY_STRING": "limit=1&marker=%2F",
    }
    resp = SimpleNamespace(status=status, sent=sent, headers=[("Content-Type", "application/json")])
    req = SimpleNamespace(headers=[("HOST", "localhost")])
    try:
        logger.access(resp, req, environ, request_time)
    finally:
        logger.access_log.removeHandler(lines)  # the logger is gunicorn.access, shared
    return lines.lines


def test_the_lean_access_line_reads_as_gunicorns():
    for status, sent, took in [
        ("200 OK", 1024, datetime.timedelta(microseconds=693)),
        ("404 Not Found", 0, datetime.timedelta(seconds=12, microseconds=5)),
        (204, 0, datetime.timedelta(0)),
    ]:
        ours = access_line(OsloLogger, status, sent, took)
        assert ours == access_line(Logger, status, sent, took)
        assert len(ours) == 1


def test_another_format_is_left_to_gunicorn():
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", '%(h)s %({host}i)s "%(r)s"')
    logger = OsloLogger(cfg)
    lines = Lines()
    logger.access_log.addHandler(lines)
    logger.access_log.setLevel(logging.INFO)
    environ = {"REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": "GET", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.0"}
    resp = SimpleNamespace(status="200 OK", sent=2, headers=[])
    try:
        logger.access(resp, SimpleNamespace(headers=[("HOST", "example")]), environ, datetime.timedelta(0))
    finally:
        logger.access_log.removeHandler(lines)
    assert lines.lines == ['10.0.0.1 example "GET / HTTP/1.0"']
