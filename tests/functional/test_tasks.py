"""The Tasks API against a real ``abbild serve`` over HTTP: the ``glance`` CLI first
(task-create for the legacy import, task-list, task-show, image-tasks, which
glanceclient offers only once the versions document lists 2.12), then plain HTTP for
every refusal (400, 403, 404, 405), the exact field sets, paging, who sees an image's
tasks, and expiry (GLANCE-API.md section 10)."""

from __future__ import annotations

import datetime
import hashlib
import html
import http.server
import json
import os
import re
import time
import uuid

import pytest
import requests
import sqlalchemy as sa

from tests.functional.clis import executable, run
from tests.functional.helpers import server_config, serving, wait_for, who

# The test's own HTTP server is on loopback, which the web-download guard denies by default.
LOOPBACK = "[os_glance_web_download]\nallowed_networks = 127.0.0.1/32\n"
ISOTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ROW_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
STUB_FIELDS = {"id", "type", "status", "owner", "created_at", "updated_at", "self", "schema"}
FULL_FIELDS = STUB_FIELDS | {"input", "result", "message", "image_id", "user_id", "request_id"}
ROW_FIELDS = {
    "id",
    "image_id",
    "request_id",
    "user_id",
    "type",
    "status",
    "owner",
    "expires_at",
    "created_at",
    "updated_at",
    "deleted_at",
    "deleted",
    "input",
    "result",
    "message",
}
ADMIN = who("admins", "admin", "member", "reader")


@pytest.fixture(scope="module")
def admin_server(server_factory):
    """noauth (every caller an administrator): what the glance CLI talks to."""
    return server_factory("tasks-noauth", server_config(stores=LOOPBACK))


@pytest.fixture(scope="module")
def projects_server(server_factory):
    """trusted-headers: callers of several projects, administrators or not."""
    return server_factory("tasks-projects", server_config(flavor="trusted-headers", stores=LOOPBACK))


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(300_000)


@pytest.fixture(scope="module")
def source(payload):
    """A loopback HTTP server with the image data at /disk.raw."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/disk.raw":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    with serving(Handler) as url:
        yield url + "/disk.raw"


@pytest.fixture
def glance(admin_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path / "home")

    def glance(*args, ok=True):
        return run([executable("glance"), "--os-image-url", admin_server.url, "--os-auth-token", "x", *args], env, ok)

    return glance


def table(stdout: str) -> dict[str, str]:
    """A glance ``Property | Value`` table as a dict."""
    rows = [line.split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[1].strip(): cells[2].strip() for cells in rows[1:]}


def column(stdout: str, name: str) -> list[str]:
    """One column of a glance list table."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| ")]
    index = rows[0].index(name)
    return [row[index] for row in rows[1:]]


def legacy_import(url: str, source: str, headers=None, **properties) -> requests.Response:
    body = {
        "type": "import",
        "input": {
            "import_from": source,
            "import_from_format": "raw",
            "image_properties": {"name": "legacy", "container_format": "bare", **properties},
        },
    }
    return requests.post(f"{url}/v2/tasks", json=body, headers=headers or {}, timeout=10)


def ended(url: str, task_id: str, headers=None) -> dict:
    def done():
        task = requests.get(f"{url}/v2/tasks/{task_id}", headers=headers or {}, timeout=10).json()
        return task if task["status"] in ("success", "failure") else None

    wait_for(done, 60, f"the end of task {task_id}")
    return done()


def web_download(url: str, source: str, project: str) -> tuple[str, dict]:
    """A queued image of *project*, imported from *source* with web-download (the
    interoperable import's task): its id and its task as the Tasks API shows it."""
    body = {"name": "via-import", "disk_format": "raw", "container_format": "bare"}
    resp = requests.post(f"{url}/v2/images", json=body, headers=who(project), timeout=10)
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    resp = requests.post(
        f"{url}/v2/images/{image_id}/import",
        json={"method": {"name": "web-download", "uri": source}},
        headers=who(project),
        timeout=10,
    )
    assert resp.status_code == 202, resp.text

    def task() -> dict:
        [task] = requests.get(f"{url}/v2/images/{image_id}/tasks", headers=who(project), timeout=10).json()["tasks"]
        return task

    wait_for(lambda: task()["status"] == "success", 60, "the import")
    return image_id, task()


def expire(server, task_id: str) -> None:
    """Let the task's time to live run out behind the service's back."""
    engine = sa.create_engine(f"sqlite:///{server.data_dir}/abbild.sqlite")
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE tasks SET expires_at = :t WHERE id = :id"),
                {"t": datetime.datetime(2024, 1, 1), "id": task_id},
            )
    finally:
        engine.dispose()


# -- the glance CLI ----------------------------------------------------------------------------


def test_glance_task_create_imports_the_url(glance, admin_server, source, payload):
    task_input = {
        "import_from": source,
        "import_from_format": "raw",
        "image_properties": {"name": "legacy-import", "container_format": "bare", "os_distro": "debian"},
    }
    created = table(glance("task-create", "--type", "import", "--input", json.dumps(task_input)).stdout)
    assert created["type"] == "import" and created["status"] in ("pending", "processing", "success")
    task = ended(admin_server.url, created["id"])
    assert task["status"] == "success", task
    image_id = task["result"]["image_id"]
    assert task["image_id"] == image_id and task["input"] == task_input and task["message"] == ""

    image = requests.get(f"{admin_server.url}/v2/images/{image_id}", timeout=10).json()
    assert image["status"] == "active" and image["name"] == "legacy-import" and image["os_distro"] == "debian"
    assert (image["disk_format"], image["container_format"]) == ("raw", "bare")
    assert image["checksum"] == hashlib.md5(payload).hexdigest() and image["size"] == len(payload)

    shown = table(glance("task-show", created["id"]).stdout)
    assert shown["status"] == "success" and json.loads(shown["result"]) == {"image_id": image_id}
    assert ISOTIME.match(shown["expires_at"]) and ISOTIME.match(shown["created_at"])

    listing = glance("task-list", "--sort-key", "status", "--sort-dir", "asc", "--type", "import").stdout
    assert created["id"] in column(listing, "ID")
    assert created["id"] not in glance("task-list", "--status", "failure").stdout

    # glanceclient offers image-tasks only when the versions document lists 2.12. Two
    # tasks: the legacy one, and the import engine's own beside it.
    tasks = glance("--verbose", "image-tasks", image_id).stdout
    assert column(tasks, "Image Id") == [image_id, image_id]
    assert column(tasks, "Status") == ["success", "success"]
    assert source in tasks


def test_glance_task_create_with_a_refused_url_is_400(glance, admin_server):
    before = requests.get(f"{admin_server.url}/v2/images", timeout=10).json()["images"]
    bad = {"import_from": "http://10.255.255.1/disk.raw", "import_from_format": "raw", "image_properties": {}}
    proc = glance("task-create", "--type", "import", "--input", json.dumps(bad), ok=False)
    assert proc.returncode != 0 and "does not pass filtering" in proc.stderr + proc.stdout
    # Nothing was created.
    assert requests.get(f"{admin_server.url}/v2/images", timeout=10).json()["images"] == before


def test_a_failed_import_fails_its_task(admin_server, source):
    resp = legacy_import(admin_server.url, source.replace("/disk.raw", "/missing.raw"))
    assert resp.status_code == 201, resp.text
    task = ended(admin_server.url, resp.json()["id"])
    assert task["status"] == "failure" and "missing.raw" in task["message"], task
    assert task["result"] == {"image_id": task["image_id"]}
    image = requests.get(f"{admin_server.url}/v2/images/{task['image_id']}", timeout=10).json()
    assert image["status"] == "queued"


# -- the wire: fields, headers, refusals --------------------------------------------------------


def test_post_answers_201_with_location_and_the_full_task(projects_server, source):
    resp = legacy_import(projects_server.url, source, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    task = resp.json()
    assert resp.headers["Location"].endswith(f"/v2/tasks/{task['id']}")
    assert set(task) == FULL_FIELDS and task["owner"] == "admins" and task["user_id"] == "u-admins"
    assert task["self"] == f"/v2/tasks/{task['id']}" and task["schema"] == "/v2/schemas/task"
    assert task["request_id"] == resp.headers["x-openstack-request-id"]
    done = ended(projects_server.url, task["id"], ADMIN)
    assert set(done) == FULL_FIELDS | {"expires_at"}
    assert all(ISOTIME.match(done[f]) for f in ("created_at", "updated_at", "expires_at"))
    lived = datetime.datetime.fromisoformat(done["expires_at"][:-1]) - datetime.datetime.fromisoformat(
        done["updated_at"][:-1]
    )
    assert lived == datetime.timedelta(hours=48)  # task_time_to_live


def test_list_shows_stubs_with_paging(projects_server, source):
    ids = []
    for _ in range(3):  # one after the other: a project has two background jobs at most
        ids.append(legacy_import(projects_server.url, source, headers=ADMIN).json()["id"])
        task = ended(projects_server.url, ids[-1], ADMIN)
        assert task["status"] == "success", task["message"]
    url = f"{projects_server.url}/v2/tasks"
    params = {"type": "import", "sort_dir": "asc", "limit": "1000"}
    body = requests.get(url, params=params, headers=ADMIN, timeout=10).json()
    assert body["first"] == "/v2/tasks?type=import&sort_dir=asc&limit=1000" and body["schema"] == "/v2/schemas/tasks"
    assert "next" not in body
    assert set(ids) <= {t["id"] for t in body["tasks"]}
    for stub in body["tasks"]:
        assert set(stub) - {"expires_at"} == STUB_FIELDS and stub["type"] == "import"
    seen, path = [], "/v2/tasks?type=import&sort_dir=asc&limit=1"
    while path:
        page = requests.get(projects_server.url + path, headers=ADMIN, timeout=10).json()
        assert len(page["tasks"]) <= 1
        seen += [t["id"] for t in page["tasks"]]
        path = page.get("next")
    assert seen == [t["id"] for t in body["tasks"]]
    succeeded = requests.get(url, params={"status": "success", "limit": "1000"}, headers=ADMIN, timeout=10)
    succeeded = succeeded.json()["tasks"]
    assert set(ids) <= {t["id"] for t in succeeded}
    assert (
        requests.get(url, params={"status": "pending", "type": "location_import"}, headers=ADMIN).json()["tasks"] == []
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort_key": "name"}, "Invalid sort key: name"),
        ({"sort_dir": "up"}, "Invalid sort direction: up"),
        ({"limit": "x"}, "limit param must be an integer"),
        ({"limit": "-1"}, "limit param must be positive"),
        ({"status": "done"}, "Invalid status value: done"),
        ({"type": "export"}, "Invalid type value: export"),
        ({"owner": "p1"}, "Invalid filter: owner"),
        ({"marker": str(uuid.uuid4())}, "Invalid marker"),
    ],
)
def test_bad_list_parameters_are_400(projects_server, params, message):
    resp = requests.get(f"{projects_server.url}/v2/tasks", params=params, headers=ADMIN, timeout=10)
    assert resp.status_code == 400 and message in html.unescape(resp.text), resp.text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": {}}, "Task 'type' is required"),
        ({"type": "import"}, "Task 'input' is required"),
        ({"type": "api_image_import", "input": {}}, "Invalid type value"),
        ({"type": "import", "input": "http://x/"}, "must be a JSON object"),
        ({"type": "import", "input": {"import_from_format": "raw"}}, "'import_from'"),
        ({"type": "import", "input": {"import_from": "http://127.0.0.1/x"}}, "'import_from_format'"),
        (
            {"type": "import", "input": {"import_from": "file:///etc/passwd", "import_from_format": "raw"}},
            "does not pass filtering",
        ),
        (
            {"type": "import", "input": {"import_from": "http://127.0.0.1/x", "import_from_format": "nope"}},
            "disk_format",
        ),
        (
            {
                "type": "import",
                "input": {"import_from": "http://127.0.0.1/x", "import_from_format": "raw", "image_properties": []},
            },
            "image_properties",
        ),
        ({"type": "import", "input": {}, "status": "success"}, "cannot be set"),
    ],
)
def test_bad_task_bodies_are_400(projects_server, body, message):
    resp = requests.post(f"{projects_server.url}/v2/tasks", json=body, headers=ADMIN, timeout=10)
    assert resp.status_code == 400 and message in html.unescape(resp.text), resp.text


def test_the_tasks_api_is_for_administrators(projects_server, source, project):
    task_id = legacy_import(projects_server.url, source, headers=ADMIN).json()["id"]
    for method, path in (("GET", "/v2/tasks"), ("GET", f"/v2/tasks/{task_id}"), ("POST", "/v2/tasks")):
        body = {} if method == "POST" else None
        resp = requests.request(method, projects_server.url + path, json=body, headers=who(project), timeout=10)
        assert resp.status_code == 403 and "tasks_api_access" in resp.text, (method, path, resp.text)
    resp = legacy_import(projects_server.url, source, headers=who(project))
    assert resp.status_code == 403
    ended(projects_server.url, task_id, ADMIN)  # no import left running for the next test


def test_unknown_task_is_404_and_delete_is_405(projects_server, source):
    resp = requests.get(f"{projects_server.url}/v2/tasks/{uuid.uuid4()}", headers=ADMIN, timeout=10)
    assert resp.status_code == 404 and "not found" in resp.text
    task_id = legacy_import(projects_server.url, source, headers=ADMIN).json()["id"]
    resp = requests.delete(f"{projects_server.url}/v2/tasks/{task_id}", headers=ADMIN, timeout=10)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET"
    assert "expires_at" in resp.text
    assert ended(projects_server.url, task_id, ADMIN)["status"] == "success"  # still there


def test_schemas(projects_server):
    task = requests.get(f"{projects_server.url}/v2/schemas/task", timeout=10, headers=ADMIN).json()
    assert task["name"] == "task" and set(task["properties"]) == FULL_FIELDS | {"expires_at"}
    assert task["properties"]["status"]["enum"] == ["pending", "processing", "success", "failure"]
    assert task["properties"]["type"]["enum"] == ["import", "api_image_import", "location_import"]
    tasks = requests.get(f"{projects_server.url}/v2/schemas/tasks", timeout=10, headers=ADMIN).json()
    assert set(tasks["properties"]) == {"tasks", "first", "next", "schema"}
    partial = tasks["properties"]["tasks"]["items"]["properties"]
    assert set(partial) == FULL_FIELDS - {"input", "result", "message"} | {"expires_at"}


# -- an image's tasks (2.12) -----------------------------------------------------------------


def test_image_tasks_are_their_projects(projects_server, source, project):
    image_id, task = web_download(projects_server.url, source, project)
    assert set(task) == ROW_FIELDS
    assert task["type"] == "api_image_import" and task["status"] == "success" and task["owner"] == project
    assert task["input"]["method"] == {"name": "web-download", "uri": source}
    assert task["deleted"] is False and task["deleted_at"] is None and task["image_id"] == image_id
    assert all(ROW_TIME.match(task[f]) for f in ("created_at", "updated_at", "expires_at"))
    url = f"{projects_server.url}/v2/images/{image_id}/tasks"
    # Another project does not see the private image, so not its tasks either.
    other = f"{project}-other"
    assert requests.get(url, headers=who(other), timeout=10).status_code == 404
    assert (
        requests.get(f"{projects_server.url}/v2/images/{uuid.uuid4()}/tasks", timeout=10, headers=ADMIN).status_code
        == 404
    )
    # Public: the image is anyone's to see, its tasks stay its project's.
    resp = requests.patch(
        f"{projects_server.url}/v2/images/{image_id}",
        data=json.dumps([{"op": "replace", "path": "/visibility", "value": "public"}]),
        headers={**ADMIN, "Content-Type": "application/openstack-images-v2.1-json-patch"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert requests.get(url, headers=who(other), timeout=10).json() == {"tasks": []}
    assert [t["id"] for t in requests.get(url, headers=who(project), timeout=10).json()["tasks"]] == [task["id"]]
    assert [t["id"] for t in requests.get(url, headers=ADMIN, timeout=10).json()["tasks"]] == [task["id"]]
    # The administrators' Tasks API shows it in full.
    full = requests.get(f"{projects_server.url}/v2/tasks/{task['id']}", headers=ADMIN, timeout=10).json()
    assert full["image_id"] == image_id and full["owner"] == project


def test_expired_tasks_are_gone(projects_server, source, project):
    image_id, task = web_download(projects_server.url, source, project)
    expire(projects_server, task["id"])
    assert requests.get(f"{projects_server.url}/v2/tasks/{task['id']}", headers=ADMIN, timeout=10).status_code == 404
    listed = requests.get(f"{projects_server.url}/v2/tasks", headers=ADMIN, timeout=10).json()["tasks"]
    assert task["id"] not in {t["id"] for t in listed}
    tasks = requests.get(f"{projects_server.url}/v2/images/{image_id}/tasks", headers=who(project), timeout=10)
    assert tasks.json() == {"tasks": []}


# -- a legacy import whose process dies -----------------------------------------------------


class Slow(http.server.BaseHTTPRequestHandler):
    """Image data that trickles: 40 pieces of 64 KiB, half a second apart."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(40 << 16))
        self.end_headers()
        try:
            for _ in range(40):
                self.wfile.write(os.urandom(1 << 16))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_kill_9_mid_legacy_import_then_restart(make_server, tmp_path):
    """The engine's recovery fails its task on the next start; the legacy task follows
    it once read, everywhere it is shown."""
    data_dir = tmp_path / "data"
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(server_config(stores=LOOPBACK).format(dir=data_dir))
    srv = make_server("--config-file", str(conf), data_dir=str(data_dir)).start()
    with serving(Slow) as base:
        resp = legacy_import(srv.url, f"{base}/disk.raw")
        assert resp.status_code == 201, resp.text
        task_id, image_id = resp.json()["id"], resp.json()["image_id"]
        wait_for(
            lambda: requests.get(f"{srv.url}/v2/tasks/{task_id}", timeout=10).json()["status"] == "processing",
            20,
            "processing",
        )
        srv.kill()
    srv.start()
    listed = requests.get(f"{srv.url}/v2/tasks", params={"type": "import"}, timeout=10).json()["tasks"]
    assert [(t["id"], t["status"]) for t in listed] == [(task_id, "failure")]
    task = requests.get(f"{srv.url}/v2/tasks/{task_id}", timeout=10).json()
    assert task["status"] == "failure" and "interrupted" in task["message"], task
    assert task["result"] == {"image_id": image_id} and "expires_at" in task
    rows = requests.get(f"{srv.url}/v2/images/{image_id}/tasks", timeout=10).json()["tasks"]
    assert sorted((t["type"], t["status"]) for t in rows) == [("api_image_import", "failure"), ("import", "failure")]
    assert requests.get(f"{srv.url}/v2/images/{image_id}", timeout=10).json()["status"] == "queued"


def test_openstacksdk_creates_lists_and_shows_tasks(admin_server, source, payload):
    import openstack

    conn = openstack.connect(auth_type="none", auth={"endpoint": admin_server.url})
    created = conn.image.create_task(
        type="import",
        input={
            "import_from": source,
            "import_from_format": "raw",
            "image_properties": {"name": "sdk-legacy", "container_format": "bare"},
        },
    )
    assert created.type == "import" and created.id
    conn.image.wait_for_task(created, status="success", wait=60)
    task = conn.image.get_task(created.id)
    assert task.status == "success" and task.expires_at and task.owner_id is None  # noauth: no project
    assert created.id in [t.id for t in conn.image.tasks(type="import", status="success")]
    image = conn.image.get_image(task.result["image_id"])
    assert image.status == "active" and image.checksum == hashlib.md5(payload).hexdigest()
    assert conn.image.get_task_schema().properties["status"]["enum"][-1] == "failure"
