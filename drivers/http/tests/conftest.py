"""Wiring for the http driver's tests: real HTTP servers on loopback, in threads of the
test process, and a store named ``web`` that is explicitly allowed to reach them."""

from __future__ import annotations

import http.server
import re
import socket
import ssl
import threading

import pytest
import trustme
from abbild_http import guard
from abbild_http.driver import HTTPDriver
from oslo_config import cfg

STORE = "web"


class ImageHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` by path. The first path segment picks a behaviour:

    - ``/files/<name>``: Range-capable, like a normal web server
    - ``/norange/<name>``: ignores Range and always sends the whole body with 200
    - ``/nolength/<name>``: HEAD tells no length; GET sends no Content-Length
    - ``/nohead/<name>``: HEAD answers 405
    - ``/slow/<name>``: waits ``server.delay`` seconds before answering
    - ``/oddlength/<name>``: like ``/files``, but every answer says ``Content-Length:
      <server.odd_length>`` instead of the real length
    - ``/short/<name>``: says the whole length, sends half the body and hangs up
    - ``/status/<code>``: answers with that status
    - anything in ``server.redirects``: answers 302 to the mapped location
    """

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        server = self.server
        server.requests.append((self.command, self.path, dict(self.headers)))
        path = self.path.split("?", 1)[0]
        if path in server.redirects:
            return self._send(302, b"", {"Location": server.redirects[path]}, body)
        mode, _, name = path.lstrip("/").partition("/")
        if mode == "status":
            return self._send(int(name), b"status page", {}, body)
        if mode == "slow":
            server.stopping.wait(server.delay)
        data = server.files.get(name)
        if data is None or mode not in ("files", "norange", "nolength", "nohead", "slow", "oddlength", "short"):
            return self._send(404, b"not found", {}, body)
        if mode == "nohead" and not body:
            return self._send(405, b"", {}, body)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and mode != "norange":
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
            content_range = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], {"Content-Range": content_range}, body, mode)
        return self._send(200, data, {}, body, mode)

    def _send(self, status: int, data: bytes, headers: dict, body: bool, mode: str = "") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if mode == "oddlength":
            self.send_header("Content-Length", self.server.odd_length)
        elif mode != "nolength":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()  # HTTP/1.0: the connection closes after each answer
        if body:
            self.wfile.write(data[: len(data) // 2] if mode == "short" else data)


class ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.delay = 0.0
        self.odd_length = ""
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def handle_error(self, request, client_address):
        pass  # clients that hang up early (closed downloads, timeouts) are expected


def run_server(server: ImageServer):
    """Serve in a thread until the test ends; never leave it running."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()  # wake /slow handlers
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def image_server():
    yield from run_server(ImageServer())


@pytest.fixture
def make_driver():
    """:returns: a function returning a configured :class:`HTTPDriver`; keyword
    arguments override options. Nothing is allowed beyond the defaults unless a
    test says so."""

    def make_driver(**overrides):
        conf = cfg.ConfigOpts()
        conf.register_opts(HTTPDriver.options, group=STORE)
        conf(args=[])
        for name, value in overrides.items():
            conf.set_override(name, value, group=STORE)
        driver = HTTPDriver(STORE, conf[STORE])
        driver.configure()
        return driver

    return make_driver


@pytest.fixture
def loopback_driver(make_driver):
    """A driver allowed to reach 127.0.0.1, and nothing else the defaults refuse."""
    return make_driver(allowed_networks=["127.0.0.1/32"])


@pytest.fixture
def fake_dns(monkeypatch):
    """Host name -> list of addresses (or a callable returning one); other names fail."""
    names = {}
    calls = []

    def resolve(host, port):
        calls.append(host)
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = names[host]
        return answer() if callable(answer) else list(answer)

    monkeypatch.setattr(guard, "resolve", resolve)
    names["calls"] = calls
    return names


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_server(ca, fake_dns):
    """An https server with a certificate for ``images.test``, which resolves to 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("images.test").configure_cert(context)
    fake_dns["images.test"] = ["127.0.0.1"]
    for server in run_server(ImageServer(tls=context)):
        server.files["img"] = b"secure bytes"
        yield server
