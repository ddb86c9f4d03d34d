"""``abbild registry``'s auth filter over real HTTP: what the headers decide is decided
before the body is read (a huge unsigned or stale request gets its 401 at once, not
after the server buffered it), bodies are capped (413, chunked ones too), a malformed
signature is a 401, and ``noauth`` answers loopback only even where the registry app
runs in a server that listens elsewhere (mod_wsgi, uWSGI)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import uuid
import wsgiref.simple_server

import pytest

from abbild import registry_wire as wire
from abbild.image import Image
from abbild_registry.pipeline import load_registry_app
from tests.functional.conftest import RegistryProcess

HUGE = 1_000_000_000
LIMIT = 16 << 20  # [registry_server] max_request_body_size, default


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("registry-requests")
    conf = base / "abbild-registry.conf"
    conf.write_text(f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n")
    process = RegistryProcess(base, [str(conf)]).start()
    yield process
    process.stop()


def exchange(url: str, head: str, body_parts=(), timeout: float = 10, source: str | None = None):
    """Send a raw request (*head* without its blank line, then *body_parts*); return
    (status, headers, body) of the answer. A server that waits for more raises
    socket.timeout."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection(
        (parts.hostname, parts.port), timeout=timeout, source_address=(source, 0) if source else None
    ) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n")
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        raw_head, _, body = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def signed_head(registry, method: str, path: str, body: bytes, extra: str, **override) -> str:
    headers = wire.sign(registry.secret, method, path, wire.caller_header(None), body)
    headers.update(override)
    lines = [f"{method} {path} HTTP/1.1", "Host: registry", *(f"{k}: {v}" for k, v in headers.items())]
    return "\n".join(lines + [extra])


def new_image_body() -> bytes:
    image = Image(id=str(uuid.uuid4()), owner="p1", visibility="private")
    return json.dumps(wire.image_to_json(image)).encode()


def test_unsigned_request_is_refused_before_its_body(registry):
    started = time.monotonic()
    status, _, body = exchange(
        registry.url,
        f"POST /v1/images HTTP/1.1\nHost: registry\nContent-Length: {HUGE}\nContent-Type: application/json",
    )
    assert status == 401 and b"unsigned request" in body, body
    assert time.monotonic() - started < 5


def test_stale_request_is_refused_before_its_body(registry):
    stale = str(int(time.time()) - 3600)
    head = signed_head(registry, "POST", "/v1/images", b"", f"Content-Length: {HUGE}", **{wire.TIMESTAMP_HEADER: stale})
    status, _, body = exchange(registry.url, head)
    assert status == 401 and b"stale request" in body, body


def test_non_ascii_signature_is_401(registry):
    body = new_image_body()
    head = signed_head(
        registry, "POST", "/v1/images", body, f"Content-Length: {len(body)}", **{wire.SIGNATURE_HEADER: "\xe9" * 64}
    )
    status, _, answer = exchange(registry.url, head, [body])
    assert status == 401 and b"malformed X-Abbild-Signature" in answer, answer


def test_body_beyond_the_limit_is_413_before_it_is_read(registry):
    head = signed_head(registry, "POST", "/v1/images", b"", f"Content-Length: {LIMIT + 1}")
    status, _, body = exchange(registry.url, head)  # and no body at all
    assert status == 413 and b"max_request_body_size" in body, body


def _chunked(body: bytes, size: int = 64 << 10) -> list[bytes]:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]


def test_chunked_body_beyond_the_limit_is_413(registry):
    image = wire.image_to_json(Image(id=str(uuid.uuid4()), owner="p1"))
    image["name"] = "x" * (LIMIT + 10)
    body = json.dumps(image).encode()
    head = signed_head(registry, "POST", "/v1/images", body, "Transfer-Encoding: chunked")
    status, _, answer = exchange(registry.url, head, _chunked(body))
    assert status == 413 and b"max_request_body_size" in answer, answer


def test_chunked_body_within_the_limit_is_read_and_verified(registry):
    body = new_image_body()
    head = signed_head(registry, "POST", "/v1/images", body, "Transfer-Encoding: chunked")
    status, _, answer = exchange(registry.url, head, _chunked(body, 100))
    assert status == 201, answer


# -- noauth beyond loopback ---------------------------------------------------------------------


def own_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError as exc:
            pytest.skip(f"no network address besides loopback: {exc}")
        return probe.getsockname()[0]


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_noauth_answers_only_loopback_wherever_the_app_is_served(tmp_path):
    """A WSGI container (here wsgiref, as mod_wsgi or uWSGI would) listening on every
    address: the registry's own start-up check never runs, its filter still refuses."""
    address = own_address()
    assert not address.startswith("127."), address
    conf = tmp_path / "abbild-registry.conf"
    conf.write_text(
        f"[database]\nconnection = sqlite:///{tmp_path}/abbild.sqlite\n[registry_server]\nauth_strategy = noauth\n"
    )
    httpd = wsgiref.simple_server.make_server("0.0.0.0", 0, load_registry_app([str(conf)]), handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        head = (
            f"GET /v1/images?limit=10&filters=%7B%7D HTTP/1.1\nHost: registry\nConnection: close\n"
            f"{wire.CALLER_HEADER}: {wire.caller_header(None)}"
        )
        status, _, body = exchange(f"http://{address}:{httpd.server_port}", head, source=address)
        assert status == 403, body
        assert f"{address} is not".encode() in body and b"auth_strategy = keystone" in body, body
        status, _, body = exchange(f"http://127.0.0.1:{httpd.server_port}", head)
        assert status == 200 and json.loads(body) == {"images": []}, body
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("image_id", ["", "/", "a/b", "%2F", ".", "..", "x?y", "x#y"])
def test_an_id_with_url_characters_is_just_not_found(registry, image_id):
    """The API asks for ids a client named (a marker, say): the registry answers 'no
    such image', never routes the id's '/' or '..' elsewhere (a 500 at the API)."""
    from abbild.errors import ImageNotFound, MemberNotFound
    from abbild.registry_client import HTTPRegistry

    client = HTTPRegistry(url=registry.url, shared_secret=registry.secret, retries=0)
    try:
        with pytest.raises(ImageNotFound):
            client.get_image(image_id)
        with pytest.raises(ImageNotFound):
            client.list_members(image_id)
        real = client.create_image(Image(id=str(uuid.uuid4()), owner="p1"))
        assert client.get_member(real.id, image_id) is None
        with pytest.raises(MemberNotFound):
            client.set_member_status(real.id, image_id, "accepted")
    finally:
        client.close()
