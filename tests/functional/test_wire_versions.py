"""Wire behaviour of the pipeline around the images API: version negotiation, the
health check, request ids, routing errors (404/405), body rules, error rendering by
Accept, the schemas and the discovery documents (GLANCE-API.md sections 2, 3, 4.1, 8, 13)."""

from __future__ import annotations

import http.client
import json
import re
import uuid

import pytest
import requests

from tests.functional.helpers import server_config

REQUEST_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Glance 33 with several stores and no cache (2.12 is image tasks: GET /v2/images/{id}/tasks).
EXPECTED_VERSIONS = [
    "v2.17",
    "v2.15",
    "v2.13",
    "v2.12",
    "v2.11",
    "v2.10",
    "v2.9",
    "v2.8",
    "v2.7",
    "v2.6",
    "v2.5",
    "v2.4",
    "v2.3",
    "v2.2",
    "v2.1",
    "v2.0",
]

# With the cache on (image_cache_dir): Glance 33's list with the cache.
EXPECTED_VERSIONS_WITH_CACHE = ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14", *EXPECTED_VERSIONS[2:]]


def create(server, **body) -> dict:
    resp = requests.post(f"{server.url}/v2/images", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request through http.client, with exactly the headers given (no Accept or
    Accept-Encoding added). Returns (status, headers as a dict with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- versions ---------------------------------------------------------------------------


def _check_versions_document(server, resp, expected=EXPECTED_VERSIONS) -> None:
    assert resp.headers["Content-Type"].startswith("application/json")
    versions = resp.json()["versions"]
    assert [v["id"] for v in versions] == expected
    assert [v["status"] for v in versions] == ["CURRENT"] + ["SUPPORTED"] * (len(expected) - 1)
    for v in versions:
        assert v["links"] == [{"rel": "self", "href": f"{server.url}/v2/"}]


@pytest.fixture(scope="module")
def cached_server(server_factory):
    """A server with this node's image cache on (``abbild serve`` picks noauth+cache)."""
    return server_factory("versions-cache", server_config(default="image_cache_dir = {dir}/cache"))


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1/images",
        "/v1.1/images",
        "/v3/images",
        "/v2.99/images",
        "/v2.14/images",
        "/v2.16/images",
        "/v2.18/images",
        "/images",
        "/nope",
    ],
)
def test_implicit_or_unknown_version_gets_versions_document_300(server, path):
    resp = requests.get(server.url + path, allow_redirects=False)
    assert resp.status_code == 300
    _check_versions_document(server, resp)


def test_versions_is_200(server):
    resp = requests.get(f"{server.url}/versions")
    assert resp.status_code == 200
    _check_versions_document(server, resp)


def test_versions_with_the_cache(cached_server):
    """2.18 CURRENT, and 2.16 and 2.14 listed: the cache API is there."""
    resp = requests.get(f"{cached_server.url}/versions")
    assert resp.status_code == 200
    _check_versions_document(cached_server, resp, EXPECTED_VERSIONS_WITH_CACHE)
    for path in ("/", "/v2.19/images"):
        resp = requests.get(cached_server.url + path, allow_redirects=False)
        assert resp.status_code == 300
        _check_versions_document(cached_server, resp, EXPECTED_VERSIONS_WITH_CACHE)


@pytest.mark.parametrize("prefix", ["/v2.14", "/v2.16", "/v2.18", "/v2.17", "/v2.0"])
def test_cache_versions_are_accepted_with_the_cache(cached_server, prefix):
    image = create(cached_server, name="cache-version")
    resp = requests.get(f"{cached_server.url}{prefix}/images/{image['id']}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == image["id"]
    resp = requests.get(f"{cached_server.url}{prefix}/cache")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"cached_images": [], "queued_images": []}


@pytest.mark.parametrize("prefix", ["/v2.0", "/v2.3", "/v2.8", "/v2.11", "/v2.12", "/v2.15", "/v2.17"])
def test_minor_version_prefix_is_v2(server, prefix):
    tag = f"ver-{uuid.uuid4().hex}"
    ids = {create(server, tags=[tag])["id"] for _ in range(2)}
    plain = requests.get(f"{server.url}/v2/images", params={"tag": tag})
    versioned = requests.get(f"{server.url}{prefix}/images", params={"tag": tag})
    assert plain.status_code == versioned.status_code == 200
    assert {i["id"] for i in versioned.json()["images"]} == ids
    assert versioned.json()["images"] == plain.json()["images"]
    one = next(iter(ids))
    assert requests.get(f"{server.url}{prefix}/images/{one}").json()["id"] == one


@pytest.mark.parametrize("accept", ["application/vnd.openstack.images-v2", "application/vnd.openstack.images-v2.5"])
def test_version_by_accept_header_with_unprefixed_path(server, accept):
    image = create(server, name="by-accept")
    resp = requests.get(f"{server.url}/images/{image['id']}", headers={"Accept": accept})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == image["id"]
    resp = requests.get(f"{server.url}/schemas/image", headers={"Accept": accept})
    assert resp.status_code == 200 and resp.json()["name"] == "image"


def test_unknown_version_by_accept_header_is_300(server):
    resp = requests.get(f"{server.url}/images", headers={"Accept": "application/vnd.openstack.images-v1"})
    assert resp.status_code == 300


# -- the versions document's links ------------------------------------------------------
# Clients follow these links, and the document needs no token: a Host or X-Forwarded-*
# header that anyone can send must not make them (GLANCE-API.md section 2).


def _hrefs(url: str, path: str, headers: dict) -> set[str]:
    resp = requests.get(url + path, headers=headers, allow_redirects=False)
    assert resp.status_code in (200, 300), resp.text
    return {link["href"] for version in resp.json()["versions"] for link in version["links"]}


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:666", "X-Forwarded-Proto": "javascript"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/evil"},
        {"Forwarded": "proto=https;host=evil.example"},
        {"X-Forwarded-Ssl": "on", "X-Forwarded-Protocol": "ssl"},
    ],
)
@pytest.mark.parametrize("path", ["/", "/versions"])
def test_versions_links_ignore_host_and_forwarded_headers(server, path, headers):
    """Without [oslo_middleware] enable_proxy_headers_parsing: the address this
    connection reached, with the scheme it really used."""
    assert _hrefs(server.url, path, headers) == {f"{server.url}/v2/"}


@pytest.fixture(scope="module")
def behind_proxy(server_factory):
    return server_factory(
        "behind-proxy", server_config(stores="[oslo_middleware]\nenable_proxy_headers_parsing = true\n")
    )


@pytest.mark.parametrize(
    "headers, href",
    [
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.org"}, "https://images.example.org/v2/"),
        (
            {"Forwarded": "for=192.0.2.60;proto=https;host=images.example.org:8443"},
            "https://images.example.org:8443/v2/",
        ),
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "[2001:db8::1]:9292", "X-Forwarded-Prefix": "/image"},
            "https://[2001:db8::1]:9292/image/v2/",
        ),
        ({"X-Forwarded-Host": "images.example.org", "Host": "evil.example"}, "http://images.example.org/v2/"),
        ({"X-Forwarded-Proto": "https"}, "https://{local}/v2/"),
    ],
)
def test_versions_links_follow_a_trusted_proxy(behind_proxy, headers, href):
    local = behind_proxy.url.removeprefix("http://")
    assert _hrefs(behind_proxy.url, "/versions", headers) == {href.format(local=local)}


@pytest.mark.parametrize(
    "headers, href",
    [
        ({"X-Forwarded-Proto": "javascript", "Host": "evil.example:666"}, "http://{local}/v2/"),
        ({"Forwarded": "proto=javascript;host=evil.example"}, "http://evil.example/v2/"),
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example:666/x"}, "https://{local}/v2/"),
        ({"X-Forwarded-Host": "evil.example:99999"}, "http://{local}/v2/"),
        ({"X-Forwarded-Host": "user@evil.example"}, "http://{local}/v2/"),
        ({"X-Forwarded-Host": "[evil]:80"}, "http://{local}/v2/"),
        ({"X-Forwarded-Host": "evil.example, images.example.org"}, "http://{local}/v2/"),
        (
            {"X-Forwarded-Host": "images.example.org", "X-Forwarded-Prefix": "@evil.example"},
            "http://images.example.org/v2/",
        ),
        ({"X-Forwarded-Host": "images.example.org", "X-Forwarded-Prefix": "/a?b#"}, "http://images.example.org/v2/"),
    ],
)
def test_versions_links_refuse_what_is_not_a_scheme_host_or_path(behind_proxy, headers, href):
    """Even from a trusted proxy: only http or https, a host[:port] and a path; anything
    else falls back to the connection's own value."""
    local = behind_proxy.url.removeprefix("http://")
    assert _hrefs(behind_proxy.url, "/versions", headers) == {href.format(local=local)}


def test_uploads_and_downloads_pass_the_proxy_filter(behind_proxy):
    """With parsing on, every request goes through oslo.middleware (WebOb): streamed
    uploads, downloads, ranges and HEAD must come out as without it."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.org", "X-Forwarded-Prefix": "/image"}
    url = behind_proxy.url
    image = requests.post(
        f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=forwarded
    ).json()
    data = bytes(range(256)) * 4096
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))  # sent chunked
    resp = requests.put(
        f"{url}/v2/images/{image['id']}/file",
        data=chunks,
        headers={**forwarded, "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 204, resp.text
    resp = requests.get(f"{url}/v2/images/{image['id']}/file", headers=forwarded)
    assert resp.status_code == 200 and resp.content == data
    resp = requests.get(f"{url}/v2/images/{image['id']}/file", headers={**forwarded, "Range": "bytes=10-19"})
    assert resp.status_code == 206 and resp.content == data[10:20]
    head = requests.head(f"{url}/healthcheck", headers=forwarded)
    assert head.status_code == 200 and head.content == b""


def test_public_endpoint_makes_the_links(server_factory):
    srv = server_factory("public-endpoint", server_config(default="public_endpoint = https://images.example.org/image"))
    headers = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    assert _hrefs(srv.url, "/", headers) == {"https://images.example.org/image/v2/"}


# -- healthcheck ------------------------------------------------------------------------


def test_healthcheck(server):
    resp = requests.get(f"{server.url}/healthcheck")
    assert resp.status_code == 200
    assert resp.text == "OK"
    assert resp.headers["Content-Type"].startswith("text/plain")
    head = requests.head(f"{server.url}/healthcheck")
    assert head.status_code == 200 and head.content == b""


# -- request ids ------------------------------------------------------------------------


@pytest.fixture
def image(server):
    return create(server, name="wire-versions")


CALLS = {
    "versions-300": ("GET", "/", None, 300),
    "versions-200": ("GET", "/versions", None, 200),
    "list": ("GET", "/v2/images?limit=1", None, 200),
    "show": ("GET", "/v2/images/{id}", None, 200),
    "create": ("POST", "/v2/images", b"{}", 201),
    "no-content": ("PUT", "/v2/images/{id}/tags/rid", None, 204),
    "not-found": ("GET", "/v2/images/00000000-0000-0000-0000-000000000000", None, 404),
    "unknown-path": ("GET", "/v2/nowhere", None, 404),
    "not-allowed": ("PUT", "/v2/images", None, 405),
    "bad-json": ("POST", "/v2/images", b"{nope", 400),
    "bad-media-type": ("PATCH", "/v2/images/{id}", b"[]", 415),
    "queued-download": ("GET", "/v2/images/{id}/file", None, 204),
    "healthcheck": ("GET", "/healthcheck", None, 200),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_response_has_a_request_id(server, image, call):
    method, path, body, status = call
    got, headers, _ = raw(server, method, path.format(id=image["id"]), body)
    assert got == status
    assert REQUEST_ID.match(headers.get("x-openstack-request-id", "")), headers


def test_request_ids_are_unique(server):
    ids = {requests.get(f"{server.url}/versions").headers["x-openstack-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("path", ["/v2/images?limit=1", "/v2/images/00000000-0000-0000-0000-000000000000", "/"])
def test_client_request_id_is_reused(server, path):
    mine = f"req-{uuid.uuid4()}"
    resp = requests.get(server.url + path, headers={"X-Openstack-Request-ID": mine})
    assert resp.headers["x-openstack-request-id"] == mine  # exactly once: requests would join duplicates


def test_client_request_id_gets_the_req_prefix(server):
    resp = requests.get(f"{server.url}/v2/images?limit=1", headers={"X-Openstack-Request-ID": "my-trace-1"})
    assert resp.headers["x-openstack-request-id"] == "req-my-trace-1"


def test_client_request_id_of_64_characters_is_accepted(server):
    mine = "req-" + "a" * 60
    resp = requests.get(f"{server.url}/v2/images?limit=1", headers={"X-Openstack-Request-ID": mine})
    assert resp.status_code == 200
    assert resp.headers["x-openstack-request-id"] == mine


def test_client_request_id_longer_than_64_characters_is_431(server):
    resp = requests.get(f"{server.url}/v2/images?limit=1", headers={"X-Openstack-Request-ID": "req-" + "a" * 61})
    assert resp.status_code == 431


# -- routing: 405 and 404 ---------------------------------------------------------------

NOT_ALLOWED = [
    ("PUT", "/v2/images", {"GET", "POST"}),
    ("DELETE", "/v2/images", {"GET", "POST"}),
    ("POST", "/v2/images/{id}", {"GET", "PATCH", "DELETE"}),
    ("PUT", "/v2/images/{id}", {"GET", "PATCH", "DELETE"}),
    ("POST", "/v2/images/{id}/file", {"GET", "PUT"}),
    ("DELETE", "/v2/images/{id}/file", {"GET", "PUT"}),
    ("GET", "/v2/images/{id}/tags/t", {"PUT", "DELETE"}),
    ("GET", "/v2/images/{id}/actions/deactivate", {"POST"}),
    ("PUT", "/v2/images/{id}/actions/reactivate", {"POST"}),
    ("POST", "/v2/schemas/image", {"GET"}),
    ("DELETE", "/v2/info/import", {"GET"}),
    ("POST", "/v2/info/stores", {"GET"}),
    ("PUT", "/v2/info/stores/detail", {"GET"}),
]


@pytest.mark.parametrize("method,path,allowed", NOT_ALLOWED, ids=[f"{m} {p}" for m, p, _ in NOT_ALLOWED])
def test_wrong_method_is_405_with_allow(server, image, method, path, allowed):
    resp = requests.request(method, server.url + path.format(id=image["id"]), headers={"Accept": "application/json"})
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    assert resp.json()["code"] == "405 Method Not Allowed"
    assert requests.get(f"{server.url}/v2/images/{image['id']}").json()["status"] == "queued"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/nothing",
        "/v2",
        "/v2/",
        "/v2/images/{id}/nope",
        "/v2/images/{id}/tags",
        "/v2/images/{id}/actions/explode",
        "/v2/schemas/nope",
        "/v2/schemas/image/extra",
        "/v2/info/usage-nope",
        "/v2/info/stores/nope",
    ],
)
def test_unknown_path_is_404(server, image, path):
    resp = requests.get(server.url + path.format(id=image["id"]), headers={"Accept": "application/json"})
    assert resp.status_code == 404
    assert resp.json()["code"] == "404 Not Found"


# -- body rules -------------------------------------------------------------------------

NO_BODY = [
    ("GET", "/v2/images/{id}"),
    ("DELETE", "/v2/images/{id}"),
    ("GET", "/v2/schemas/image"),
    ("PUT", "/v2/images/{id}/tags/body"),
    ("DELETE", "/v2/images/{id}/tags/body"),
    ("POST", "/v2/images/{id}/actions/deactivate"),
    ("POST", "/v2/images/{id}/actions/reactivate"),
]


@pytest.mark.parametrize("method,path", NO_BODY, ids=[f"{m} {p}" for m, p in NO_BODY])
def test_body_where_none_is_expected_is_400(server, image, method, path):
    resp = requests.request(
        method, server.url + path.format(id=image["id"]), data=b'{"a": 1}', headers={"Accept": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert "A body is not expected with this request." in resp.json()["message"]
    after = requests.get(f"{server.url}/v2/images/{image['id']}")
    assert after.status_code == 200 and after.json()["tags"] == []  # nothing happened


@pytest.mark.parametrize(
    "method,path", [("PUT", "/v2/images/{id}/tags/chunked"), ("POST", "/v2/images/{id}/actions/deactivate")]
)
def test_chunked_body_where_none_is_expected_is_400(server, image, method, path):
    # For POST/PUT/PATCH a Transfer-Encoding alone means a body (GLANCE-API 13).
    resp = requests.request(method, server.url + path.format(id=image["id"]), data=iter([b"x"]))
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.request.headers
    assert resp.status_code == 400
    assert requests.get(f"{server.url}/v2/images/{image['id']}").json()["tags"] == []


@pytest.mark.parametrize("body", [b"{nope", b"", b'{"a": }', b"\xff\xfe", b"[1, 2"])
def test_malformed_or_missing_json_on_create_is_400(server, body):
    status, headers, text = raw(server, "POST", "/v2/images", body, {"Accept": "application/json"})
    assert status == 400, text
    assert json.loads(text)["code"] == "400 Bad Request"


@pytest.mark.parametrize("body", [b"1", b'"name"', b"null", b"true", b"[]", b'[{"name": "x"}]'])
def test_non_object_json_on_create_is_400(server, body):
    status, _, text = raw(server, "POST", "/v2/images", body, {"Accept": "application/json"})
    assert status == 400, text


# -- error bodies by Accept -------------------------------------------------------------

MISSING = "/v2/images/00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("accept", ["application/json", "application/json;q=0.5, text/plain;q=0.1"])
def test_json_error_body(server, accept):
    status, headers, body = raw(server, "GET", MISSING, headers={"Accept": accept})
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"message", "code", "title"}
    assert error["code"] == "404 Not Found"
    assert error["title"] == "Not Found"
    assert "00000000-0000-0000-0000-000000000000" in error["message"]


@pytest.mark.parametrize("accept", ["text/html", "*/*", "text/html, application/json"])
def test_html_error_body(server, accept):
    status, headers, body = raw(server, "GET", MISSING, headers={"Accept": accept})
    assert status == 404
    assert headers["content-type"].startswith("text/html")
    assert b"<title>404 Not Found</title>" in body


@pytest.mark.parametrize("accept", [None, "text/plain", "application/xml"])
def test_plain_error_body(server, accept):
    status, headers, body = raw(server, "GET", MISSING, headers={"Accept": accept} if accept else {})
    assert status == 404
    assert headers["content-type"].startswith("text/plain")
    assert body.startswith(b"404 Not Found\n\n")
    assert b"00000000-0000-0000-0000-000000000000" in body


def test_error_body_of_405_and_400_by_accept(server):
    resp = requests.put(f"{server.url}/v2/images", headers={"Accept": "application/json"})
    assert resp.json()["code"] == "405 Method Not Allowed" and resp.json()["title"] == "Method Not Allowed"
    resp = requests.post(f"{server.url}/v2/images", data=b"{", headers={"Accept": "application/json"})
    assert resp.json()["code"] == "400 Bad Request"
    assert "Malformed JSON in request body." in resp.json()["message"]


# -- schemas ----------------------------------------------------------------------------

IMAGE_PROPERTIES = {
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "size",
    "virtual_size",
    "container_format",
    "disk_format",
    "created_at",
    "updated_at",
    "tags",
    "direct_url",
    "min_ram",
    "min_disk",
    "self",
    "file",
    "schema",
    "locations",
}


def _get_schema(server, name):
    resp = requests.get(f"{server.url}/v2/schemas/{name}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def test_image_schema(server):
    schema = _get_schema(server, "image")
    assert schema["name"] == "image"
    assert IMAGE_PROPERTIES <= set(schema["properties"])
    assert schema["additionalProperties"] == {"type": "string"}
    assert schema["links"] == [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ]
    props = schema["properties"]
    assert set(props["visibility"]["enum"]) == {"public", "private", "shared", "community"}
    assert set(props["status"]["enum"]) == {
        "queued",
        "saving",
        "active",
        "killed",
        "deleted",
        "uploading",
        "importing",
        "pending_delete",
        "deactivated",
    }
    assert props["disk_format"]["enum"] == [
        None,
        "ami",
        "ari",
        "aki",
        "vhd",
        "vhdx",
        "vmdk",
        "raw",
        "qcow2",
        "vdi",
        "iso",
        "ploop",
    ]
    assert props["container_format"]["enum"] == [
        None,
        "ami",
        "ari",
        "aki",
        "bare",
        "ovf",
        "ova",
        "docker",
        "compressed",
    ]
    assert props["name"] == {"type": ["null", "string"], "description": props["name"]["description"], "maxLength": 255}
    assert props["tags"]["items"] == {"type": "string", "maxLength": 255}
    assert props["min_ram"]["minimum"] == 0 and props["min_disk"]["minimum"] == 0
    assert props["checksum"]["maxLength"] == 32 and props["os_hash_value"]["maxLength"] == 128
    for name in (
        "status",
        "checksum",
        "size",
        "virtual_size",
        "created_at",
        "updated_at",
        "self",
        "file",
        "schema",
        "direct_url",
        "os_hash_algo",
        "os_hash_value",
    ):
        assert props[name].get("readOnly") is True, name
    for name in ("kernel_id", "ramdisk_id", "os_distro", "description"):
        assert props[name]["is_base"] is False


def test_images_schema(server):
    schema = _get_schema(server, "images")
    assert schema["name"] == "images"
    assert set(schema["properties"]) == {"images", "schema", "first", "next"}
    assert schema["properties"]["images"]["type"] == "array"
    assert schema["properties"]["images"]["items"] == _get_schema(server, "image")
    assert schema["links"] == [
        {"rel": "first", "href": "{first}"},
        {"rel": "next", "href": "{next}"},
        {"rel": "describedby", "href": "{schema}"},
    ]


def test_member_schemas(server):
    member = _get_schema(server, "member")
    assert member["name"] == "member"
    assert {"created_at", "image_id", "member_id", "status", "updated_at", "schema"} == set(member["properties"])
    assert member["properties"]["status"]["enum"] == ["pending", "accepted", "rejected"]
    members = _get_schema(server, "members")
    assert members["name"] == "members"
    assert members["properties"]["members"] == {"type": "array", "items": member}


# -- discovery --------------------------------------------------------------------------


def test_info_import_lists_the_enabled_methods(server):
    resp = requests.get(f"{server.url}/v2/info/import")
    assert resp.status_code == 200
    assert resp.json() == {
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": ["glance-direct", "web-download", "copy-image"],
        }
    }


def test_info_stores(server):
    resp = requests.get(f"{server.url}/v2/info/stores")
    assert resp.status_code == 200
    stores = resp.json()["stores"]
    assert [s["id"] for s in stores] == ["local"]
    assert stores[0]["default"] == "true"
    assert "read-only" not in stores[0]
    assert set(stores[0]) == {"id", "description", "default"}


def test_info_stores_detail(server):
    resp = requests.get(f"{server.url}/v2/info/stores/detail")
    assert resp.status_code == 200
    (store,) = resp.json()["stores"]
    assert store["id"] == "local" and store["default"] == "true"
    assert store["type"] == "filesystem"
    assert store["weight"] == 0
    assert store["properties"]["data_dir"].rstrip("/").endswith("images")
    assert isinstance(store["properties"]["chunk_size"], int)
