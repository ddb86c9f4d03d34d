"""Interoperable import against a real ``abbild serve`` over HTTP: glance-direct (stage, then
import), web-download (the server fetches a URL through the http store's guard) and
copy-image (an active image to more stores), with the real clients (``glance``,
``openstack``, openstacksdk) first and plain HTTP for every refusal; the import lock, a
store that fails, and a kill -9 in the middle of a stage and of an import."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import pathlib
import subprocess
import threading
import time

import openstack
import pytest
import requests

from tests.functional.clis import executable, run
from tests.functional.helpers import serving, wait_for, wait_import_done
from tests.functional.test_clients_cli import OPENSTACK_AUTH

OCTET = {"Content-Type": "application/octet-stream"}
SIZE = 3 * (1 << 20) + 123
DEFAULT_METHODS = ["glance-direct", "web-download", "copy-image"]

MULTI = """
[DEFAULT]
enabled_backends = fast:filesystem, slow:filesystem
default_backend = slow
node_staging_uri = file://{dir}/staging
[database]
connection = sqlite:///{dir}/abbild.sqlite
[fast]
datadir = {dir}/fast
[slow]
datadir = {dir}/slow
[os_glance_web_download]
allowed_networks = 127.0.0.1/32
"""


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture(scope="module")
def multi(server_factory):
    """Two filesystem stores (fast, slow; slow the default); web-download may reach loopback."""
    return server_factory("import-multi", MULTI)


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path / "home")
    return env


def create(url: str, **attrs) -> str:
    body = {"name": "import", "disk_format": "raw", "container_format": "bare", **attrs}
    resp = requests.post(f"{url}/v2/images", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def get(url: str, image_id: str) -> dict:
    resp = requests.get(f"{url}/v2/images/{image_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def stage(url: str, image_id: str, data: bytes) -> requests.Response:
    return requests.put(f"{url}/v2/images/{image_id}/stage", data=data, headers=OCTET, timeout=30)


def import_(url: str, image_id: str, body: dict, **headers) -> requests.Response:
    return requests.post(f"{url}/v2/images/{image_id}/import", json=body, headers=headers, timeout=30)


def wait_status(url: str, image_id: str, status: str, timeout: float = 30) -> dict:
    wait_for(lambda: get(url, image_id)["status"] == status, timeout, f"image {image_id} {status}")
    return get(url, image_id)


def download(url: str, image_id: str, **params) -> bytes:
    resp = requests.get(f"{url}/v2/images/{image_id}/file", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.content


def tasks_of(srv, image_id: str) -> list[dict]:
    """The image's tasks, as GET /v2/images/{id}/tasks shows them."""
    resp = requests.get(f"{srv.url}/v2/images/{image_id}/tasks", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["tasks"]


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``FileHandler.data`` at any path, every ``delay`` seconds a piece."""

    data = b""
    delay = 0.0
    pieces = 1

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        step = max(1, len(self.data) // self.pieces)
        try:
            for start in range(0, len(self.data), step):
                self.wfile.write(self.data[start : start + step])
                self.wfile.flush()
                time.sleep(self.delay)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def run_tty(argv, env) -> subprocess.CompletedProcess:
    """*argv* with a terminal as stdin: glance takes any other stdin for image data."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def handler(data: bytes, delay: float = 0.0, pieces: int = 1) -> type:
    return type("Handler", (FileHandler,), {"data": data, "delay": delay, "pieces": pieces})


# -- discovery ------------------------------------------------------------------------------


def test_discovery_lists_the_enabled_methods(server):
    resp = requests.get(f"{server.url}/v2/info/import", timeout=10)
    assert resp.json()["import-methods"]["value"] == DEFAULT_METHODS
    resp = requests.post(f"{server.url}/v2/images", json={}, timeout=10)
    assert resp.headers["OpenStack-image-import-methods"] == ",".join(DEFAULT_METHODS)
    assert resp.headers["OpenStack-image-store-ids"]
    stores = requests.get(f"{server.url}/v2/info/stores", timeout=10).json()["stores"]
    assert not [s for s in stores if s["id"].startswith("os_glance")]


def test_only_glance_direct_enabled(server_factory, payload):
    srv = server_factory(
        "import-gd-only",
        MULTI.replace("[database]", "enabled_import_methods = glance-direct\n[database]"),
    )
    assert requests.get(f"{srv.url}/v2/info/import", timeout=10).json()["import-methods"]["value"] == ["glance-direct"]
    image_id = create(srv.url)
    resp = import_(srv.url, image_id, {"method": {"name": "web-download", "uri": "http://127.0.0.1:1/x"}})
    assert resp.status_code == 400 and "not available" in resp.text


# -- glance-direct --------------------------------------------------------------------------


def test_glance_cli_create_via_import_glance_direct(server, cli_env, payload, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(payload)
    argv = [executable("glance"), "--os-image-url", server.url, "--os-auth-token", "x", "image-create-via-import"]
    argv += ["--name", "via-import", "--disk-format", "raw", "--container-format", "bare"]
    argv += ["--import-method", "glance-direct"]
    # The data on stdin: glance refuses --file when stdin is no terminal, as under a test.
    with open(path, "rb") as stdin:
        proc = subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=120, stdin=stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [image_id] = [line.split("|")[2].strip() for line in proc.stdout.splitlines() if line.startswith("| id ")]
    image = wait_status(server.url, image_id, "active")
    assert image["size"] == SIZE
    assert image["checksum"] == hashlib.md5(payload).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(payload).hexdigest()
    assert image["os_glance_importing_to_stores"] == "" and image["os_glance_failed_import"] == ""
    assert "os_glance_stage_uri" not in image
    assert download(server.url, image_id) == payload
    [task] = tasks_of(server, image_id)
    assert (task["type"], task["status"], task["input"]["method"]["name"]) == (
        "api_image_import",
        "success",
        "glance-direct",
    )
    assert task["result"]["stores"] and task["message"].startswith("Copied")
    glance = [executable("glance"), "--os-image-url", server.url, "--os-auth-token", "x"]
    shown = run([*glance, "image-tasks", image_id], cli_env).stdout
    assert "success" in shown and task["message"] in shown


def test_openstack_cli_create_with_import(server, cli_env, payload, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(payload)
    argv = [executable("openstack"), *OPENSTACK_AUTH["none"](server.url), "image", "create", "--import"]
    argv += ["--disk-format", "raw", "--container-format", "bare", "--file", str(path), "-f", "json", "osc-import"]
    import json

    image_id = json.loads(run(argv, cli_env).stdout)["id"]
    wait_status(server.url, image_id, "active")
    assert download(server.url, image_id) == payload


def test_openstacksdk_create_image_use_import(server, payload, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(payload)
    conn = openstack.connect(auth_type="none", auth={"endpoint": server.url})
    image = conn.image.create_image(
        name="sdk-import", filename=str(path), disk_format="raw", container_format="bare", use_import=True, wait=True
    )
    image = wait_status(server.url, image.id, "active")
    assert image["checksum"] == hashlib.md5(payload).hexdigest()


def test_stage_then_import_by_hand(server, payload):
    image_id = create(server.url)
    resp = stage(server.url, image_id, payload)
    assert resp.status_code == 204, resp.text
    image = get(server.url, image_id)
    assert (image["status"], image["size"]) == ("uploading", SIZE)
    assert image["os_glance_stage_host"]
    # staged data already: 409
    assert stage(server.url, image_id, b"more").status_code == 409
    resp = import_(server.url, image_id, {"method": {"name": "glance-direct"}})
    assert resp.status_code == 202 and resp.content == b""
    image = wait_import_done(server.url, image_id)
    assert image["status"] == "active" and "os_glance_stage_host" not in image
    assert download(server.url, image_id) == payload


def test_stage_refusals(server):
    image_id = create(server.url)
    resp = requests.put(
        f"{server.url}/v2/images/{image_id}/stage", data=b"x", headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert resp.status_code == 415
    resp = stage(server.url, "00000000-0000-4000-8000-000000000000", b"x")
    assert resp.status_code == 404
    # an active image takes no staged data
    active = create(server.url)
    assert requests.put(f"{server.url}/v2/images/{active}/file", data=b"abc", headers=OCTET).status_code == 204
    resp = stage(server.url, active, b"x")
    assert resp.status_code == 409 and "queued" in resp.text
    assert get(server.url, image_id)["status"] == "queued"


def test_stage_over_the_size_cap_leaves_the_image_queued(server_factory):
    srv = server_factory("import-cap", MULTI.replace("[database]", "image_size_cap = 1000\n[database]"))
    image_id = create(srv.url)
    resp = stage(srv.url, image_id, b"x" * 1001)
    assert resp.status_code == 413
    image = get(srv.url, image_id)
    assert image["status"] == "queued" and image["size"] is None
    assert os.listdir(os.path.join(srv.data_dir, "staging")) == [] or not [
        f for f in os.listdir(os.path.join(srv.data_dir, "staging")) if not f.startswith(".")
    ]
    # and the image can be staged again
    assert stage(srv.url, image_id, b"x" * 10).status_code == 204


def test_stage_404_when_glance_direct_is_off(server_factory):
    srv = server_factory(
        "import-no-gd", MULTI.replace("[database]", "enabled_import_methods = web-download\n[database]")
    )
    image_id = create(srv.url)
    resp = stage(srv.url, image_id, b"x")
    assert resp.status_code == 404 and "glance-direct" in resp.text


# -- request validation (400) and preconditions (409) ---------------------------------------------


@pytest.mark.parametrize(
    "body,headers,needle",
    [
        ({}, {}, "method"),
        ({"method": {}}, {}, "method"),
        ({"method": {"name": "nope"}}, {}, "not available"),
        ({"method": {"name": "glance-direct"}, "all_stores": "yes"}, {}, "all_stores"),
        ({"method": {"name": "glance-direct"}, "all_stores_must_succeed": 1}, {}, "all_stores_must_succeed"),
        ({"method": {"name": "glance-direct"}, "stores": "fast"}, {}, "stores"),
        ({"method": {"name": "glance-direct"}, "stores": ["fast"]}, {"X-Image-Meta-Store": "fast"}, "not both"),
        ({"method": {"name": "glance-direct"}, "stores": ["fast"], "all_stores": True}, {}, "all_stores"),
        ({"method": {"name": "web-download"}}, {}, "uri"),
        ({"method": {"name": "web-download", "uri": "ftp://127.0.0.1/x"}}, {}, "filtering"),
    ],
)
def test_import_request_validation_is_400(multi, body, headers, needle):
    image_id = create(multi.url)
    resp = import_(multi.url, image_id, body, **headers)
    assert resp.status_code == 400, resp.text
    assert needle in resp.text
    assert get(multi.url, image_id)["status"] == "queued"


def test_import_preconditions_are_409(multi, payload):
    url = multi.url
    queued = create(url)
    # glance-direct needs staged data
    resp = import_(url, queued, {"method": {"name": "glance-direct"}})
    assert resp.status_code == 409 and "stage" in resp.text
    # copy-image needs an active image
    resp = import_(url, queued, {"method": {"name": "copy-image"}, "stores": ["fast"]})
    assert resp.status_code == 409 and "active" in resp.text
    # formats must be set
    bare = requests.post(f"{url}/v2/images", json={"name": "noformats"}, timeout=10).json()["id"]
    assert stage(url, bare, b"abc").status_code == 204
    resp = import_(url, bare, {"method": {"name": "glance-direct"}})
    assert resp.status_code == 409 and "disk_format" in resp.text or "container_format" in resp.text
    # unknown store: 409
    staged = create(url)
    assert stage(url, staged, b"abc").status_code == 204
    resp = import_(url, staged, {"method": {"name": "glance-direct"}, "stores": ["nowhere"]})
    assert resp.status_code == 409 and "nowhere" in resp.text
    resp = import_(url, staged, {"method": {"name": "glance-direct"}}, **{"X-Image-Meta-Store": "nowhere"})
    assert resp.status_code == 409
    assert get(url, staged)["status"] == "uploading"  # nothing changed
    # web-download of an image that is not queued
    resp = import_(url, staged, {"method": {"name": "web-download", "uri": "http://127.0.0.1:1/x"}})
    assert resp.status_code == 409
    # an unknown image: 404
    resp = import_(url, "00000000-0000-4000-8000-000000000000", {"method": {"name": "glance-direct"}})
    assert resp.status_code == 404


def test_glance_direct_to_a_chosen_store_with_the_header(multi, payload):
    image_id = create(multi.url)
    assert stage(multi.url, image_id, payload).status_code == 204
    resp = import_(multi.url, image_id, {"method": {"name": "glance-direct"}}, **{"X-Image-Meta-Store": "fast"})
    assert resp.status_code == 202, resp.text
    image = wait_import_done(multi.url, image_id)
    assert (image["status"], image["stores"]) == ("active", "fast")
    assert os.path.exists(os.path.join(multi.data_dir, "fast", image_id))
    assert not os.path.exists(os.path.join(multi.data_dir, "staging", image_id))


# -- web-download ---------------------------------------------------------------------------


def test_glance_cli_web_download(multi, cli_env, payload):
    with serving(handler(payload)) as base:
        proc = run_tty(
            [
                executable("glance"),
                "--os-image-url",
                multi.url,
                "--os-auth-token",
                "x",
                "image-create-via-import",
                "--name",
                "web",
                "--disk-format",
                "raw",
                "--container-format",
                "bare",
                "--import-method",
                "web-download",
                "--uri",
                f"{base}/disk.raw",
            ],
            cli_env,
        )
        [image_id] = [line.split("|")[2].strip() for line in proc.stdout.splitlines() if line.startswith("| id ")]
        image = wait_status(multi.url, image_id, "active")
    assert image["checksum"] == hashlib.md5(payload).hexdigest()
    assert image["stores"] == "slow"
    assert download(multi.url, image_id) == payload
    assert not os.path.exists(os.path.join(multi.data_dir, "staging", image_id))


def test_web_download_to_every_store(multi, payload):
    image_id = create(multi.url)
    with serving(handler(payload)) as base:
        resp = import_(
            multi.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}, "all_stores": True}
        )
        assert resp.status_code == 202, resp.text
        image = wait_import_done(multi.url, image_id)
    assert image["status"] == "active"
    assert sorted(image["stores"].split(",")) == ["fast", "slow"]
    for store in ("fast", "slow"):
        assert download(multi.url, image_id, prefer=store) == payload


def test_default_config_refuses_loopback_urls(server, payload):
    image_id = create(server.url)
    with serving(handler(payload)) as base:
        resp = import_(server.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}})
    assert resp.status_code == 400
    assert "does not pass filtering" in resp.text and "127.0.0" not in resp.text.split("filtering:")[1].split(" ")[2:]
    assert get(server.url, image_id)["status"] == "queued"


def test_web_download_failure_returns_the_image_to_queued(multi):
    class Missing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    image_id = create(multi.url)
    with serving(Missing) as base:
        assert import_(multi.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}}).status_code == 202
        image = wait_import_done(multi.url, image_id)
    assert image["status"] == "queued"
    [task] = tasks_of(multi, image_id)
    assert task["status"] == "failure" and task["message"]
    assert [f for f in os.listdir(os.path.join(multi.data_dir, "slow")) if f.startswith(image_id)] == []


def test_web_download_over_the_size_cap(server_factory, payload):
    srv = server_factory("import-web-cap", MULTI.replace("[database]", "image_size_cap = 100000\n[database]"))
    image_id = create(srv.url)
    with serving(handler(payload)) as base:
        assert import_(srv.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}}).status_code == 202
        image = wait_import_done(srv.url, image_id)
    assert image["status"] == "queued"
    [task] = tasks_of(srv, image_id)
    assert task["status"] == "failure" and "image_size_cap" in task["message"]


# -- the import lock ------------------------------------------------------------------------------


def test_a_second_import_meets_the_lock(multi, payload):
    image_id = create(multi.url)
    with serving(handler(payload, delay=0.3, pieces=10)) as base:
        body = {"method": {"name": "web-download", "uri": f"{base}/slow"}}
        assert import_(multi.url, image_id, body).status_code == 202
        wait_for(lambda: get(multi.url, image_id)["status"] == "importing", 10, "importing")
        resp = import_(multi.url, image_id, body)
        assert resp.status_code == 409
        assert "prior operation is still in progress" in resp.text or "importing" in resp.text
        image = wait_import_done(multi.url, image_id)
    assert image["status"] == "active"
    assert download(multi.url, image_id) == payload


def test_reserved_properties_cannot_be_set(multi):
    image_id = create(multi.url)
    resp = requests.patch(
        f"{multi.url}/v2/images/{image_id}",
        json=[{"op": "add", "path": "/os_glance_import_task", "value": "mine"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        timeout=10,
    )
    assert resp.status_code == 403
    resp = requests.post(f"{multi.url}/v2/images", json={"os_glance_importing_to_stores": "fast"}, timeout=10)
    assert resp.status_code == 403


# -- copy-image -------------------------------------------------------------------------------


def _active_in(srv, store: str, data: bytes) -> str:
    image_id = create(srv.url)
    resp = requests.put(
        f"{srv.url}/v2/images/{image_id}/file", data=data, headers={**OCTET, "X-Image-Meta-Store": store}, timeout=30
    )
    assert resp.status_code == 204, resp.text
    return image_id


def test_glance_cli_copy_image_to_stores(multi, cli_env, payload):
    image_id = _active_in(multi, "slow", payload)
    glance = [executable("glance"), "--os-image-url", multi.url, "--os-auth-token", "x"]
    run([*glance, "image-import", image_id, "--import-method", "copy-image", "--stores", "fast"], cli_env)
    wait_for(lambda: sorted(get(multi.url, image_id)["stores"].split(",")) == ["fast", "slow"], 30, "the copy")
    image = wait_import_done(multi.url, image_id)
    assert image["status"] == "active" and image["os_glance_failed_import"] == ""
    assert download(multi.url, image_id, prefer="fast") == payload
    # to a store that has it: 400
    resp = import_(multi.url, image_id, {"method": {"name": "copy-image"}, "stores": ["fast"]})
    assert resp.status_code == 400 and "already" in resp.text
    # all_stores drops those that have it; none left: 202 and nothing to do
    resp = import_(multi.url, image_id, {"method": {"name": "copy-image"}, "all_stores": True})
    assert resp.status_code == 202
    assert get(multi.url, image_id).get("os_glance_import_task") in (None, "")
    [task] = tasks_of(multi, image_id)  # the copy's only
    assert task["status"] == "success" and task["result"]["stores"] == ["fast"]


def test_glance_cli_copy_image_all_stores(multi, cli_env, payload):
    image_id = _active_in(multi, "fast", payload)
    glance = [executable("glance"), "--os-image-url", multi.url, "--os-auth-token", "x"]
    run([*glance, "image-import", image_id, "--import-method", "copy-image", "--all-stores", "true"], cli_env)
    wait_for(lambda: sorted(get(multi.url, image_id)["stores"].split(",")) == ["fast", "slow"], 30, "the copy")
    assert download(multi.url, image_id, prefer="slow") == payload


# -- a store that fails ---------------------------------------------------------------------------


BROKEN = """
[DEFAULT]
enabled_backends = good:filesystem, bad:filesystem
default_backend = good
[database]
connection = sqlite:///{dir}/abbild.sqlite
[good]
datadir = {dir}/good
[bad]
datadir = {dir}/bad
"""


@pytest.fixture
def broken(server_factory):
    """Two stores; the data directory of ``bad`` is gone once the server runs, so every
    write there fails."""
    srv = server_factory("import-broken", BROKEN)
    import shutil

    shutil.rmtree(os.path.join(srv.data_dir, "bad"))
    return srv


def test_all_stores_must_succeed_false_with_a_failing_store(broken, payload):
    image_id = create(broken.url)
    assert stage(broken.url, image_id, payload).status_code == 204
    body = {"method": {"name": "glance-direct"}, "stores": ["bad", "good"], "all_stores_must_succeed": False}
    assert import_(broken.url, image_id, body).status_code == 202
    image = wait_import_done(broken.url, image_id)
    assert image["status"] == "active"
    assert image["stores"] == "good"
    assert image["os_glance_failed_import"] == "bad"
    assert image["os_glance_importing_to_stores"] == ""
    assert download(broken.url, image_id) == payload
    [task] = tasks_of(broken, image_id)
    assert task["status"] == "success" and task["result"]["failed_stores"] == ["bad"]


def test_all_stores_must_succeed_with_a_failing_store_keeps_the_stage(broken, payload):
    image_id = create(broken.url)
    assert stage(broken.url, image_id, payload).status_code == 204
    body = {"method": {"name": "glance-direct"}, "stores": ["good", "bad"]}
    assert import_(broken.url, image_id, body).status_code == 202
    image = wait_import_done(broken.url, image_id)
    assert image["status"] == "uploading"  # staged data kept: the import can be tried again
    assert "bad" in image["os_glance_failed_import"]
    assert image["checksum"] is None and image.get("stores") is None
    assert not os.path.exists(os.path.join(broken.data_dir, "good", image_id))  # no orphaned data
    [task] = tasks_of(broken, image_id)
    assert task["status"] == "failure"
    # again, to the good store only
    assert import_(broken.url, image_id, {"method": {"name": "glance-direct"}, "stores": ["good"]}).status_code == 202
    image = wait_import_done(broken.url, image_id)
    assert image["status"] == "active" and download(broken.url, image_id) == payload


# -- kill -9 --------------------------------------------------------------------------------------


def _slow_stage(url: str, image_id: str, started: threading.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("PUT", f"/v2/images/{image_id}/stage")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(100 << 20))
    conn.endheaders()
    block = os.urandom(1 << 20)
    try:
        for _ in range(4):
            conn.send(block)
        started.set()
        while True:
            time.sleep(0.05)
            conn.send(block[:1024])
    except OSError:
        pass
    finally:
        started.set()
        conn.close()


def test_kill_9_mid_stage_then_restart(make_server, tmp_path):
    data_dir = tmp_path / "data"
    srv = make_server(data_dir=str(data_dir)).start()
    image_id = create(srv.url)
    started = threading.Event()
    client = threading.Thread(target=_slow_stage, args=(srv.url, image_id, started), daemon=True)
    client.start()
    assert started.wait(30)
    wait_for(lambda: get(srv.url, image_id)["status"] == "uploading", 10, "uploading")
    srv.kill()
    client.join(30)
    srv.start()
    image = get(srv.url, image_id)
    assert image["status"] == "queued" and image["size"] is None
    staging = data_dir / "staging"
    assert [f for f in os.listdir(staging) if not f.startswith(".work")] == []
    assert stage(srv.url, image_id, b"again").status_code == 204


def test_kill_9_mid_web_download_then_restart(make_server, tmp_path, payload):
    data_dir = tmp_path / "data"
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(MULTI.format(dir=data_dir))
    srv = make_server("--config-file", str(conf), data_dir=str(data_dir)).start()
    image_id = create(srv.url)
    with serving(handler(payload, delay=0.5, pieces=40)) as base:
        assert import_(srv.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}}).status_code == 202
        wait_for(lambda: get(srv.url, image_id)["status"] == "importing", 10, "importing")
        time.sleep(1)  # some data in staging
        srv.kill()
    srv.start()
    image = get(srv.url, image_id)
    assert image["status"] == "queued"
    assert not image.get("os_glance_import_task")
    [task] = tasks_of(srv, image_id)
    assert task["status"] == "failure" and "interrupted" in task["message"]
    for sub in ("staging", "fast", "slow"):
        path = pathlib.Path(data_dir / sub)
        assert not path.exists() or [f for f in os.listdir(path) if image_id in f] == []
    # and it can be imported again
    with serving(handler(payload)) as base:
        assert import_(srv.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}}).status_code == 202
        assert wait_import_done(srv.url, image_id)["status"] == "active"


# -- two nodes, each with its own staging area ------------------------------------------------------


NODE = """
[DEFAULT]
enabled_backends = shared:filesystem
default_backend = shared
node_staging_uri = file://{dir}/staging-{name}
worker_self_reference_url = {url}
[database]
connection = sqlite:///{dir}/abbild.sqlite
[shared]
datadir = {dir}/images
"""


@pytest.fixture
def two_nodes(tmp_path):
    """Two servers sharing the database and the store, each staging on its own disk."""
    from tests.functional.conftest import Server

    nodes = []
    for name in ("a", "b"):
        conf = tmp_path / f"node-{name}.conf"
        node = Server(tmp_path, "--config-file", str(conf))
        conf.write_text(NODE.format(dir=tmp_path, name=name, url=node.url))
        nodes.append(node)
    try:
        yield [node.start() for node in nodes]
    finally:
        for node in nodes:
            node.stop()


def test_glance_direct_import_is_passed_on_to_the_node_that_staged(two_nodes, payload, tmp_path):
    a, b = two_nodes
    image_id = create(a.url)
    assert stage(a.url, image_id, payload).status_code == 204
    assert get(b.url, image_id)["os_glance_stage_host"] == a.url
    assert os.path.exists(tmp_path / "staging-a" / image_id)
    resp = import_(b.url, image_id, {"method": {"name": "glance-direct"}})
    assert resp.status_code == 202, resp.text
    image = wait_import_done(b.url, image_id)
    assert image["status"] == "active" and download(b.url, image_id) == payload
    assert not os.path.exists(tmp_path / "staging-a" / image_id)
    # staged on a node that is down: 504, and the image stays staged
    other = create(a.url)
    assert stage(a.url, other, payload).status_code == 204
    a.stop()
    resp = import_(b.url, other, {"method": {"name": "glance-direct"}})
    assert resp.status_code == 504 and a.url in resp.text
    assert get(b.url, other)["status"] == "uploading"


def test_glance_filter_options_apply_to_web_download(server_factory, payload):
    """Glance's [import_filtering_opts] names set the web-download guard's options."""
    srv = server_factory("import-glance-filter", MULTI + "[import_filtering_opts]\nallowed_ports = 1\n")
    image_id = create(srv.url)
    with serving(handler(payload)) as base:
        resp = import_(srv.url, image_id, {"method": {"name": "web-download", "uri": f"{base}/x"}})
    assert resp.status_code == 400 and "does not pass filtering" in resp.text


def test_copy_image_to_a_failing_store_is_recorded(broken, payload):
    image_id = create(broken.url)
    resp = requests.put(f"{broken.url}/v2/images/{image_id}/file", data=payload, headers=OCTET, timeout=30)
    assert resp.status_code == 204
    assert import_(broken.url, image_id, {"method": {"name": "copy-image"}, "stores": ["bad"]}).status_code == 202
    image = wait_import_done(broken.url, image_id)
    assert (image["status"], image["stores"]) == ("active", "good")  # never changes status
    assert image["os_glance_failed_import"] == "bad" and image["os_glance_importing_to_stores"] == ""
    [task] = tasks_of(broken, image_id)
    assert task["status"] == "failure" and task["message"]
    assert download(broken.url, image_id) == payload


# -- who may import ---------------------------------------------------------------------------------


def test_policies_of_stage_and_import(server_factory, payload):
    from tests.functional.helpers import server_config, who

    srv = server_factory(
        "import-policy",
        server_config(
            flavor="trusted-headers", extra_backends="more:filesystem", stores="[more]\ndatadir = {dir}/more\n"
        ),
    )
    owner, stranger, admin = who("p-owner"), who("p-other"), who("p-admin", "admin", "member", "reader")
    resp = requests.post(
        f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=owner, timeout=10
    )
    image_id = resp.json()["id"]
    # another project does not even see it
    resp = requests.put(f"{srv.url}/v2/images/{image_id}/stage", data=b"x", headers={**OCTET, **stranger})
    assert resp.status_code == 404
    # the owner stages and imports
    resp = requests.put(f"{srv.url}/v2/images/{image_id}/stage", data=payload, headers={**OCTET, **owner})
    assert resp.status_code == 204, resp.text
    usage = requests.get(f"{srv.url}/v2/info/usage", headers=owner, timeout=10).json()["usage"]
    assert usage["image_stage_total"]["usage"] == SIZE >> 20  # MiB
    usage = requests.get(f"{srv.url}/v2/info/usage", headers=stranger, timeout=10).json()["usage"]
    assert usage["image_stage_total"]["usage"] == 0
    resp = requests.post(
        f"{srv.url}/v2/images/{image_id}/import", json={"method": {"name": "glance-direct"}}, headers=owner
    )
    assert resp.status_code == 202, resp.text
    wait_for(lambda: requests.get(f"{srv.url}/v2/images/{image_id}", headers=owner).json()["status"] == "active")
    # the task lets go of the image just after it went active; until then another import gets 409
    wait_for(
        lambda: not requests.get(f"{srv.url}/v2/images/{image_id}", headers=owner).json().get("os_glance_import_task")
    )
    # copy-image is for administrators
    body = {"method": {"name": "copy-image"}, "stores": ["more"]}
    resp = requests.post(f"{srv.url}/v2/images/{image_id}/import", json=body, headers=owner)
    assert resp.status_code == 403 and "copy_image" in resp.text
    resp = requests.post(f"{srv.url}/v2/images/{image_id}/import", json=body, headers=admin)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: "more" in requests.get(f"{srv.url}/v2/images/{image_id}", headers=owner).json()["stores"])


S3_STAGING = """
[os_glance_staging_store]
driver = s3
endpoint_url = {endpoint}
access_key = {access}
secret_key = {secret}
bucket = {bucket}
create_bucket = true
"""


@pytest.mark.backend("ceph")
def test_shared_staging_on_s3_needs_no_passing_on(tmp_path, payload):
    """Staging in an S3 bucket (Ceph's radosgw) both nodes reach: the node that imports
    reads the staged data itself, even with the staging node down."""
    import uuid

    from tests.functional.conftest import Server
    from tests.functional.stores import _env_file

    env = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_RGW_ENDPOINT")
    staging = S3_STAGING.format(
        endpoint=env["CEPH_RGW_ENDPOINT"],
        access=env["CEPH_S3_ACCESS_KEY"],
        secret=env["CEPH_S3_SECRET_KEY"],
        bucket=f"abbild-staging-{uuid.uuid4().hex[:8]}",
    )
    nodes = []
    try:
        for name in ("a", "b"):
            conf = tmp_path / f"node-{name}.conf"
            node = Server(tmp_path, "--config-file", str(conf))
            conf.write_text(NODE.format(dir=tmp_path, name=name, url=node.url) + staging)
            nodes.append(node)
        a, b = (node.start() for node in nodes)
        image_id = create(a.url)
        assert stage(a.url, image_id, payload).status_code == 204
        a.stop()
        assert import_(b.url, image_id, {"method": {"name": "glance-direct"}}).status_code == 202
        image = wait_import_done(b.url, image_id)
        assert image["status"] == "active" and download(b.url, image_id) == payload
        assert not os.path.exists(tmp_path / "staging-a")  # nothing staged on a local disk
    finally:
        for node in nodes:
            node.stop()


class Tarpit:
    """A TCP server on loopback that accepts connections and never answers: a store
    behind it stalls every request (a real network fault, not a mock)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
        self.sock.close()
        for conn in self.conns:
            conn.close()
        self.thread.join(5)


def test_kill_9_mid_glance_direct_import_then_restart(make_server, tmp_path, payload):
    """The import hangs writing to a stalled store; after a kill -9 and a restart the
    image is staged again (uploading, its data kept), the task failed, and the import
    can be tried again to another store."""
    tarpit = Tarpit()
    data_dir = tmp_path / "data"
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(
        f"""
[DEFAULT]
enabled_backends = local:filesystem, stalled:s3
default_backend = local
node_staging_uri = file://{data_dir}/staging
[database]
connection = sqlite:///{data_dir}/abbild.sqlite
[local]
datadir = {data_dir}/images
[stalled]
endpoint_url = http://127.0.0.1:{tarpit.port}
bucket = stalled
access_key = nobody
secret_key = nothing
read_timeout = 20
max_attempts = 1
"""
    )
    try:
        srv = make_server("--config-file", str(conf), data_dir=str(data_dir)).start()
        image_id = create(srv.url)
        assert stage(srv.url, image_id, payload).status_code == 204
        body = {"method": {"name": "glance-direct"}, "stores": ["stalled"]}
        assert import_(srv.url, image_id, body).status_code == 202
        wait_for(lambda: get(srv.url, image_id)["status"] == "importing", 10, "importing")
        wait_for(lambda: tarpit.conns, 10, "the store's request")
        srv.kill()
    finally:
        tarpit.close()  # down now: recovery's cleanup there fails fast, and is only logged
    srv.start()
    image = get(srv.url, image_id)
    assert image["status"] == "uploading" and image["size"] == SIZE
    assert not image.get("os_glance_import_task") and image["os_glance_importing_to_stores"] == ""
    [task] = tasks_of(srv, image_id)
    assert task["status"] == "failure" and "interrupted" in task["message"]
    assert os.path.exists(data_dir / "staging" / image_id)
    assert import_(srv.url, image_id, {"method": {"name": "glance-direct"}, "stores": ["local"]}).status_code == 202
    image = wait_import_done(srv.url, image_id)
    assert image["status"] == "active" and download(srv.url, image_id) == payload
