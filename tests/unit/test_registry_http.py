"""The ``http`` registry and abbild-registry: request signatures, the refusal to listen
beyond loopback without them, visibility by the signed caller, retries, and the shared
registry tests (test_registry*.py) run through a real registry server on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.util
import json
import pathlib
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import wsgiref.simple_server

import pytest
import requests
import webob

from abbild import registry_wire as wire
from abbild.caller import acting_as
from abbild.errors import (
    ConcurrentUpdate,
    ConfigError,
    Conflict,
    Forbidden,
    ImageNotFound,
    Invalid,
    MetadefNotFound,
    RegistryUnavailable,
)
from abbild.image import Image, Status
from abbild.metadefs import (
    Association,
    MetadefObject,
    MetadefTag,
    Namespace,
    NamespaceFilters,
    ResourceType,
    namespace_visible,
)
from abbild.registry import CacheEntry, ImageFilters, Viewer
from abbild.registry_client import HTTPRegistry
from abbild_registry.app import RegistryApp, load_conf
from abbild_registry.auth import check_bind, filter_factory

SECRET = "unit-test-secret"
HERE = pathlib.Path(__file__).parent


class _ThreadingServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def registry_server(sql_registry, tmp_path, auth_strategy="hmac", more=""):
    """The registry pipeline's auth filter and app over *sql_registry*, on a free loopback port."""
    conf = tmp_path / "registry.conf"
    conf.write_text(f"[registry_server]\nauth_strategy = {auth_strategy}\nshared_secret = {SECRET}\n{more}")
    app = filter_factory({"config_files": str(conf)})(RegistryApp(sql_registry))
    httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, _ThreadingServer, _QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class ConformanceClient(HTTPRegistry):
    """The http driver, plus the server's engine for tests that write rows directly."""

    engine = None


@pytest.fixture(scope="session")
def http_session(sql_session_registry, tmp_path_factory):
    with registry_server(sql_session_registry, tmp_path_factory.mktemp("registry")) as url:
        client = ConformanceClient(url=url, shared_secret=SECRET, retries=1, retry_backoff=0.01)
        client.engine = sql_session_registry.engine
        yield url, client
        client.close()


@pytest.fixture
def client(http_session, sql_registry):
    """The http driver on an emptied database (``sql_registry`` empties it)."""
    return http_session[1]


@pytest.fixture
def url(http_session, sql_registry):
    return http_session[0]


# -- the shared registry tests, through HTTP ------------------------------------------------

# What only the SQL registry does: its update_image runs *change* under a row lock.
SQL_ONLY = {"test_change_must_not_write_through_the_registry", "test_each_batch_is_a_transaction_of_its_own"}


# The shared tests' own fixtures (which build on ``sql_registry``, the client here).
SHARED_FIXTURES = ("catalog", "scoped", "many", "metadef_registry", "scoped_namespaces", "many_namespaces")


def _shared_tests(filename: str) -> dict:
    spec = importlib.util.spec_from_file_location(f"shared_{filename[:-3]}", HERE / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sql_only = SQL_ONLY | set(getattr(module, "SQL_ONLY_TESTS", ()))  # a file's own list of them
    return {
        f"{name}_over_http" if name.startswith("test_") else name: value
        for name, value in vars(module).items()
        if (name.startswith("test_") and name not in sql_only) or name in SHARED_FIXTURES
    }


for _file in (
    "test_registry.py",
    "test_registry_members.py",
    "test_registry_cache.py",
    "test_registry_leases.py",
    "test_registry_purge.py",
    "test_registry_tasks.py",
    "test_registry_metadefs.py",
):
    globals().update(_shared_tests(_file))


@pytest.fixture
def sql_registry(sql_registry, http_session):  # noqa: F811 - the shared tests' registry is the client
    return http_session[1]


# -- signatures ---------------------------------------------------------------------------


def _image(client, owner="p1", visibility="private", **fields) -> Image:
    return client.create_image(Image(id=str(uuid.uuid4()), owner=owner, visibility=visibility, **fields))


def _signed(method, path, body=b"", secret=SECRET, caller=None, timestamp=None):
    headers = wire.sign(secret, method, path, caller or wire.caller_header(None), body)
    if timestamp is not None:
        headers[wire.TIMESTAMP_HEADER] = str(timestamp)
        headers[wire.SIGNATURE_HEADER] = wire._signature(
            secret,
            method,
            path,
            str(timestamp),
            headers[wire.NONCE_HEADER],
            headers[wire.CALLER_HEADER],
            wire.body_digest(body),
        )
    return headers


def test_signed_request_is_accepted_once(url, client):
    image = _image(client)
    path = f"/v1/images/{image.id}"
    headers = _signed("GET", path)
    assert requests.get(url + path, headers=headers).json()["id"] == image.id
    replay = requests.get(url + path, headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.text


@pytest.mark.parametrize(
    "headers",
    [
        lambda path: {},
        lambda path: {wire.CALLER_HEADER: wire.caller_header(None)},
        lambda path: _signed("GET", path, secret="not-the-secret"),
        lambda path: _signed("GET", path, timestamp=int(time.time()) - 3600),
        lambda path: _signed("GET", path, timestamp=int(time.time()) + 3600),
        lambda path: _signed("GET", path + "?include_deleted=1"),  # signed for another query
        lambda path: _signed("DELETE", path),  # signed for another method
        lambda path: {
            **_signed("GET", path, caller=wire.caller_header(Viewer("p2"))),
            wire.CALLER_HEADER: wire.caller_header(None),
        },  # the caller swapped
    ],
    ids=["missing", "unsigned", "bad signature", "stale", "from the future", "query", "method", "caller"],
)
def test_unauthentic_requests_are_refused(url, client, headers):
    image = _image(client)
    path = f"/v1/images/{image.id}"
    resp = requests.get(url + path, headers=headers(path))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["message"].startswith("registry request refused")


def test_altered_body_is_refused(url, client):
    image = _image(client)
    path = f"/v1/images/{image.id}/members"
    headers = _signed("POST", path, b'{"member_id": "p2"}')
    resp = requests.post(url + path, data=b'{"member_id": "p3"}', headers=headers)
    assert resp.status_code == 401 and "bad signature" in resp.text
    assert client.list_members(image.id) == []


def test_non_ascii_signature_is_refused(url, client):
    image = _image(client)
    path = f"/v1/images/{image.id}"
    headers = {**_signed("GET", path), wire.SIGNATURE_HEADER: "\xe9" * 64}
    resp = requests.get(url + path, headers=headers)
    assert resp.status_code == 401 and "malformed X-Abbild-Signature" in resp.text, resp.text


class _Unread:
    """A request body that must not be read."""

    def read(self, *args):
        raise AssertionError("the body was read")


def _filtered(tmp_path, text: str):
    conf = tmp_path / "r.conf"
    conf.write_text(f"[registry_server]\n{text}")
    return filter_factory({"config_files": str(conf)})(
        lambda environ, start_response: webob.Response("ok")(environ, start_response)
    )


@pytest.mark.parametrize(
    "headers, status, reason",
    [
        (lambda: {}, 401, "unsigned request"),
        (lambda: {**_signed("POST", "/v1/images"), wire.TIMESTAMP_HEADER: "1"}, 401, "stale request"),
        (
            lambda: {**_signed("POST", "/v1/images"), wire.TIMESTAMP_HEADER: "\u0661\u0662"},
            401,
            "malformed X-Abbild-Timestamp",
        ),
        (lambda: _signed("POST", "/v1/images"), 413, "max_request_body_size"),
    ],
    ids=["unsigned", "stale", "non-ascii digits", "too large"],
)
def test_headers_decide_before_the_body_is_read(tmp_path, headers, status, reason):
    app = _filtered(tmp_path, f"shared_secret = {SECRET}\nmax_request_body_size = 2048\n")
    req = webob.Request.blank("/v1/images", method="POST", headers=headers())
    req.environ.update({"CONTENT_LENGTH": "1000000000", "wsgi.input": _Unread()})
    resp = req.get_response(app)
    assert resp.status_code == status and reason in resp.text, resp.text


def test_malformed_content_length_is_400(tmp_path):
    app = _filtered(tmp_path, "auth_strategy = noauth\n")
    req = webob.Request.blank("/v1/images", method="POST", remote_addr="127.0.0.1")
    req.environ["CONTENT_LENGTH"] = "12abc"
    assert req.get_response(app).status_code == 400


@pytest.mark.parametrize("address", ["192.0.2.10", "::ffff:192.0.2.10", "2001:db8::1", "", "localhost"])
def test_noauth_answers_no_client_beyond_loopback(tmp_path, address):
    """Also where `abbild registry` never checked its bind address (mod_wsgi, uWSGI)."""
    req = webob.Request.blank("/v1/images", headers={wire.CALLER_HEADER: wire.caller_header(None)})
    req.environ["REMOTE_ADDR"] = address
    resp = req.get_response(_filtered(tmp_path, "auth_strategy = noauth\n"))
    assert resp.status_code == 403 and "auth_strategy = noauth serves this machine only" in resp.text, resp.text


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_noauth_answers_loopback(tmp_path, address):
    req = webob.Request.blank("/v1/images", headers={wire.CALLER_HEADER: wire.caller_header(None)})
    req.environ["REMOTE_ADDR"] = address
    assert req.get_response(_filtered(tmp_path, "auth_strategy = noauth\n")).text == "ok"


def test_wrong_secret_is_a_clear_registry_error(url, client):
    image = _image(client)
    with pytest.raises(RegistryUnavailable, match="shared_secret"):
        HTTPRegistry(url=url, shared_secret="wrong").get_image(image.id)


def test_verifier_compares_in_constant_time(monkeypatch):
    compared = []
    monkeypatch.setattr(wire.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    headers = wire.sign(SECRET, "GET", "/v1/images", "{}", b"")
    wire.Verifier(SECRET).verify("GET", "/v1/images", headers, b"")
    assert compared and compared[0][1] == headers[wire.SIGNATURE_HEADER]


# -- listening --------------------------------------------------------------------------


def _conf(tmp_path, text: str):
    path = tmp_path / "r.conf"
    path.write_text(text)
    return load_conf([str(path)])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_noauth_refuses_to_listen_beyond_loopback(tmp_path, host):
    with pytest.raises(ConfigError, match="without authentication"):
        check_bind(host, _conf(tmp_path, "[registry_server]\nauth_strategy = noauth\n"))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_noauth_may_listen_on_loopback(tmp_path, host):
    check_bind(host, _conf(tmp_path, "[registry_server]\nauth_strategy = noauth\n"))


def test_hmac_needs_a_secret(tmp_path):
    with pytest.raises(ConfigError, match="shared_secret"):
        check_bind("127.0.0.1", _conf(tmp_path, ""))


def test_hmac_may_listen_anywhere(tmp_path):
    check_bind("0.0.0.0", _conf(tmp_path, "[registry_server]\nshared_secret = x\n"))


def test_cli_refuses_before_listening(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text(
        f"[database]\nconnection = sqlite:///{tmp_path}/r.sqlite\n[registry_server]\nauth_strategy = noauth\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "abbild_cmd.cli",
            "registry",
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--config-file",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "will not listen on 0.0.0.0 without authentication" in result.stderr


# -- visibility by the signed caller ----------------------------------------------------------


def test_private_image_of_another_project_does_not_exist(client):
    image = _image(client, owner="p1")
    with acting_as(Viewer("p2")):
        with pytest.raises(ImageNotFound):
            client.get_image(image.id)
        with pytest.raises(ImageNotFound):
            client.update_image(image.id, lambda i: setattr(i, "name", "stolen"))
        with pytest.raises(ImageNotFound):
            client.list_members(image.id)
        assert client.list_images(ImageFilters(visibility="all"), [], 10) == []
    with acting_as(Viewer("p1")):
        assert client.get_image(image.id).id == image.id
    assert client.get_image(image.id).name is None  # unchanged


def test_list_images_uses_the_given_viewer(client):
    image = _image(client, owner="p1")
    assert client.list_images(ImageFilters(), [], 10, viewer=Viewer("p2")) == []
    assert [i.id for i in client.list_images(ImageFilters(), [], 10, viewer=Viewer("p1"))] == [image.id]


def test_only_the_owner_writes(client):
    image = _image(client, owner="p1", visibility="public")
    with acting_as(Viewer("p2")):
        assert client.get_image(image.id).id == image.id  # public: readable
        with pytest.raises(Forbidden):
            client.update_image(image.id, lambda i: setattr(i, "name", "mine now"))
        with pytest.raises(Forbidden):
            client.create_image(Image(id=str(uuid.uuid4()), owner="p1"))
    with acting_as(Viewer("p1", roles=("member", "reader"))):  # the policy's modify_image wants a member
        assert client.update_image(image.id, lambda i: setattr(i, "name", "renamed")).name == "renamed"


def test_members_see_only_themselves(client):
    image = _image(client, owner="p1", visibility="shared")
    with acting_as(Viewer("p1")):
        client.add_member(image.id, "p2")
        client.add_member(image.id, "p3")
    with acting_as(Viewer("p2")):
        assert client.get_image(image.id).id == image.id  # a pending member reads it
        assert [m.member_id for m in client.list_members(image.id)] == ["p2"]
        assert client.get_member(image.id, "p3") is None
        with pytest.raises(Forbidden):
            client.set_member_status(image.id, "p3", "accepted")
        with pytest.raises(Forbidden):
            client.add_member(image.id, "p4")
        assert client.set_member_status(image.id, "p2", "accepted").status == "accepted"
    with acting_as(Viewer("p4")):
        with pytest.raises(ImageNotFound):
            client.get_image(image.id)


def test_service_calls_are_the_shared_secret_holders_only(url, client):
    _image(client, owner="p1")
    with acting_as(Viewer("p2")):
        assert len(client.images_in_status("queued")) == 1  # the driver asks as the service
    path = "/v1/images?in_status=queued"
    as_user = requests.get(url + path, headers=_signed("GET", path, caller=wire.caller_header(Viewer("p2"))))
    assert as_user.status_code == 403


# -- the cache index: the service's and administrators' only -------------------------------

NODE = "http://api-a.example:9292"
_CACHE_ENTRY = json.dumps({"node": NODE, "image_id": "i1", "state": "queued"}).encode()
_CACHE_CALLS = [
    ("GET", "/v1/cache", b""),
    ("GET", "/v1/cache?node=" + urllib.parse.quote(NODE, safe=""), b""),
    ("PUT", "/v1/cache", _CACHE_ENTRY),
    ("POST", "/v1/cache/hits", json.dumps({"node": NODE, "image_id": "i1"}).encode()),
    ("DELETE", "/v1/cache?node=" + urllib.parse.quote(NODE, safe="") + "&image_id=i1", b""),
]


@pytest.mark.parametrize("method, path, body", _CACHE_CALLS, ids=[f"{m} {p}" for m, p, _ in _CACHE_CALLS])
def test_cache_index_refuses_users(url, client, method, path, body):
    client.cache_put(CacheEntry(NODE, "i1"))
    for viewer in (Viewer("p1", roles=("member", "reader")), Viewer("p1", roles=("service",)), Viewer(anonymous=True)):
        headers = _signed(method, path, body, caller=wire.caller_header(viewer))
        resp = requests.request(method, url + path, data=body or None, headers=headers)
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["message"] == "The image cache index is for the service and administrators only."
    assert [(e.hits, e.state) for e in client.cache_entries()] == [(0, "queued")]  # untouched
    admin = wire.caller_header(Viewer("admins", is_admin=True))
    resp = requests.request(method, url + path, data=body or None, headers=_signed(method, path, body, caller=admin))
    assert resp.status_code in (200, 204), resp.text


def test_the_client_keeps_the_cache_index_as_the_service(client):
    with acting_as(Viewer("p2")):  # a hit is counted inside a user's download
        client.cache_put(CacheEntry(NODE, "i1", "cached", size=1, checksum="0" * 32))
        client.cache_hit(NODE, "i1")
        assert [e.hits for e in client.cache_entries(NODE)] == [1]
        assert client.cache_remove(NODE, "i1") is True


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"node": "n"}', b'{"node": "n", "image_id": "i", "colour": "red"}', b"not json"],
    ids=["list", "no image id", "unknown field", "not json"],
)
def test_malformed_cache_entry_is_400(url, client, body):
    resp = requests.put(url + "/v1/cache", data=body, headers=_signed("PUT", "/v1/cache", body))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "Invalid"
    assert client.cache_entries() == []


def test_a_lost_hit_is_not_counted_twice(client, monkeypatch):
    client.cache_put(CacheEntry(NODE, "i1", "cached", size=1, checksum="0" * 32))
    _lose_answers(client, monkeypatch, "POST")
    with pytest.raises(RegistryUnavailable):
        client.cache_hit(NODE, "i1")
    assert [e.hits for e in client.cache_entries(NODE)] == [1]


# -- the purge: the service's and administrators' only ----------------------------------------


def test_purge_refuses_users(url, client):
    image = _image(client)
    client.update_image(image.id, lambda i: i.transition(Status.DELETED))
    body = json.dumps({"older_than": "2999-01-01T00:00:00", "max_rows": None}).encode()
    for viewer in (Viewer("p1", roles=("member", "reader")), Viewer("p1", roles=("service",)), Viewer(anonymous=True)):
        headers = _signed("POST", "/v1/purge", body, caller=wire.caller_header(viewer))
        resp = requests.post(url + "/v1/purge", data=body, headers=headers)
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["message"] == "Purging deleted images is for the service and administrators only."
    assert client.get_image(image.id, include_deleted=True).status is Status.DELETED  # untouched
    admin = wire.caller_header(Viewer("admins", is_admin=True))
    resp = requests.post(url + "/v1/purge", data=body, headers=_signed("POST", "/v1/purge", body, caller=admin))
    assert resp.status_code == 200, resp.text
    assert resp.json()["removed"]["images"] == 1


def test_the_client_purges_as_the_service(client):
    image = _image(client)
    client.update_image(image.id, lambda i: i.transition(Status.DELETED))
    with acting_as(Viewer("p1")):  # whoever is bound: the purge is the deployment's work
        assert client.purge(datetime.datetime(2999, 1, 1))["images"] == 1


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{}", b'{"older_than": "yesterday"}', b'{"older_than": null}', b"not json"],
    ids=["list", "no cutoff", "not a time", "null cutoff", "not json"],
)
def test_malformed_purge_is_400(url, client, body):
    image = _image(client)
    client.update_image(image.id, lambda i: i.transition(Status.DELETED))
    resp = requests.post(url + "/v1/purge", data=body, headers=_signed("POST", "/v1/purge", body))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "Invalid"
    assert client.get_image(image.id, include_deleted=True).status is Status.DELETED


# -- transport --------------------------------------------------------------------------------


def test_registry_down_is_unavailable():
    with socketserver.TCPServer(("127.0.0.1", 0), None) as probe:
        port = probe.server_address[1]  # closed again when the block ends
    client = HTTPRegistry(url=f"http://127.0.0.1:{port}", shared_secret=SECRET, retries=2, retry_backoff=0.01)
    with pytest.raises(RegistryUnavailable, match="refused the connection"):
        client.get_image("x")


def _lose_answers(client, monkeypatch, method: str, times: int = 1):
    """Let *times* requests of *method* reach the server, then act as if their answer was lost."""
    real = client.session.request
    lost = []

    def request(m, *args, **kwargs):
        resp = real(m, *args, **kwargs)
        if m == method and len(lost) < times:
            lost.append(resp)
            raise requests.ConnectionError("connection reset while reading the answer")
        return resp

    monkeypatch.setattr(client.session, "request", request)
    return lost


def test_lost_answer_to_a_write_is_recognised(client, monkeypatch):
    image = _image(client)
    lost = _lose_answers(client, monkeypatch, "PUT")
    calls = []
    saved = client.update_image(image.id, lambda i: [calls.append(1), i.tags.add("once")])
    assert lost and calls == [1], "the change must not run twice"
    assert saved.version == 2 and saved.tags == {"once"}


def test_post_is_not_retried_once_sent(client, monkeypatch):
    lost = _lose_answers(client, monkeypatch, "POST", times=5)
    with pytest.raises(RegistryUnavailable, match="closed the connection"):
        _image(client)
    assert len(lost) == 1


def test_lost_answer_to_a_member_delete(client, monkeypatch):
    image = _image(client, visibility="shared")
    client.add_member(image.id, "p2")
    _lose_answers(client, monkeypatch, "DELETE")
    client.delete_member(image.id, "p2")
    assert client.list_members(image.id) == []


def test_wire_round_trip():
    filters = ImageFilters(
        values={"name": ["a"]}, tags=["t"], times=[("created_at", "gt", wire._time_in("2024-01-01T00:00:00"))]
    )
    assert wire.filters_from_json(json.loads(json.dumps(wire.filters_to_json(filters)))) == filters


def test_usage_is_the_projects_own(client):
    _image(client, owner="p1", size=5)
    with acting_as(Viewer("p1")):
        assert (client.usage("p1").images, client.usage("p1").size) == (1, 5)
    with acting_as(Viewer("p2")):
        with pytest.raises(Forbidden):
            client.usage("p1")


def test_every_registry_method_goes_over_http():
    """The driver implements every abstract method itself (the ABC may grow)."""
    from abbild.registry import Registry

    missing = {name for name in Registry.__abstractmethods__ if name not in vars(HTTPRegistry)}
    assert not missing, f"HTTPRegistry lacks {sorted(missing)}"


def test_metadata_beyond_the_registrys_body_limit_is_a_clear_413(sql_registry, tmp_path):
    from abbild.errors import QuotaExceeded

    with registry_server(sql_registry, tmp_path, more="max_request_body_size = 4096\n") as url:
        client = HTTPRegistry(url=url, shared_secret=SECRET, retries=0)
        image = client.create_image(Image(id=str(uuid.uuid4()), owner="p1"))
        image.properties["long"] = "x" * 5000
        with pytest.raises(QuotaExceeded, match="max_request_body_size"):
            client.save_image(image)
        client.close()


# -- metadata definitions ----------------------------------------------------------------------


def _namespace(name="OS::Test::Thing", owner="p1", visibility="private", **fields) -> Namespace:
    values = {
        "properties": {"hw_x": {"title": "X", "type": "string", "enum": ["a", "b"]}},
        "objects": [MetadefObject("CPU Limits", "limits", ["quota:cpu"], {"quota:cpu": {"type": "integer"}})],
        "tags": [MetadefTag("fast"), MetadefTag("cheap")],
        "associations": [Association("OS::Glance::Image", prefix="hw_")],
        **fields,
    }
    return Namespace(namespace=name, owner=owner, visibility=visibility, **values)


def test_namespace_wire_round_trip():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901)
    namespace = _namespace(
        created_at=when,
        updated_at=when,
        version=7,
        objects=[MetadefObject("o", None, [], {}, when, when)],
        tags=[MetadefTag("t", when, None)],
        associations=[Association("OS::Nova::Flavor", "hw:", "scheduler_hints", when, when)],
    )
    assert wire.namespace_from_json(json.loads(json.dumps(wire.namespace_to_json(namespace)))) == namespace
    resource_type = ResourceType("OS::Nova::Flavor", True, when, when)
    assert wire.resource_type_from_json(json.loads(json.dumps(wire.resource_type_to_json(resource_type)))) == (
        resource_type
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("namespace", 5),
        ("protected", "yes"),
        ("version", "1"),
        ("properties", []),
        ("properties", {"p": "string"}),
        ("objects", [{"name": "o", "required": "a"}]),
        ("tags", [{"name": None}]),
        ("associations", [{"name": ["OS::Glance::Image"]}]),
        ("colour", "red"),
    ],
)
def test_malformed_namespace_is_400(url, client, field, value):
    body = json.dumps({**wire.namespace_to_json(_namespace()), field: value}).encode()
    path = "/v1/metadefs/namespaces"
    resp = requests.post(url + path, data=body, headers=_signed("POST", path, body))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "Invalid"
    assert client.list_namespaces(NamespaceFilters()) == []


def test_namespace_list_shows_what_namespace_visible_allows(client):
    """The registry lists and reads for the signed caller, by the one rule."""
    every = [
        client.create_namespace(Namespace(namespace=f"N{i}", owner=owner, visibility=visibility))
        for i, (owner, visibility) in enumerate([(o, v) for o in ("p1", "p2", None) for v in ("private", "public")])
    ]
    for viewer in (Viewer("p1"), Viewer("p2"), Viewer("p3"), Viewer(anonymous=True), Viewer("x", is_admin=True)):
        expected = {n.namespace for n in every if namespace_visible(n, viewer)}
        assert {n.namespace for n in client.list_namespaces(NamespaceFilters(), viewer=viewer)} == expected
        with acting_as(viewer):
            for namespace in every:
                if namespace.namespace in expected:
                    assert client.get_namespace(namespace.namespace) == namespace
                else:
                    with pytest.raises(MetadefNotFound):
                        client.get_namespace(namespace.namespace)
    assert len(client.list_namespaces(NamespaceFilters())) == len(every)  # no viewer: every one
    with acting_as(Viewer("p2")):  # the driver lists every one for viewer=None, as the interface says
        assert len(client.list_namespaces(NamespaceFilters())) == len(every)


def test_an_invisible_namespace_is_no_marker(client):
    client.create_namespace(Namespace(namespace="Hidden", owner="p1"))
    client.create_namespace(Namespace(namespace="Open", owner="p2", visibility="public"))
    with pytest.raises(Invalid):
        client.list_namespaces(NamespaceFilters(), marker="Hidden", viewer=Viewer("p2"))
    assert client.list_namespaces(NamespaceFilters(), marker="Open", viewer=Viewer("p2")) == []


def test_namespace_filters_and_paging_cross_the_wire(client):
    for name, visibility, types in [
        ("A", "public", ["OS::Glance::Image"]),
        ("B", "private", ["OS::Nova::Flavor", "Comma, Type"]),
        ("C", "public", []),
    ]:
        client.create_namespace(
            Namespace(namespace=name, owner="p1", visibility=visibility, associations=[Association(t) for t in types])
        )

    def names(filters, **kwargs):
        return [n.namespace for n in client.list_namespaces(filters, "namespace", "asc", **kwargs)]

    assert names(NamespaceFilters()) == ["A", "B", "C"]
    assert names(NamespaceFilters(visibility="public")) == ["A", "C"]
    assert names(NamespaceFilters(resource_types=("Comma, Type",))) == ["B"]
    assert names(NamespaceFilters(resource_types=("OS::Glance::Image", "Comma, Type"))) == ["A", "B"]
    assert names(NamespaceFilters(), limit=1, marker="A") == ["B"]
    assert {"OS::Glance::Image", "OS::Nova::Flavor", "Comma, Type"} <= {r.name for r in client.list_resource_types()}


ODD_NAMES = ["OS::X", "with space", "100%", "100%25", "ünïcødé 名前", "why?", "#hash", "a+b;c=d&e", "~.tilde", "..x"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_are_one_path_segment_both_ways(client, monkeypatch, name):
    sent = []
    real = client.session.request
    monkeypatch.setattr(client.session, "request", lambda m, u, **kw: sent.append(u) or real(m, u, **kw))
    created = client.create_namespace(_namespace(name, associations=[Association(name)]))
    assert created.namespace == name and client.get_namespace(name) == created
    assert sent[-1].endswith("/v1/metadefs/namespaces/" + urllib.parse.quote(name, safe=""))
    assert [n.namespace for n in client.list_namespaces(NamespaceFilters(resource_types=(name,)))] == [name]
    assert client.list_namespaces(NamespaceFilters(), marker=name) == []
    saved = client.update_namespace(name, lambda n: setattr(n, "description", "changed"))
    assert saved.description == "changed"
    renamed = client.save_namespace(name, dataclasses.replace(saved, namespace=name + " 2"))
    assert client.get_namespace(name + " 2") == renamed
    client.update_namespace(name + " 2", lambda n: n.associations.clear())
    client.delete_namespace(name + " 2")
    with pytest.raises(MetadefNotFound):
        client.get_namespace(name + " 2")
    assert name in {r.name for r in client.list_resource_types()}
    client.delete_resource_type(name)
    assert name not in {r.name for r in client.list_resource_types()}


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_dot_names_are_refused_since_no_url_reaches_them(client, name):
    with pytest.raises(Invalid, match="a name needs a character besides"):
        client.create_namespace(Namespace(namespace=name))
    with pytest.raises(Invalid, match="Resource type name"):
        client.create_namespace(Namespace(namespace="N", associations=[Association(name)]))
    created = client.create_namespace(Namespace(namespace="N"))
    with pytest.raises(Invalid):
        client.save_namespace("N", dataclasses.replace(created, namespace=name))
    for call in (client.get_namespace, client.delete_namespace, client.delete_resource_type):
        with pytest.raises(MetadefNotFound):
            call(name)


def test_lost_answer_to_a_namespace_create_is_recognised(client, monkeypatch):
    lost = _lose_answers(client, monkeypatch, "POST")
    created = client.create_namespace(_namespace())
    assert lost and created.version == 1
    assert client.get_namespace(created.namespace) == created


def test_lost_answer_does_not_hide_another_namespace(client, monkeypatch):
    """The retry of a create that failed as a Conflict finds another's namespace: a Conflict still."""
    client.create_namespace(_namespace(description="theirs"))
    _lose_answers(client, monkeypatch, "POST")
    with pytest.raises(Conflict):
        client.create_namespace(_namespace(description="ours"))
    assert client.get_namespace("OS::Test::Thing").description == "theirs"


def test_lost_answer_to_an_invisible_namespaces_conflict(client, monkeypatch):
    with acting_as(Viewer("p2")):
        client.create_namespace(_namespace(owner="p2"))
    _lose_answers(client, monkeypatch, "POST")
    with acting_as(Viewer("p1")), pytest.raises(Conflict):
        client.create_namespace(_namespace(owner="p1"))


def test_a_create_is_resent_only_as_often_as_the_retries_allow(client, monkeypatch):
    lost = _lose_answers(client, monkeypatch, "POST", times=5)
    with pytest.raises(RegistryUnavailable, match="closed the connection"):
        client.create_namespace(_namespace())
    assert len(lost) == client.retries + 1


def test_lost_answer_to_a_namespace_write_is_recognised(client, monkeypatch):
    client.create_namespace(_namespace())
    lost = _lose_answers(client, monkeypatch, "PUT")
    calls = []

    def change(namespace):
        calls.append(1)
        namespace.tags.append(MetadefTag("new"))
        namespace.objects.reverse()  # any order: the registry keeps them by name

    saved = client.update_namespace("OS::Test::Thing", change)
    assert lost and calls == [1], "the change must not run twice"
    assert saved.version == 2 and {t.name for t in saved.tags} == {"fast", "cheap", "new"}


def test_lost_answer_to_a_rename_is_recognised(client, monkeypatch):
    stored = client.create_namespace(_namespace())
    lost = _lose_answers(client, monkeypatch, "PUT")
    saved = client.save_namespace(stored.namespace, dataclasses.replace(stored, namespace="OS::Test::Renamed"))
    assert lost and saved.version == 2 and saved.namespace == "OS::Test::Renamed"
    with pytest.raises(MetadefNotFound):
        client.get_namespace(stored.namespace)


def test_lost_answer_does_not_hide_a_concurrent_write(client, monkeypatch):
    stored = client.create_namespace(_namespace())
    client.save_namespace(stored.namespace, dataclasses.replace(stored, description="theirs"))
    _lose_answers(client, monkeypatch, "PUT")
    with pytest.raises(ConcurrentUpdate):
        client.save_namespace(stored.namespace, dataclasses.replace(stored, description="ours"))
    assert client.get_namespace(stored.namespace).description == "theirs"


def test_lost_answer_does_not_hide_a_rename_onto_a_taken_name(client, monkeypatch):
    stored = client.create_namespace(_namespace())
    client.create_namespace(_namespace("OS::Test::Taken"))
    _lose_answers(client, monkeypatch, "PUT")
    with pytest.raises(Conflict):
        client.save_namespace(stored.namespace, dataclasses.replace(stored, namespace="OS::Test::Taken"))


def test_lost_answer_to_a_namespace_delete(client, monkeypatch):
    client.create_namespace(_namespace())
    lost = _lose_answers(client, monkeypatch, "DELETE")
    client.delete_namespace("OS::Test::Thing")
    assert lost and client.list_namespaces(NamespaceFilters()) == []


def test_users_write_only_their_projects_namespaces(client):
    """The same rules as in keystone mode (test_registry_http_keystone.py), for the signed caller."""
    with acting_as(Viewer("p1", roles=("member",))):
        client.create_namespace(_namespace("Mine"))
        with pytest.raises(Forbidden, match="owned by p2"):
            client.create_namespace(_namespace("Theirs", owner="p2"))
    client.create_namespace(_namespace("Public", owner="p2", visibility="public"))
    with acting_as(Viewer("p1", roles=("member",))):
        assert client.update_namespace("Mine", lambda n: setattr(n, "display_name", "mine")).display_name == "mine"
        with pytest.raises(Forbidden, match="owned by p2"):
            client.update_namespace("Public", lambda n: setattr(n, "display_name", "mine"))
        with pytest.raises(Forbidden, match="owned by p2"):
            client.delete_namespace("Public")
        with pytest.raises(Forbidden, match="Only administrators may remove resource type"):
            client.delete_resource_type("OS::Glance::Image")
    with acting_as(Viewer("p2")):
        with pytest.raises(MetadefNotFound):
            client.delete_namespace("Mine")
    client.delete_namespace("Mine")  # the service
    assert [n.namespace for n in client.list_namespaces(NamespaceFilters())] == ["Public"]


def test_every_metadef_route_is_documented():
    import abbild_registry.app as app

    for route in (
        "GET /v1/metadefs/namespaces",
        "POST /v1/metadefs/namespaces",
        "GET .../namespaces/{name}",
        "PUT .../namespaces/{name}",
        "DELETE .../namespaces/{name}",
        "GET /v1/metadefs/resource_types",
        "DELETE .../resource_types/{name}",
    ):
        assert f"``{route}``" in app.__doc__


_VIEWERS = [None, Viewer("p1"), Viewer("p2"), Viewer(anonymous=True), Viewer(), Viewer("p1", is_admin=True)]


@pytest.mark.parametrize("caller", _VIEWERS, ids=repr)
@pytest.mark.parametrize("asked", _VIEWERS[1:], ids=repr)
def test_an_asked_viewer_only_narrows_the_callers_view(caller, asked):
    from abbild_registry.app import narrowed

    viewer = narrowed(caller, asked)
    for owner in ("p1", "p2", None):
        for visibility in ("public", "private"):
            namespace = Namespace(namespace="N", owner=owner, visibility=visibility)
            both = namespace_visible(namespace, caller) and namespace_visible(namespace, asked)
            assert namespace_visible(namespace, viewer) == both, (owner, visibility)
