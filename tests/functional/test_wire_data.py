"""Wire behaviour of ``/v2/images/{id}/file``: uploads (Content-Length, chunked,
truncated, size checks, size cap) and downloads (ranges, headers) (GLANCE-API.md 5.1,
5.2, 6). After every failed upload the image is ``queued`` again and the store's data
directory holds nothing for it, not even a ``.partial`` file."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time

import pytest
import requests

OCTETS = {"Content-Type": "application/octet-stream"}
JSON = {"Accept": "application/json"}
MISSING = "00000000-0000-0000-0000-000000000000"


# -- helpers ----------------------------------------------------------------------------


def create(server, **body) -> str:
    body = {"disk_format": "raw", "container_format": "bare", **body}
    resp = requests.post(f"{server.url}/v2/images", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def show(server, image_id) -> dict:
    resp = requests.get(f"{server.url}/v2/images/{image_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def put(server, image_id, data, headers=None) -> requests.Response:
    return requests.put(
        f"{server.url}/v2/images/{image_id}/file", data=data, headers={**OCTETS, **JSON, **(headers or {})}
    )


def uploaded(server, data: bytes) -> str:
    image_id = create(server)
    resp = put(server, image_id, data)
    assert resp.status_code == 204, resp.text
    return image_id


def leftovers(server, image_id) -> list[str]:
    """Every file in the data directory that belongs to *image_id* (final or partial)."""
    return [name for name in os.listdir(os.path.join(server.data_dir, "images")) if image_id in name]


def wait_for_status(server, image_id, status, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        image = show(server, image_id)
        if image["status"] == status or time.monotonic() > deadline:
            return image
        time.sleep(0.02)


def assert_queued_and_clean(server, image_id) -> None:
    image = wait_for_status(server, image_id, "queued")
    assert image["status"] == "queued"
    for name in ("size", "checksum", "os_hash_algo", "os_hash_value"):
        assert image[name] is None, name
    assert leftovers(server, image_id) == []
    assert requests.get(f"{server.url}/v2/images/{image_id}/file").status_code == 204


def assert_stored(server, image_id, data: bytes) -> None:
    image = show(server, image_id)
    assert image["status"] == "active"
    assert image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert image["stores"] == "local"
    assert leftovers(server, image_id) == [image_id]
    with open(os.path.join(server.data_dir, "images", image_id), "rb") as f:
        assert f.read() == data


def connect(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def start_put(server, image_id, headers: dict) -> http.client.HTTPConnection:
    conn = connect(server)
    conn.putrequest("PUT", f"/v2/images/{image_id}/file", skip_accept_encoding=True)
    for name, value in {**OCTETS, **headers}.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- upload -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_upload_with_content_length(server, size):
    data = os.urandom(size)
    image_id = create(server)
    assert show(server, image_id)["status"] == "queued"
    resp = put(server, image_id, data)
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert resp.request.headers["Content-Length"] == str(size)
    assert_stored(server, image_id, data)


def test_upload_and_download_by_upper_case_id(server):
    image_id = create(server)
    data = os.urandom(64)
    assert put(server, image_id.upper(), data).status_code == 204
    assert_stored(server, image_id, data)
    assert requests.get(f"{server.url}/v2/images/{image_id.upper()}/file").content == data


def test_upload_chunked_without_content_length(server):
    parts = [os.urandom(n) for n in (1, 5000, 0, 17, 3000)]
    image_id = create(server)
    resp = put(server, image_id, iter(parts))
    assert resp.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in resp.request.headers
    assert resp.status_code == 204, resp.text
    assert_stored(server, image_id, b"".join(parts))


def test_upload_chunked_with_declared_size(server):
    data = os.urandom(3000)
    image_id = create(server)
    resp = put(server, image_id, iter([data[:1000], data[1000:]]), {"x-openstack-image-size": "3000"})
    assert resp.status_code == 204, resp.text
    assert_stored(server, image_id, data)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/octet-stream-x", None])
def test_upload_wrong_content_type_is_415(server, content_type):
    image_id = create(server)
    headers = {**JSON, **({"Content-Type": content_type} if content_type else {})}
    resp = requests.put(f"{server.url}/v2/images/{image_id}/file", data=b"data", headers=headers)
    if content_type is None:
        assert "Content-Type" not in resp.request.headers
    assert resp.status_code == 415
    assert resp.json()["code"] == "415 Unsupported Media Type"
    assert_queued_and_clean(server, image_id)


def test_upload_content_type_parameters_are_ignored(server):
    image_id = create(server)
    resp = put(server, image_id, b"abc", {"Content-Type": "application/octet-stream; charset=binary"})
    assert resp.status_code == 204, resp.text


def test_second_upload_is_409(server):
    image_id = uploaded(server, b"first")
    resp = put(server, image_id, b"second")
    assert resp.status_code == 409
    assert resp.json()["code"] == "409 Conflict"
    assert_stored(server, image_id, b"first")


def test_upload_while_another_runs_is_409(server):
    data = os.urandom(4000)
    image_id = create(server)
    conn = start_put(server, image_id, {"Content-Length": str(len(data))})
    try:
        conn.send(data[:1000])
        assert wait_for_status(server, image_id, "saving")["status"] == "saving"
        resp = put(server, image_id, b"intruder")
        assert resp.status_code == 409
        conn.send(data[1000:])
        first = conn.getresponse()
        assert first.status == 204, first.read()
    finally:
        conn.close()
    assert_stored(server, image_id, data)


def test_upload_without_formats_is_400(server):
    resp = requests.post(f"{server.url}/v2/images", json={"name": "no formats"})
    image_id = resp.json()["id"]
    resp = put(server, image_id, b"data")
    assert resp.status_code == 400
    assert "disk_format" in resp.json()["message"]
    assert_queued_and_clean(server, image_id)


def test_upload_to_missing_image_is_404(server):
    assert put(server, MISSING, b"data").status_code == 404
    assert leftovers(server, MISSING) == []


def test_upload_to_deactivated_image_is_409(server):
    image_id = uploaded(server, b"data")
    assert requests.post(f"{server.url}/v2/images/{image_id}/actions/deactivate").status_code == 204
    assert put(server, image_id, b"other").status_code == 409
    assert show(server, image_id)["status"] == "deactivated"


@pytest.mark.parametrize("declared,size", [(100, 50), (10, 50), (0, 1), (51, 50)])
def test_declared_size_mismatch_is_400(server, declared, size):
    image_id = create(server)
    resp = put(server, image_id, os.urandom(size), {"x-openstack-image-size": str(declared)})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "400 Bad Request"
    assert_queued_and_clean(server, image_id)
    data = os.urandom(size)  # and the image takes a correct upload afterwards
    assert put(server, image_id, data, {"x-openstack-image-size": str(size)}).status_code == 204
    assert_stored(server, image_id, data)


def test_declared_size_mismatch_chunked_is_400(server):
    image_id = create(server)
    resp = put(server, image_id, iter([b"x" * 30, b"y" * 20]), {"x-openstack-image-size": "100"})
    assert resp.status_code == 400
    assert_queued_and_clean(server, image_id)


@pytest.mark.parametrize("declared", ["ten", "-5", "1.5", ""])
def test_declared_size_not_a_number_is_400(server, declared):
    image_id = create(server)
    resp = put(server, image_id, b"data", {"x-openstack-image-size": declared})
    assert resp.status_code == 400
    assert_queued_and_clean(server, image_id)


def test_truncated_body_leaves_image_queued_and_no_data(server):
    image_id = create(server)
    conn = start_put(server, image_id, {"Content-Length": "100000"})
    conn.send(os.urandom(30000))
    assert wait_for_status(server, image_id, "saving")["status"] == "saving"
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert_queued_and_clean(server, image_id)
    data = os.urandom(100)
    assert put(server, image_id, data).status_code == 204
    assert_stored(server, image_id, data)


def test_truncated_chunked_body_leaves_image_queued_and_no_data(server):
    image_id = create(server)
    conn = start_put(server, image_id, {"Transfer-Encoding": "chunked"})
    conn.send(chunk(os.urandom(20000)))
    assert wait_for_status(server, image_id, "saving")["status"] == "saving"
    conn.send(b"4e20\r\n" + os.urandom(100))  # a chunk cut short, and no last chunk
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert_queued_and_clean(server, image_id)


# -- download ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(server):
    data = os.urandom(100)
    return uploaded(server, data), data


def test_download(server, stored):
    image_id, data = stored
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file")
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    assert "Content-Range" not in resp.headers


def test_download_streamed_in_pieces(server):
    data = os.urandom(3 << 20)  # several server chunks
    image_id = uploaded(server, data)
    with requests.get(f"{server.url}/v2/images/{image_id}/file", stream=True) as resp:
        assert resp.status_code == 200
        got = b"".join(resp.iter_content(65536))
    assert hashlib.sha512(got).hexdigest() == hashlib.sha512(data).hexdigest()


def test_download_of_empty_image(server):
    image_id = uploaded(server, b"")
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file")
    assert resp.status_code == 200
    assert resp.content == b"" and resp.headers["Content-Length"] == "0"
    assert resp.headers["Content-MD5"] == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-1"}])
def test_download_of_queued_image_is_204(server, headers):
    image_id = create(server)
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file", headers=headers)
    assert resp.status_code == 204
    assert resp.content == b""
    assert "Content-MD5" not in resp.headers


def test_download_of_missing_image_is_404(server):
    resp = requests.get(f"{server.url}/v2/images/{MISSING}/file", headers=JSON)
    assert resp.status_code == 404
    assert resp.json()["code"] == "404 Not Found"


RANGES = {
    "bytes=2-5": (2, 5),
    "bytes=0-0": (0, 0),
    "bytes=0-99": (0, 99),
    "bytes=90-1000": (90, 99),
    "bytes=95-": (95, 99),
    "bytes=0-": (0, 99),
    "bytes=99-": (99, 99),
    "bytes=-10": (90, 99),
    "bytes=-1": (99, 99),
    "bytes=-1000": (0, 99),
}


@pytest.mark.parametrize("header,span", RANGES.items(), ids=RANGES.keys())
def test_range(server, stored, header, span):
    image_id, data = stored
    first, last = span
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file", headers={"Range": header})
    assert resp.status_code == 206
    assert resp.content == data[first : last + 1]
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/100"
    assert resp.headers["Content-Length"] == str(last - first + 1)
    assert resp.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "header,span", [("bytes 1-3/*", (1, 3)), ("bytes 0-99/100", (0, 99)), ("bytes 99-99/*", (99, 99))]
)
def test_legacy_content_range_request(server, stored, header, span):
    image_id, data = stored
    first, last = span
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file", headers={"Content-Range": header})
    assert resp.status_code == 206
    assert resp.content == data[first : last + 1]
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/100"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=0-1, 3-4", "bytes=-5,10-"])
def test_multiple_ranges_are_400(server, stored, header):
    resp = requests.get(f"{server.url}/v2/images/{stored[0]}/file", headers={"Range": header, **JSON})
    assert resp.status_code == 400
    assert resp.json()["code"] == "400 Bad Request"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=100-",
        "bytes=100-200",
        "bytes=500-600",
        "bytes=5-2",
        "bytes=-0",
        "bytes=abc",
        "items=0-1",
        "bytes=-",
        "bytes=1-2-3",
    ],
)
def test_unsatisfiable_range_is_416(server, stored, header):
    resp = requests.get(f"{server.url}/v2/images/{stored[0]}/file", headers={"Range": header})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */100"


@pytest.mark.parametrize(
    "header", ["bytes 100-101/*", "bytes 50-200/*", "bytes 3-100/100", "bytes=1-3", "bytes 3-1/*", "nonsense"]
)
def test_unsatisfiable_legacy_content_range_is_416(server, stored, header):
    resp = requests.get(f"{server.url}/v2/images/{stored[0]}/file", headers={"Content-Range": header})
    assert resp.status_code == 416


def test_range_on_empty_image_is_416(server):
    image_id = uploaded(server, b"")
    resp = requests.get(f"{server.url}/v2/images/{image_id}/file", headers={"Range": "bytes=0-"})
    assert resp.status_code == 416


def test_concurrent_downloads(server, stored):
    image_id, data = stored
    results = []

    def fetch():
        results.append(requests.get(f"{server.url}/v2/images/{image_id}/file").content)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data] * 8


def test_deleting_an_image_removes_its_data(server):
    image_id = uploaded(server, b"bye")
    assert leftovers(server, image_id) == [image_id]
    assert requests.delete(f"{server.url}/v2/images/{image_id}").status_code == 204
    assert leftovers(server, image_id) == []


# -- image_size_cap ---------------------------------------------------------------------


def test_image_size_cap_is_413(make_server, tmp_path):
    data_dir = tmp_path / "capped"
    conf = tmp_path / "capped.conf"
    conf.write_text(
        "[DEFAULT]\nenabled_backends = local:filesystem\ndefault_backend = local\nimage_size_cap = 1000\n"
        f"[database]\nconnection = sqlite:///{data_dir}/abbild.sqlite\n"
        f"[paste_deploy]\nflavor = noauth\n[local]\ndescription = capped\ndatadir = {data_dir}/images\n"
    )
    srv = make_server("--config-file", str(conf), data_dir=data_dir).start()
    for body in (os.urandom(2000), iter([os.urandom(600), os.urandom(600)]), os.urandom(1001)):
        image_id = create(srv)
        resp = put(srv, image_id, body)
        assert resp.status_code == 413, resp.text
        assert resp.json()["code"] == "413 Request Entity Too Large"
        assert_queued_and_clean(srv, image_id)
    data = os.urandom(1000)  # exactly at the cap
    image_id = create(srv)
    assert put(srv, image_id, data).status_code == 204
    assert_stored(srv, image_id, data)


def test_a_refusal_before_the_body_was_read_closes_the_connection_and_the_next_request_works(server):
    """A large upload refused early (an unknown store) is answered ``Connection: close``:
    the server will not read the rest, so a client that kept the connection would see its
    next request fail."""
    body = b"x" * (64 << 20)
    with requests.Session() as session:
        image_id = create(server)
        refused = session.put(
            f"{server.url}/v2/images/{image_id}/file",
            data=body,
            headers={**OCTETS, "X-Image-Meta-Store": "no-such-store"},
        )
        assert refused.status_code in (400, 409), refused.text
        assert refused.headers.get("Connection", "").lower() == "close"
        assert session.get(f"{server.url}/v2/images/{image_id}").status_code == 200
        small = session.put(f"{server.url}/v2/images/{image_id}/file", data=b"data", headers=OCTETS)
        assert small.status_code == 204, small.text
        assert session.get(f"{server.url}/v2/images/{image_id}").json()["status"] == "active"
