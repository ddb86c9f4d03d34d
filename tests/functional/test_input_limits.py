"""Limits on what a client may make the server read and keep (issue 9, item 6): JSON
bodies are capped (``max_json_body_size``: 413, from Content-Length before reading,
for chunked bodies while reading), extra property values too
(``max_property_value_length``: 400), and an anonymous caller's writes are refused
without reading their bodies. Over real HTTP; the raw-socket tests send a body only in
part and expect the answer without the rest."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
import uuid

import pytest
import requests

from tests.functional.helpers import server_config, who

MIB = 1 << 20
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
JSON_ERRORS = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def url(server_factory):
    return server_factory(
        "limits", server_config(flavor="trusted-headers", default="allow_anonymous_access = true")
    ).url


def new_image(url, headers, **body):
    resp = requests.post(f"{url}/v2/images", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def partial_request(url, method, path, headers: dict, body: bytes, timeout: float = 5):
    """Send the request line, *headers* and the start of a body (*body*), never the
    rest; return the (status, message) the server answers with. A server that waits
    for the rest makes this fail with a timeout."""
    parts = urllib.parse.urlsplit(url)
    head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        try:
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            return resp.status, json.loads(resp.read())["message"]
        except TimeoutError:
            pytest.fail(f"{method} {path}: no answer within {timeout}s; the server waits for the rest of the body")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# -- JSON body size -----------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_before_reading(url, project):
    headers = {**who(project), "Content-Type": "application/json", "Content-Length": str(MIB + 1)}
    status, message = partial_request(url, "POST", "/v2/images", headers, b'{"name": ')
    assert status == 413
    assert "1048576 bytes" in message and "max_json_body_size" in message


def test_chunked_body_over_the_limit_is_413_while_reading(url, project):
    headers = {**who(project), "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    body = chunk(b'{"description": "') + b"".join(chunk(b"d" * 65536) for _ in range(17))  # no last chunk
    status, message = partial_request(url, "POST", "/v2/images", headers, body)
    assert status == 413 and "max_json_body_size" in message


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_big_description_is_refused_and_not_stored(url, project, chunked):
    tag = uuid.uuid4().hex
    data = json.dumps({"description": "d" * (8 * MIB), "tags": [tag]}).encode()
    resp = requests.post(
        f"{url}/v2/images", data=iter([data]) if chunked else data, headers={**who(project), **JSON_ERRORS}
    )
    assert resp.status_code == 413, resp.text[:200]
    assert "max_json_body_size" in resp.json()["message"]
    assert requests.get(f"{url}/v2/images?tag={tag}", headers=who(project)).json()["images"] == []


def test_patch_body_over_the_limit_is_413(url, project):
    image_id = new_image(url, who(project))
    changes = [{"op": "add", "path": f"/p{i}", "value": "v" * 60000} for i in range(20)]
    resp = requests.patch(
        f"{url}/v2/images/{image_id}", data=json.dumps(changes), headers={**who(project), **PATCH, **JSON_ERRORS}
    )
    assert resp.status_code == 413 and "max_json_body_size" in resp.json()["message"]


def test_body_just_under_the_limit_is_read(url, project):
    body = json.dumps({"name": "n", "x_pad": ""}).encode()
    body = body.replace(b'"x_pad": ""', b'"x_pad": "' + b" " * (MIB - len(body)) + b'"')
    assert len(body) == MIB
    resp = requests.post(f"{url}/v2/images", data=body, headers={**who(project), **JSON_ERRORS})
    assert resp.status_code == 400  # read and parsed: the one property is too long, nothing more
    assert "max_property_value_length" in resp.json()["message"]


# -- property values ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["description", "x_note"])
def test_property_value_of_65535_characters_is_kept_one_more_is_400(url, project, name):
    image_id = new_image(url, who(project), **{name: "é" * 65535})
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(project)).json()[name] == "é" * 65535
    resp = requests.post(f"{url}/v2/images", json={name: "v" * 65536}, headers={**who(project), **JSON_ERRORS})
    assert resp.status_code == 400
    message = resp.json()["message"]
    assert name in message and "65535 characters" in message and "max_property_value_length" in message
    resp = requests.patch(
        f"{url}/v2/images/{image_id}",
        json=[{"op": "replace", "path": f"/{name}", "value": "v" * 65536}],
        headers={**who(project), **PATCH, **JSON_ERRORS},
    )
    assert resp.status_code == 400 and name in resp.json()["message"]


# -- anonymous callers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(url):
    """A public image and another project's private one (ids), and a missing id."""
    admin = who(f"p-{uuid.uuid4().hex[:8]}", "admin", "member", "reader")
    public = new_image(url, admin, visibility="public")
    private = new_image(url, admin, visibility="private")
    return {"public": public, "private": private, "missing": str(uuid.uuid4())}


WRITES = [
    ("POST", "/v2/images", {"name": "x"}, "application/json"),
    ("PATCH", "/v2/images/{id}", [{"op": "replace", "path": "/name", "value": "x"}], PATCH["Content-Type"]),
    ("POST", "/v2/images/{id}/members", {"member": "someone"}, "application/json"),
    ("PUT", "/v2/images/{id}/members/someone", {"status": "accepted"}, "application/json"),
]


@pytest.mark.parametrize("which", ["public", "private", "missing"])
@pytest.mark.parametrize("method,path,body,content_type", WRITES, ids=[f"{w[0]} {w[1]}" for w in WRITES])
def test_anonymous_write_is_refused_without_reading_the_body(url, images, which, method, path, body, content_type):
    path = path.format(id=images[which])
    data = json.dumps(body).encode()
    whole = requests.request(method, url + path, data=data, headers={"Content-Type": content_type, **JSON_ERRORS})
    assert whole.status_code in (403, 404), whole.text
    for framing in ({"Content-Length": str(len(data) + 100_000)}, {"Transfer-Encoding": "chunked"}):
        start = chunk(data[:5]) if "Transfer-Encoding" in framing else data[:5]
        status, message = partial_request(url, method, path, {"Content-Type": content_type, **framing}, start)
        assert status == whole.status_code, message
        assert message


def test_anonymous_caller_still_reads(url, images):
    assert requests.get(f"{url}/v2/images/{images['public']}").status_code == 200
    assert requests.get(f"{url}/v2/images/{images['private']}").status_code == 404
