"""Images registered by URL: the http store, the legacy PATCH location API (```glance
location-add``, ``location-delete``), API 2.17's ``POST/GET .../locations``,
``?prefer=`` between stores, and the guard against server-side request forgery."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import subprocess
import time

import pytest
import requests

from tests.functional.clis import executable
from tests.functional.helpers import server_config, serving, who

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}
PAYLOAD = os.urandom(3 << 20)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at every path, with HEAD and single Range support; counts GETs."""

    gets: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, body: bool) -> None:
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        start, end = 0, len(PAYLOAD) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), int(m.group(2) or end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.gets.append(self.path)
            self.wfile.write(PAYLOAD[start : end + 1])

    def do_HEAD(self):
        self._send(False)

    def do_GET(self):
        self._send(True)


@pytest.fixture(scope="module")
def web():
    with serving(_Handler) as url:
        yield url


# The test's own server runs on loopback, which the guard denies by default.
WEB_STORE = "[web]\nallowed_networks = 127.0.0.1/32\n"


@pytest.fixture(scope="module")
def url(server_factory, web):
    config = server_config(
        flavor="trusted-headers", default="show_multiple_locations = true", extra_backends="web:http", stores=WEB_STORE
    )
    return server_factory("locations", config).url


def new_image(url, headers):
    resp = requests.post(f"{url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def add_location(url, image_id, headers, location_url, **extra):
    change = {"op": "add", "path": "/locations/-", "value": {"url": location_url, "metadata": {}, **extra}}
    return requests.patch(f"{url}/v2/images/{image_id}", json=[change], headers={**headers, **PATCH})


def test_location_added_by_patch_activates_and_serves_the_data(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    resp = add_location(url, image_id, headers, f"{web}/cirros.img")
    assert resp.status_code == 200, resp.text
    image = resp.json()
    assert image["status"] == "active" and image["size"] == len(PAYLOAD)
    assert image["locations"] == [{"url": f"{web}/cirros.img", "metadata": {"store": "web"}}]
    data = requests.get(f"{url}/v2/images/{image_id}/file", headers=headers)
    assert data.status_code == 200 and data.content == PAYLOAD
    part = requests.get(f"{url}/v2/images/{image_id}/file", headers={**headers, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == PAYLOAD[10:20]


@pytest.fixture(scope="module")
def noauth_url(server_factory):
    config = server_config(default="show_multiple_locations = true", extra_backends="web:http", stores=WEB_STORE)
    return server_factory("locations-noauth", config).url


def test_glance_cli_location_commands_on_a_noauth_server(noauth_url, web, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)
    glance = [executable("glance"), "--os-image-url", noauth_url, "--os-auth-token", "x"]

    def run(*args):
        proc = subprocess.run(glance + list(args), env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # (glance image-create would upload its stdin, which is not a terminal here)
    image_id = new_image(noauth_url, {})
    out = run("location-add", image_id, "--url", f"{web}/by-url.img")
    assert re.search(r"\| status\s+\| active", out) and re.search(rf"\| size\s+\| {len(PAYLOAD)}", out)
    run("location-add", image_id, "--url", f"{web}/mirror.img")
    shown = requests.get(f"{noauth_url}/v2/images/{image_id}").json()
    assert [loc["url"] for loc in shown["locations"]] == [f"{web}/by-url.img", f"{web}/mirror.img"]
    run("location-delete", image_id, "--url", f"{web}/by-url.img")
    shown = requests.get(f"{noauth_url}/v2/images/{image_id}").json()
    assert [loc["url"] for loc in shown["locations"]] == [f"{web}/mirror.img"]
    out = tmp_path / "back.img"
    run("image-download", image_id, "--file", str(out))
    assert out.read_bytes() == PAYLOAD


def test_last_location_cannot_be_removed(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    assert add_location(url, image_id, headers, f"{web}/a.img").status_code == 200
    resp = requests.patch(
        f"{url}/v2/images/{image_id}",
        json=[{"op": "remove", "path": "/locations/0"}],
        headers={**who(project, "admin"), **PATCH},
    )
    assert resp.status_code == 403 and "last location" in resp.text


def test_location_with_another_size_conflicts(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    requests.put(f"{url}/v2/images/{image_id}/file", data=b"other data", headers={**headers, **OCTET})
    resp = add_location(url, image_id, headers, f"{web}/a.img")
    assert resp.status_code == 409 and "bytes" in resp.text


@pytest.mark.parametrize(
    "location, refusal",
    [
        ("http://169.254.169.254/latest/meta-data/", "Location refused"),
        ("http://127.0.0.2:9/x", "Location refused"),
        ("http://user:secret@example.invalid/x", "Location refused"),
        ("file:///etc/passwd", "No store here may read file URLs"),
        ("rbd://fsid/pool/image/snap", "No store here may read rbd URLs"),
    ],
)
def test_urls_a_user_may_not_register_are_400(url, project, location, refusal):
    image_id = new_image(url, who(project))
    resp = add_location(url, image_id, who(project), location)
    assert resp.status_code == 400, resp.text
    # Users learn that the URL was refused, not what the service's network looks like.
    assert refusal in resp.text
    assert "secret" not in resp.text and "denied network" not in resp.text and "127.0.0" not in resp.text
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(project)).json()["status"] == "queued"


def test_location_that_does_not_exist_is_404_and_image_stays_queued(url, web, project):
    image_id = new_image(url, who(project))
    resp = add_location(url, image_id, who(project), f"{web}/missing.img")
    assert resp.status_code == 404
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(project)).json()["status"] == "queued"


def _wait_for(url, image_id, headers, status, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = requests.get(f"{url}/v2/images/{image_id}", headers=headers).json()
        if image["status"] == status:
            return image
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} is {image['status']}, not {status}")


def test_post_locations_hashes_in_the_background(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    body = {
        "url": f"{web}/posted.img",
        "validation_data": {"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(PAYLOAD).hexdigest()},
    }
    resp = requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    image = _wait_for(url, image_id, headers, "active")
    assert image["size"] == len(PAYLOAD)
    assert image["os_hash_algo"] == "sha256" and image["os_hash_value"] == body["validation_data"]["os_hash_value"]
    assert image["checksum"] == hashlib.md5(PAYLOAD).hexdigest()
    # Locations are for services: a project member may read the image, not its locations.
    assert requests.get(f"{url}/v2/images/{image_id}/locations", headers=headers).status_code == 403
    service = who(project, "service")
    locations = requests.get(f"{url}/v2/images/{image_id}/locations", headers=service)
    assert locations.status_code == 200 and locations.json()[0]["url"] == body["url"]
    again = requests.post(f"{url}/v2/images/{image_id}/locations", json={"url": body["url"]}, headers=headers)
    assert again.status_code == 409  # only queued images


def test_glanceclient_uses_the_location_api_of_2_17(url, web, project):
    """glanceclient switches its 2.17 calls on by the versions document."""
    from glanceclient import Client
    from keystoneauth1 import session

    # Trusted headers through the session: glanceclient's own %-encodes the roles' commas.
    service = who(project, "member", "reader", "service")
    glance = Client("2", session=session.Session(additional_headers=service), endpoint_override=url)
    image = glance.images.create(disk_format="raw", container_format="bare")
    digest = hashlib.sha512(PAYLOAD).hexdigest()
    glance.images.add_image_location(
        image.id, f"{web}/v217.img", validation_data={"os_hash_algo": "sha512", "os_hash_value": digest}
    )
    image = _wait_for(url, image.id, service, "active")
    assert image["os_hash_value"] == digest
    locations = glance.images.get_image_locations(image["id"])
    assert [loc["url"] for loc in locations] == [f"{web}/v217.img"]


def test_post_locations_with_wrong_hash_leaves_the_image_queued(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    body = {"url": f"{web}/bad.img", "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "0" * 64}}
    assert requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=headers).status_code == 202
    time.sleep(1)
    _wait_for(url, image_id, headers, "queued")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": ""},
        {"url": "http://x", "extra": 1},
        {"url": "http://x", "validation_data": {"os_hash_algo": "sha256"}},
        {"url": "http://x", "validation_data": {"os_hash_algo": "crc32", "os_hash_value": "00"}},
    ],
)
def test_post_locations_bad_body_is_400(url, project, body):
    image_id = new_image(url, who(project))
    resp = requests.post(f"{url}/v2/images/{image_id}/locations", json=body, headers=who(project))
    assert resp.status_code == 400, resp.text


def test_prefer_picks_the_store_to_read_from(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    assert (
        requests.put(f"{url}/v2/images/{image_id}/file", data=PAYLOAD, headers={**headers, **OCTET}).status_code == 204
    )
    path = f"/preferred-{image_id}.img"
    assert add_location(url, image_id, headers, web + path).status_code == 200
    assert _Handler.gets.count(path) == 1  # read once, to check it holds the image's data
    assert requests.get(f"{url}/v2/images/{image_id}/file", headers=headers).content == PAYLOAD
    assert _Handler.gets.count(path) == 1  # the local store comes first by default
    resp = requests.get(f"{url}/v2/images/{image_id}/file", params={"prefer": "web"}, headers=headers)
    assert resp.content == PAYLOAD and _Handler.gets.count(path) == 2
    bad = requests.get(f"{url}/v2/images/{image_id}/file", params={"prefer": "nowhere"}, headers=headers)
    assert bad.status_code == 400 and "nowhere" in bad.text


def test_a_service_registers_only_files_inside_a_store(noauth_url, server_factory):
    """noauth callers are administrators, whom the policy treats as services: they may
    register file:// locations, but only of files directly in a store's datadir."""
    image_id = new_image(noauth_url, {})
    resp = add_location(noauth_url, image_id, {}, "file:///etc/passwd")
    assert resp.status_code == 400 and "Location refused" in resp.text
    donor = new_image(noauth_url, {})
    assert requests.put(f"{noauth_url}/v2/images/{donor}/file", data=b"donor data", headers=OCTET).status_code == 204
    [location] = requests.get(f"{noauth_url}/v2/images/{donor}").json()["locations"]
    resp = add_location(noauth_url, image_id, {}, location["url"] + "/../../../../etc/passwd")
    assert resp.status_code == 400
    resp = add_location(noauth_url, image_id, {}, location["url"])
    assert resp.status_code == 200 and resp.json()["size"] == len(b"donor data")


# -- what users may point an image at -------------------------------------------------------


@pytest.fixture
def read_only_store(server_factory, tmp_path):
    """A server whose store ``archive`` is a filesystem store that cannot be written (an
    NFS export that came back read-only, say), holding another project's image data.
    chattr +i makes the directory unwritable even for root."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "victim.img").write_bytes(b"the victim's private data")
    if subprocess.run(["chattr", "+i", str(archive)], capture_output=True).returncode != 0:
        from abbild.testing.backends import backend_unavailable

        backend_unavailable("chattr +i is not supported here (needed for a read-only datadir as root)")
    try:
        srv = server_factory(
            "read-only-store",
            server_config(
                flavor="trusted-headers",
                default="show_multiple_locations = true",
                extra_backends="archive:filesystem",
                stores=f"[archive]\ndatadir = {archive}\n",
            ),
        )
        detail = requests.get(f"{srv.url}/v2/info/stores/detail", headers=who("ops", "admin")).json()
        assert {s["id"]: s.get("read-only") for s in detail["stores"]}["archive"] == "true"
        yield srv.url, f"file://{archive}"
    finally:
        subprocess.run(["chattr", "-i", str(archive)], check=True)


def test_users_cannot_register_files_of_a_read_only_store(read_only_store, project):
    url, archive = read_only_store
    victim, attacker = f"victim-{project}", f"attacker-{project}"
    image_id = new_image(url, who(victim))
    # A service (Nova, say) may register a file of a store; the image stays private.
    assert (
        add_location(url, image_id, who(victim, "member", "reader", "service"), f"{archive}/victim.img").status_code
        == 200
    )
    assert requests.get(f"{url}/v2/images/{image_id}", headers=who(attacker)).status_code == 404

    own = new_image(url, who(attacker))
    answers = []
    for target in (f"{archive}/victim.img", f"{archive}/no-such.img"):
        posted = requests.post(f"{url}/v2/images/{own}/locations", json={"url": target}, headers=who(attacker))
        patched = add_location(url, own, who(attacker), target)
        assert (posted.status_code, patched.status_code) == (400, 400), (posted.text, patched.text)
        answers.append(
            (
                posted.json() if posted.headers["Content-Type"].startswith("application/json") else posted.text,
                patched.text,
            )
        )
    # The same answer whether the file exists or not: the refusal tells nothing.
    assert answers[0] == answers[1]
    assert requests.get(f"{url}/v2/images/{own}", headers=who(attacker)).json()["status"] == "queued"
    assert requests.get(f"{url}/v2/images/{own}/file", headers=who(attacker)).status_code == 204


def test_a_copy_with_other_bytes_is_not_added_to_an_active_image(url, web, project):
    headers = who(project)
    image_id = new_image(url, headers)
    same_size = bytes(b ^ 0xFF for b in PAYLOAD[:64]) + PAYLOAD[64:]
    assert (
        requests.put(f"{url}/v2/images/{image_id}/file", data=same_size, headers={**headers, **OCTET}).status_code
        == 204
    )
    resp = add_location(url, image_id, headers, f"{web}/other-bytes.img")
    assert resp.status_code == 409, resp.text
    assert "checksum" in resp.text
    image = requests.get(f"{url}/v2/images/{image_id}", headers=headers).json()
    assert [loc["url"] for loc in image["locations"]] == [image["locations"][0]["url"]]
    assert (
        requests.get(f"{url}/v2/images/{image_id}/file", params={"prefer": "web"}, headers=headers).content == same_size
    )


@pytest.mark.parametrize(
    "validation",
    [
        {"checksum": "0" * 32},
        {"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(PAYLOAD).hexdigest()},  # another algorithm
        {"os_hash_algo": "sha256", "os_hash_value": "a" * 128},  # of the wrong length for it, too
    ],
)
def test_validation_data_that_differs_from_an_active_image_is_409(url, web, project, validation):
    headers = who(project)
    image_id = new_image(url, headers)
    assert (
        requests.put(f"{url}/v2/images/{image_id}/file", data=PAYLOAD, headers={**headers, **OCTET}).status_code == 204
    )
    resp = add_location(url, image_id, headers, f"{web}/validated.img", validation_data=validation)
    assert resp.status_code == 409, resp.text
    good = {
        "checksum": hashlib.md5(PAYLOAD).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(PAYLOAD).hexdigest(),
    }
    assert add_location(url, image_id, headers, f"{web}/validated.img", validation_data=good).status_code == 200


def test_refusals_keep_the_network_to_the_log(server_factory, project):
    config = server_config(flavor="trusted-headers", extra_backends="web:http")
    srv = server_factory("refusal-log", config)
    image_id = new_image(srv.url, who(project))
    for location in ("http://10.1.2.3/x.img", "http://no-such-host.invalid/x.img"):
        resp = requests.post(f"{srv.url}/v2/images/{image_id}/locations", json={"url": location}, headers=who(project))
        assert resp.status_code == 400 and "Location refused" in resp.text
        assert "10.1.2.3 " not in resp.text and "resolve" not in resp.text and "denied" not in resp.text
    log = srv.read_log()
    assert "10.1.2.3" in log and "denied network" in log and "no-such-host.invalid" in log


class _SlowHandler(_Handler):
    """PAYLOAD, a little at a time: an import that takes a few seconds."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        for start in range(0, len(PAYLOAD), 256 << 10):
            self.wfile.write(PAYLOAD[start : start + (256 << 10)])
            time.sleep(0.25)


def _worker_threads(srv) -> int:
    """Threads of the server's worker process (the child of gunicorn's master)."""
    children = open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read().split()
    return len(os.listdir(f"/proc/{children[0]}/task"))


def test_background_imports_are_bounded(server_factory, project):
    limits = "background_workers = 2\nbackground_queue_size = 1\nbackground_jobs_per_project = 2"
    config = server_config(flavor="trusted-headers", default=limits, extra_backends="web:http", stores=WEB_STORE)
    srv = server_factory("bounded-jobs", config)
    with serving(_SlowHandler) as slow:
        other = f"other-{project}"
        images = [new_image(srv.url, who(p)) for p in (project, project, project, other, other)]

        def post(image_id, owner):
            return requests.post(
                f"{srv.url}/v2/images/{image_id}/locations", json={"url": f"{slow}/{image_id}"}, headers=who(owner)
            )

        statuses = [post(i, p).status_code for i, p in zip(images, (project, project, project, other, other))]
        # Two per project; two threads and one waiting place in all.
        assert statuses == [202, 202, 429, 202, 503]
        # Refused imports start no threads (each used to start one, and the hashing two more).
        threads = _worker_threads(srv)
        more = [new_image(srv.url, who(f"p{n}-{project}")) for n in range(6)]
        assert {post(i, f"p{n}-{project}").status_code for n, i in enumerate(more)} == {503}
        assert _worker_threads(srv) <= threads + 1
        for image_id, owner in ((images[0], project), (images[1], project), (images[3], other)):
            _wait_for(srv.url, image_id, who(owner), "active", timeout=60)
        for image_id, owner in ((images[2], project), (images[4], other)):
            assert requests.get(f"{srv.url}/v2/images/{image_id}", headers=who(owner)).json()["status"] == "queued"


def _replace_locations(url, image_id, headers, locations):
    change = [{"op": "replace", "path": "/locations", "value": locations}]
    return requests.patch(f"{url}/v2/images/{image_id}", json=change, headers={**headers, **PATCH})


def test_replace_locations_changes_metadata_only(url, web, project):
    """As Glance: PATCH replace /locations takes the same list with new metadata, and
    answers 400 when the replacement drops a location or changes a URL."""
    headers = who(project)
    image_id = new_image(url, headers)
    first, second = f"{web}/replace-a.img", f"{web}/replace-b.img"
    assert add_location(url, image_id, headers, first).status_code == 200
    assert add_location(url, image_id, headers, second).status_code == 200
    shown = requests.get(f"{url}/v2/images/{image_id}", headers=headers).json()["locations"]

    same = _replace_locations(url, image_id, headers, shown)  # what a client read, sent back
    assert same.status_code == 200, same.text
    assert same.json()["locations"] == shown
    tagged = [{"url": first, "metadata": {"rack": "a1"}}, {"url": second, "metadata": {"store": "web"}}]
    resp = _replace_locations(url, image_id, headers, tagged)
    assert resp.status_code == 200, resp.text
    assert resp.json()["locations"] == [
        {"url": first, "metadata": {"rack": "a1", "store": "web"}},
        {"url": second, "metadata": {"store": "web"}},
    ]

    for bad in (
        [tagged[0]],
        [tagged[0], {"url": f"{web}/other.img", "metadata": {}}],
        [tagged[1], tagged[0]],
        [{"url": first, "metadata": {"store": "local"}}, tagged[1]],
    ):
        resp = _replace_locations(url, image_id, headers, bad)
        assert resp.status_code == 400, resp.text
    after = requests.get(f"{url}/v2/images/{image_id}", headers=headers).json()["locations"]
    assert [loc["url"] for loc in after] == [first, second]
