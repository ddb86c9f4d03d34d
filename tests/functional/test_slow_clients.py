"""Slow clients cannot take the embedded server's threads (issue 9, item 7).

A request holds a thread only once its headers are complete, and they must be
complete within ``--client-header-timeout`` seconds in all, however the client
spreads them. A request body that pauses for ``--client-body-timeout`` seconds is
abandoned (408, the upload rolled back); one that keeps coming, however slowly,
is read to the end. Each test runs its own ``abbild serve`` with two threads."""

from __future__ import annotations

import hashlib
import http.client
import os
import select
import socket
import time

import requests

THREADS = 2
HEADER_LINE = b"X-Slow: one more header line\r\n"


def start(make_server, header_timeout: int = 30, body_timeout: int = 30):
    return make_server(
        "--threads",
        str(THREADS),
        "--client-header-timeout",
        str(header_timeout),
        "--client-body-timeout",
        str(body_timeout),
    ).start()


def open_request(srv, first_lines: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(first_lines)
    return sock


def closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before it closed *sock*, or None while it is open."""
    if not select.select([sock], [], [], 0)[0]:
        return None
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def create_image(srv) -> str:
    resp = requests.post(
        f"{srv.url}/v2/images", json={"name": "slow", "disk_format": "raw", "container_format": "bare"}, timeout=10
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def start_upload(srv, image_id: str, size: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.putrequest("PUT", f"/v2/images/{image_id}/file")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    return conn


def stored_files(srv, image_id: str) -> list[str]:
    images = os.path.join(srv.data_dir, "images")
    return [f for f in os.listdir(images) if image_id in f] if os.path.isdir(images) else []


def test_clients_trickling_headers_do_not_block_the_healthcheck(make_server):
    srv = start(make_server, header_timeout=30)
    slow = [open_request(srv, b"GET /healthcheck HTTP/1.1\r\nHost: slow\r\n") for _ in range(2 * THREADS)]
    for _ in range(3):  # one header line on each connection now and then, never the last one
        time.sleep(0.2)
        for sock in slow:
            sock.sendall(HEADER_LINE)

    began = time.monotonic()
    resp = requests.get(f"{srv.url}/healthcheck", timeout=5)
    assert resp.status_code == 200
    assert time.monotonic() - began < 1, "the healthcheck waited for a free thread"

    # Their requests were only slow: once complete, they are served.
    for sock in slow:
        sock.sendall(b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        sock.close()


def test_headers_not_complete_within_the_deadline_close_the_connection(make_server):
    srv = start(make_server, header_timeout=2)
    began = time.monotonic()  # before the connection: its deadline runs from the accept
    sock = open_request(srv, b"GET /healthcheck HTTP/1.1\r\n")
    # A line every 0.25 s: no read ever waits long, so only a deadline for the whole
    # head can end this.
    while (answer := closed_by_server(sock)) is None and time.monotonic() - began < 8:
        try:
            sock.sendall(HEADER_LINE)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
            break
        time.sleep(0.25)
    closed_after = time.monotonic() - began
    sock.close()
    assert answer is not None, "the connection is still open after 8 s"
    assert 2 <= closed_after < 5, closed_after
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert requests.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200


def test_upload_that_pauses_longer_than_the_body_timeout_is_rolled_back(make_server):
    srv = start(make_server, body_timeout=1)
    image_id = create_image(srv)
    upload = start_upload(srv, image_id, size=1 << 20)
    upload.send(os.urandom(64 << 10))
    began = time.monotonic()
    resp = upload.getresponse()  # and send nothing more
    assert resp.status == 408, resp.read()
    assert time.monotonic() - began < 4
    assert b"1 seconds (client_body_timeout)" in resp.read()

    image = requests.get(f"{srv.url}/v2/images/{image_id}", timeout=10).json()
    assert (image["status"], image["size"], image["checksum"]) == ("queued", None, None)
    assert stored_files(srv, image_id) == []
    assert requests.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200


def test_upload_slower_than_the_body_timeout_but_never_pausing_that_long_succeeds(make_server):
    srv = start(make_server, body_timeout=2)
    image_id = create_image(srv)
    blocks = [os.urandom(16 << 10) for _ in range(8)]
    upload = start_upload(srv, image_id, size=sum(map(len, blocks)))
    began = time.monotonic()
    for block in blocks:
        upload.send(block)
        time.sleep(0.5)
    assert time.monotonic() - began > 4  # twice the body timeout in all
    resp = upload.getresponse()
    assert resp.status == 204, resp.read()

    image = requests.get(f"{srv.url}/v2/images/{image_id}", timeout=10).json()
    assert image["status"] == "active"
    assert image["checksum"] == hashlib.md5(b"".join(blocks)).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(b"".join(blocks)).hexdigest()


def read_answers(answers, count: int) -> list[bytes]:
    """The status lines of the next *count* answers on *answers* (a file of the
    connection), each read to the end of its body."""
    lines = []
    for _ in range(count):
        status = answers.readline()
        length = 0
        while (line := answers.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answers.read(length)
        lines.append(status.strip())
    return lines


def test_a_kept_alive_connection_serves_each_request_however_its_head_arrives(make_server):
    srv = start(make_server)
    request = b"GET /healthcheck HTTP/1.1\r\nHost: kept\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    answers = sock.makefile("rb")
    sock.sendall(request)
    assert read_answers(answers, 1) == [b"HTTP/1.1 200 OK"]
    sock.sendall(request)  # at once: the thread that answered may still be there
    assert read_answers(answers, 1) == [b"HTTP/1.1 200 OK"]
    sock.sendall(request[:20])  # half a head, the rest long after
    time.sleep(0.3)
    sock.sendall(request[20:])
    assert read_answers(answers, 1) == [b"HTTP/1.1 200 OK"]
    sock.sendall(request * 3)  # pipelined
    assert read_answers(answers, 3) == [b"HTTP/1.1 200 OK"] * 3
    time.sleep(0.3)  # idle, then one more
    sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert read_answers(answers, 1) == [b"HTTP/1.1 200 OK"]
    assert answers.read() == b""  # and the server closed it
    sock.close()


def test_a_kept_alive_connection_whose_next_head_is_late_is_closed(make_server):
    srv = start(make_server, header_timeout=2)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    answers = sock.makefile("rb")
    sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: kept\r\n\r\n")
    assert read_answers(answers, 1) == [b"HTTP/1.1 200 OK"]
    began = time.monotonic()
    sock.sendall(b"GET /healthcheck HTTP/1.1\r\n")  # and never the rest
    assert read_answers(answers, 1) == [b"HTTP/1.1 408 Request Timeout"]
    assert 2 <= time.monotonic() - began < 5
    sock.close()


def test_idle_kept_alive_connections_hold_no_thread(make_server):
    srv = start(make_server)
    idle = []
    for _ in range(2 * THREADS):
        session = requests.Session()  # keeps its connection open after the answer
        assert session.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200
        idle.append(session)
    began = time.monotonic()
    assert requests.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200
    assert time.monotonic() - began < 1, "the healthcheck waited for a free thread"
    for session in idle:  # each connection still serves its client
        assert session.get(f"{srv.url}/healthcheck", timeout=5).status_code == 200
        session.close()
