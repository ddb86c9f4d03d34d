"""The embedded HTTP server of ``abbild serve``: gunicorn's threaded worker, chosen by
measurement (bench/README.md): it streams request bodies, de-chunks chunked uploads,
serves requests on threads, and sends files with ``sendfile``."""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import re
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial

import webob.exc
from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http.body import CHUNK_EXT_RE, Body, ChunkedReader, LengthReader
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkExtension, InvalidChunkSize, NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import ThreadWorker
from oslo_config import cfg

from abbild import jobs, logging_setup, notifications

LOG = logging.getLogger(__name__)

# After the graceful timeout, aborted uploads get this long to roll back (delete their
# partial data, return the image to 'queued') before gunicorn kills the worker.
ROLLBACK_SECONDS = 10

# How often a worker tells the arbiter it is alive (far below the "timeout" option).
HEARTBEAT_SECONDS = 1.0

# The most a worker reads from a connection at once while collecting its request headers.
HEAD_READ_SIZE = 64 << 10
# How long a thread that answered a kept-alive request waits for the next one's head.
NEXT_REQUEST_LINGER_MS = 2

# The most FastBody reads at once while it looks for a chunk's size line: what comes
# after the line is data, copied once more; the rest of a chunk arrives in place.
CHUNK_LINE_READ_SIZE = 256
_HEX = re.compile(rb"[0-9a-fA-F]+")
# The end of a chunk and the line of the next, when that line has a size and nothing else.
_PLAIN_NEXT_LINE = re.compile(rb"\r\n([0-9a-fA-F]{1,16})\r\n")

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
        cfg.IntOpt(
            "client_header_timeout",
            default=60,
            min=1,
            help="Seconds a client has, in all, to send a request's line and headers; then "
            "its connection is closed (with 408 Request Timeout if part of a request came). "
            "Until they are complete the request holds no thread, so clients that send them "
            "slowly cannot take the threads. On a kept-alive connection the time starts with "
            "the first byte of the next request.",
        ),
        cfg.IntOpt(
            "client_body_timeout",
            default=300,
            min=1,
            help="Seconds a read of a request body waits for the next byte. An upload "
            "that stalls this long is abandoned and answered with 408 Request Timeout: "
            "its partial data is removed and the image returns to 'queued'. A slow upload "
            "that keeps sending takes as long as it needs.",
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
        body = environ.get("wsgi.input")
        if type(body) is Body:
            environ["wsgi.input"] = FastBody(body)
        try:
            return app(environ, _closing_if_body_left(environ, start_response))
        finally:
            _uploads.discard(sock)

    return application


def _closing_if_body_left(environ, start_response):
    """A refusal that did not read the whole body (a 415 after the first chunk of an
    upload) says ``Connection: close``: gunicorn would give up draining a large body and
    drop the connection, which a client that was told keep-alive takes for a failure of
    its next request."""

    def checked_start_response(status, headers, exc_info=None):
        if int(status[:3]) >= 400 and _body_left(environ["wsgi.input"]):
            force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
            if force_close is not None:  # gunicorn's Response
                force_close()
        return start_response(status, headers, exc_info)

    return checked_start_response


def _body_left(body) -> bool:
    length = getattr(getattr(body, "reader", None), "length", None)
    return length is None or length > 0  # a chunked body: unknown, so assume so


class FastBody:
    """gunicorn's request body, plus ``readinto``: the bytes of a body go from the
    socket straight into the caller's buffer (``recv_into``), once, where gunicorn's
    ``read`` copies each byte several times through its buffers. Chunked bodies are
    de-chunked here too, with the same checks and errors as gunicorn's reader; the
    trailers and whatever follows the body go back to gunicorn's parser.

    Everything else (``read``, ``readline``, a body gunicorn began to read, another
    reader) is gunicorn's own. Used by :func:`abbild.streams.read_chunks` for uploads.
    """

    def __init__(self, body: Body) -> None:
        self._body = body
        self._readinto = None  # decided on the first call
        self._pending = bytearray()  # bytes read from the socket ahead of need
        self._left = 0  # of the current chunk
        self._chunks_seen = 0
        self._done = False

    def __getattr__(self, name):  # read, readline, reader ... for everyone else
        return getattr(self._body, name)

    def __iter__(self):
        return iter(self._body)

    def readinto(self, buffer) -> int:
        if self._readinto is None:
            self._readinto = self._choose()
        return self._readinto(memoryview(buffer).cast("B"))

    def _choose(self):
        body, reader = self._body, self._body.reader
        if body.buf.tell():  # someone read with read() already and left bytes buffered
            return self._generic
        if type(reader) is LengthReader and isinstance(reader.unreader, SocketUnreader):
            self._unreader = reader.unreader
            return self._length_readinto
        parser = getattr(reader, "parser", None)
        if (
            type(reader) is ChunkedReader
            and inspect.isgenerator(parser)
            and inspect.getgeneratorstate(parser) == inspect.GEN_CREATED
            and not reader.buf.tell()
        ):
            unreader = parser.gi_frame.f_locals.get("unreader")
            if isinstance(unreader, SocketUnreader):
                self._unreader = unreader
                self._pending += unreader.take_buffered()
                body.failed = True  # until the last chunk is in: the connection cannot be reused
                return self._chunked_readinto
        return self._generic

    def _generic(self, view: memoryview) -> int:
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _from_pending_or_socket(self, view: memoryview) -> int:
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            del self._pending[:n]
            return n
        return self._unreader.sock.recv_into(view)

    def _length_readinto(self, view: memoryview) -> int:
        reader = self._body.reader
        want = min(len(view), reader.length)
        if want <= 0:
            return 0
        # Bytes that came with the request head are gunicorn's to hand out (only those:
        # asked for more, it would read ahead into its buffer again).
        buffered = self._unreader.buf.seek(0, os.SEEK_END)
        if buffered:
            data = reader.read(min(want, buffered))
            view[: len(data)] = data
            return len(data)
        n = self._unreader.sock.recv_into(view[:want])
        reader.length -= n
        return n

    def _chunked_readinto(self, view: memoryview) -> int:
        while not self._left:
            if self._done or not view:
                return 0
            self._next_chunk()
        left = self._left
        if self._pending or len(view) <= left:
            n = self._from_pending_or_socket(view[:left])
        else:
            # Read on past the chunk's end into the room the buffer has left: the next
            # chunk's line then comes with this recv instead of one of its own. What is
            # past the end is kept aside, and the caller's next read overwrites it.
            n = self._unreader.sock.recv_into(view[: left + CHUNK_LINE_READ_SIZE])
            if n > left:
                self._pending += view[left:n]
                n = left
        if not n:
            raise NoMoreData()
        self._left -= n
        return n

    def _more(self) -> None:
        data = self._unreader.sock.recv(CHUNK_LINE_READ_SIZE)
        if not data:
            raise NoMoreData(bytes(self._pending))
        self._pending += data

    def _next_chunk(self) -> None:
        """Read the line of the next chunk (and the CRLF that ends the previous one)."""
        pending = self._pending
        plain = _PLAIN_NEXT_LINE.match(pending) if self._chunks_seen else None
        if plain:  # the usual case, read along with the previous chunk's end
            self._left = int(plain.group(1), 16)  # before the del: the match reads pending
            del pending[: plain.end()]
            if self._left:
                return
            self._chunks_seen += 1
            self._last_chunk()
            return
        if self._chunks_seen:
            while len(pending) < 2:
                self._more()
            if pending[:2] != b"\r\n":
                raise ChunkMissingTerminator(bytes(pending[:2]))
            del pending[:2]
        self._chunks_seen += 1
        limit = self._body.reader.limit_chunk_size_line
        end = pending.find(b"\r\n")
        while end < 0:
            if len(pending) > limit:
                raise InvalidChunkSize(b"line over %d bytes with no terminator" % limit)
            searched = max(len(pending) - 1, 0)
            self._more()
            end = pending.find(b"\r\n", searched)
        line = bytes(pending[:end])
        del pending[: end + 2]
        size, *extension = line.split(b";", 1)
        if extension:
            if b"\r" in extension[0]:
                raise InvalidChunkExtension("bare CR not allowed")
            size = size.rstrip(b" \t")
        if not _HEX.fullmatch(size):
            raise InvalidChunkSize(size)
        if extension and not CHUNK_EXT_RE.fullmatch(b";" + extension[0]):
            raise InvalidChunkExtension("invalid chunk extension")
        self._left = int(size, 16)
        if not self._left:
            self._last_chunk()

    def _last_chunk(self) -> None:
        """gunicorn reads the trailers and keeps what follows them."""
        reader, rest = self._body.reader, bytes(self._pending)
        self._pending.clear()
        reader.parse_trailers(self._unreader, rest)
        reader.parser = None
        self._done = True
        self._body.failed = False


def abort_uploads() -> None:
    """Stop reading the uploads still running: their next read sees the end of the
    body, so the upload fails and the service rolls it back."""
    uploads = list(_uploads)
    if uploads:
        LOG.warning(
            "graceful shutdown timeout reached: aborting %d upload(s); their images return to 'queued'", len(uploads)
        )
    for sock in uploads:
        try:
            sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv; the response can still be sent
        except OSError:
            pass


class ClientTimeout(Exception):
    """No byte of a request body arrived for ``client_body_timeout`` seconds."""

    def __init__(self, seconds: int) -> None:
        super().__init__(
            f"No data of the request body arrived for {seconds} seconds (client_body_timeout); "
            "the request was abandoned."
        )
        self.seconds = seconds


class BodyReads:
    """A connection's socket as its request parser reads it. The worker has read the
    headers already, so the parser reads only bodies here: a read that waits *idle*
    seconds for a byte raises :class:`ClientTimeout`. Responses go to the socket itself,
    with no such limit."""

    def __init__(self, sock: socket.socket, idle: int) -> None:
        self.sock = sock
        self.idle = idle
        # The kernel's receive timeout, not settimeout(): that would make every read
        # poll first, one more release of the GIL per read, which the upload's hashing
        # threads make costly (see gunicorn's SocketUnreader.max_body_chunk). Sends keep
        # no timeout; where gunicorn sets a Python timeout (draining a body), it wins.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", idle, 0))

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            if self.sock.gettimeout() is None:  # a blocking read: SO_RCVTIMEO ran out
                raise ClientTimeout(self.idle) from None
            raise

    def recv_into(self, buffer) -> int:
        try:
            return self.sock.recv_into(buffer)
        except BlockingIOError:
            if self.sock.gettimeout() is None:
                raise ClientTimeout(self.idle) from None
            raise

    def __getattr__(self, name):  # gettimeout and settimeout, for gunicorn's drain
        return getattr(self.sock, name)


def answer_client_timeouts(app):
    """Wrap a WSGI *app*: a request whose body stopped coming gets 408 Request Timeout
    (the app has cleaned up on the way: a failed upload is rolled back)."""

    def application(environ, start_response):
        try:
            return app(environ, start_response)
        except ClientTimeout as exc:
            timeout = exc
        # Logged outside the except block: oslo.log would append the message once more.
        LOG.warning(
            "%s %s from %s: %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            environ.get("REMOTE_ADDR"),
            timeout,
        )
        return webob.exc.HTTPRequestTimeout(explanation=str(timeout))(environ, start_response)

    return application


class SettledConfig(Config):
    """gunicorn's settings, each remembered as a plain attribute once read."""

    def __getattr__(self, name):
        value = super().__getattr__(name)
        object.__setattr__(self, name, value)  # Config.__setattr__ refuses setting names
        return value


class GracefulThreadWorker(ThreadWorker):
    """gunicorn's gthread worker (HTTP/1.1 in the clear, as EmbeddedServer sets it up),
    safe from slow clients, plus a deadline for uploads when it is told to stop.

    A request gets a thread only once its line and headers are all in: until then its
    connection waits in the main loop's selector, for ``client_header_timeout`` seconds
    in all, so clients that send headers slowly hold no thread (gunicorn's own parser
    would block a thread in ``recv`` for as long as they like). A request body that
    pauses ``client_body_timeout`` seconds is abandoned (:class:`BodyReads`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Connections whose request headers are still coming, in the order of their
        # deadlines (each got the same timeout when it was added).
        self.heads: dict = {}
        self.last_beat = 0.0
        # The longest head gunicorn's parser accepts; anything longer it refuses anyway.
        self.max_head = (
            self.cfg.limit_request_line + self.cfg.limit_request_fields * (self.cfg.limit_request_field_size + 2) + 8
        )

    def init_process(self):
        # The worker's settings stay as they are until it ends (a reload starts new
        # workers), while gunicorn looks each one up through Config.__getattr__ some 20
        # times per request.
        self.cfg.__class__ = SettledConfig
        return_big_blocks_to_the_system()
        super().init_process()

    def notify(self):
        """The heartbeat the arbiter watches (it kills a worker silent for ``timeout``
        seconds): gunicorn's main loop beats on every turn, a syscall or three per
        request; once a second is plenty."""
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            super().notify()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = answer_client_timeouts(self.wsgi)

    def enqueue_req(self, conn):
        """A request begins on *conn* (new, kept alive and readable, or with bytes read
        ahead): read its headers here, and give it to a thread once they are complete."""
        conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
        if b"\r\n\r\n" in conn.head:  # pipelined behind the previous request
            super().enqueue_req(conn)
            return
        conn.head_deadline = time.monotonic() + self.app.client_header_timeout
        conn.sock.setblocking(False)
        self.heads[conn] = None
        # Most often the whole head is there already (the connection was readable, or a
        # new client sent it with its handshake): read it now, not one poll later.
        if not self.read_head(conn, registered=False):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.read_head, conn))

    def read_head(self, conn, _sock=None, registered: bool = True) -> bool:
        """Read what came of *conn*'s head; returns whether the connection left the
        heads (its request went to a thread, or it was closed)."""
        try:
            data = conn.sock.recv(HEAD_READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # the client went away
            self.drop_head(conn, registered=registered)
            return True
        searched = max(len(conn.head) - 3, 0)  # never search the whole head again
        conn.head += data
        if conn.head.find(b"\r\n\r\n", searched) >= 0:
            if registered:
                self.poller.unregister(conn.sock)
            del self.heads[conn]
            super().enqueue_req(conn)
            return True
        if len(conn.head) > self.max_head:
            self.drop_head(
                conn,
                431,
                "Request Header Fields Too Large",
                f"The request headers exceed {self.max_head} bytes.",
                registered=registered,
            )
            return True
        return False

    def drop_head(self, conn, status: int = 0, reason: str = "", message: str = "", registered: bool = True) -> None:
        if registered:
            self.poller.unregister(conn.sock)
        del self.heads[conn]
        if status:
            try:
                util.write_error(conn.sock, status, reason, message)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Also close the connections whose headers are late (gunicorn calls this on
        every turn of its main loop), and when stopping, those that sent nothing."""
        super().murder_pending()
        now = time.monotonic()
        late = []
        for conn in self.heads:
            if conn.head_deadline <= now or not (self.alive or conn.head):
                late.append(conn)
            elif self.alive:
                break  # the others came later, so their deadlines are later too
        for conn in late:
            if not conn.head:
                self.drop_head(conn)
                continue
            timeout = self.app.client_header_timeout
            self.log.info(
                "%s: closing the connection: its request headers did not arrive within %d seconds",
                conn.client[0],
                timeout,
            )
            self.drop_head(
                conn, 408, "Request Timeout", f"The request headers did not arrive within {timeout} seconds."
            )

    def handle(self, conn):
        """Serve the request whose head ``read_head`` collected (runs on a thread)."""
        if conn.parser is None:
            conn.init()
            conn.parser.unreader.sock = BodyReads(conn.sock, self.app.client_body_timeout)
        while True:
            conn.parser.unreader.unread(bytes(conn.head))
            keepalive = super().handle(conn)
            if not keepalive or conn.is_http2 or not self.next_head_here(conn):
                return keepalive

    def next_head_here(self, conn) -> bool:
        """Whether the next request's head on kept-alive *conn* is in, or comes in full
        within NEXT_REQUEST_LINGER_MS, while the worker has at most half as many
        connections as threads: then this thread serves that request too. A client that
        sends its requests one after the other is answered without the hand-offs to the
        main loop and back (two thread wake-ups, a pipe, the selector), a third of a
        small request's CPU. Otherwise the main loop takes the connection with what came
        of the head, as before: with more clients, threads that keep serving their own
        leave the main loop, which shares the interpreter with them, too few turns to
        serve the others in their order (measured with 16 threads waiting whenever no
        request was queued, 40 clients: p99 61-64 -> 94-95 ms, the slowest 77-90 ->
        200-394 ms; with up to 8 waiting, 10 clients: p99 14-17 -> 20-21 ms)."""
        if not self.alive or self.nr_conns > self.cfg.threads // 2:
            return False
        head = bytearray(conn.parser.unreader.take_buffered())
        if b"\r\n\r\n" not in head:
            poll = select.poll()
            poll.register(conn.sock, select.POLLIN)
            if poll.poll(NEXT_REQUEST_LINGER_MS):
                try:
                    head += conn.sock.recv(HEAD_READ_SIZE, socket.MSG_DONTWAIT)
                except OSError:
                    pass  # the main loop's read meets it again and closes the connection
            if b"\r\n\r\n" not in head:
                conn.parser.unreader.unread(bytes(head))
                return False
        conn.head = head
        return True

    def handle_exit(self, sig, frame):
        if self.alive:
            grace = max(self.cfg.graceful_timeout - ROLLBACK_SECONDS, 0)
            timer = threading.Timer(grace, abort_uploads)
            timer.daemon = True
            timer.start()
            # Background jobs (location imports, retries) get the same grace as requests.
            self.draining = threading.Thread(
                target=jobs.drain_all, args=(grace, ROLLBACK_SECONDS), name="abbild-drain", daemon=True
            )
            self.draining.start()
        super().handle_exit(sig, frame)

    def run(self):
        super().run()
        draining = getattr(self, "draining", None)
        if draining is not None:
            draining.join(self.cfg.graceful_timeout)  # jobs roll back before the process ends
        # The periodic tasks saw the drain's `closing`; a task in progress gets to leave
        # its work in order (a prefetch discards its partial file, a scrub gives back
        # its claims).
        from abbild.periodic import stop_all

        stop_all(ROLLBACK_SECONDS)


def exit_now(stop: SystemExit) -> None:
    """End this server process with *stop*'s status, its work done (requests answered,
    jobs drained), its notifications sent and its logs flushed, but without the
    interpreter's teardown: unloading a thousand-odd modules costs each process 0.2 s of
    CPU, paid by the arbiter and every worker of every server stopping at once."""
    code = stop.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    notifications.close_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _worker_exit(arbiter, worker) -> None:
    # gunicorn's last call in a worker process, with the worker's SystemExit in flight.
    stop = sys.exc_info()[1]
    exit_now(stop if isinstance(stop, SystemExit) else SystemExit(1))


class OsloLogger(Logger):
    """Sends gunicorn's own lines and its access lines to the handlers oslo.log set up."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True

    def access(self, resp, req, environ, request_time):
        """The line of ACCESS_LOG_FORMAT, built from the five values it prints: gunicorn's
        own builds a dict of every header and environ key first, a third of the server's
        CPU for a small request (bench/request_bench.py --floor)."""
        if self.cfg.access_log_format != ACCESS_LOG_FORMAT:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled or not self.access_log.isEnabledFor(logging.INFO):
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        self.access_log.info(
            '%s "%s %s %s" status: %s len: %s time: %d.%06ds',
            environ.get("REMOTE_ADDR", "-"),
            environ["REQUEST_METHOD"],
            environ["RAW_URI"],
            environ["SERVER_PROTOCOL"],
            status,
            resp.sent,
            request_time.seconds,
            request_time.microseconds,
        )


# glibc's M_MMAP_THRESHOLD: blocks this big or bigger are mapped for themselves and
# unmapped when freed.
_M_MMAP_THRESHOLD = -3
BIG_BLOCK = 4 << 20


def return_big_blocks_to_the_system() -> None:
    """Let freed blocks of ``BIG_BLOCK`` bytes or more go back to the system at once.

    Left alone, glibc raises its mmap threshold to the size of each big block freed (up
    to 32 MiB), and from then on keeps such blocks in the arenas of the many request
    threads: the store drivers' 8-16 MiB chunks and parts then grew a worker's memory by
    tens of MiB per transfer. Without glibc (musl, macOS) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, BIG_BLOCK)


class EmbeddedServer(BaseApplication):
    def __init__(
        self,
        config_files: Sequence[str],
        host: str,
        port: int,
        threads: int = 16,
        workers: int = 1,
        access_log: bool = False,
        flavor: str | None = None,
        graceful_shutdown_timeout: int = 60,
        client_header_timeout: int = 60,
        client_body_timeout: int = 300,
        conf: cfg.ConfigOpts | None = None,
    ) -> None:
        self.config_files = list(config_files)
        self.conf = conf  # parsed before forking: the workers inherit it instead of parsing again
        self.flavor = flavor
        self.client_header_timeout = client_header_timeout
        self.client_body_timeout = client_body_timeout
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
            "worker_exit": _worker_exit,
            # Forwarded headers count only through [oslo_middleware]
            # enable_proxy_headers_parsing, not because a peer is on loopback.
            "forwarded_allow_ips": "",
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def run(self) -> None:
        try:
            super().run()
        except SystemExit as stop:  # the arbiter halted, its workers gone
            exit_now(stop)

    def load(self):
        from abbild_paste.pipeline import load_api

        return logging_setup.per_request(track_uploads(load_api(self.config_files, self.flavor, conf=self.conf)))
