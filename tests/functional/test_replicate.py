"""``abbild replicate`` between two real ``abbild serve`` services (noauth: the caller
is an administrator, who may set ids and owners; one test with a real Keystone): size,
compare, livecopy (identical results, idempotent, resumable after SIGKILL, filters,
refusals, a source that breaks off), dump and load, the progress bar on a terminal, and
a copy of a large image in bounded memory."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from abbild.testing.backends import backend_unavailable
from tests.functional import keystone as ks
from tests.functional.helpers import server_config, serving, wait_for
from tests.functional.test_keystone import KEYSTONE_CONFIG

MIB = 1 << 20
OCTET = {"Content-Type": "application/octet-stream"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
# what a service sets itself at the time it does something
TIMES = ("created_at", "updated_at")


def replicate(*args: str, ok: bool | None = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "replicate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if ok is not None:
        assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    return proc


def make_image(srv, data: bytes | None = None, members: dict | None = None, **fields) -> str:
    body = {"disk_format": "raw", "container_format": "bare", **fields}
    resp = requests.post(f"{srv.url}/v2/images", json=body)
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    for member, status in (members or {}).items():
        assert requests.post(f"{srv.url}/v2/images/{image_id}/members", json={"member": member}).ok
        if status != "pending":
            resp = requests.put(f"{srv.url}/v2/images/{image_id}/members/{member}", json={"status": status})
            assert resp.ok, resp.text
    if data is not None:
        resp = requests.put(f"{srv.url}/v2/images/{image_id}/file", data=data, headers=OCTET)
        assert resp.status_code == 204, resp.text
    return image_id


def snapshot(srv) -> dict:
    """Every image of *srv* as a user sees it (but the times), with its members."""
    images = {}
    for hidden in ("false", "true"):
        resp = requests.get(f"{srv.url}/v2/images", params={"visibility": "all", "os_hidden": hidden, "limit": 1000})
        for image in resp.json()["images"]:
            view = {k: v for k, v in image.items() if k not in TIMES}
            if image["visibility"] == "shared":
                members = requests.get(f"{srv.url}/v2/images/{image['id']}/members").json()["members"]
                view["members"] = sorted((m["member_id"], m["status"]) for m in members)
            images[image["id"]] = view
    return images


def copied(snap: dict) -> dict:
    """The images of a snapshot that a replicator copies: those with data."""
    return {k: v for k, v in snap.items() if v["status"] in ("active", "deactivated")}


@pytest.fixture
def pair(make_server, tmp_path):
    return (
        make_server(data_dir=tmp_path / "source").start(),
        make_server(data_dir=tmp_path / "target").start(),
    )


@pytest.fixture
def catalog(pair):
    """A source with every kind of image; ids by name."""
    source, _ = pair
    ids = {
        "public": make_image(
            source,
            os.urandom(3 * MIB + 5),
            name="public",
            visibility="public",
            protected=True,
            owner="p-one",
            tags=["a", "b"],
            min_disk=1,
            min_ram=64,
            os_distro="cirros",
            hw_disk_bus="virtio",
        ),
        "shared": make_image(
            source,
            os.urandom(MIB),
            name="shared",
            visibility="shared",
            owner="p-one",
            members={"p-two": "accepted", "p-three": "rejected", "p-four": "pending"},
        ),
        "hidden": make_image(
            source, os.urandom(2 * MIB), name="hidden", visibility="private", owner="p-two", os_hidden=True
        ),
        "community": make_image(source, b"community data", name="community", visibility="community", owner="p-three"),
        "empty": make_image(source, b"", name="empty", visibility="private", owner="p-one"),
        "deactivated": make_image(source, os.urandom(MIB), name="deactivated", visibility="private", owner="p-one"),
        "queued": make_image(source, None, name="queued", owner="p-one"),
    }
    assert requests.post(f"{source.url}/v2/images/{ids['deactivated']}/actions/deactivate").status_code == 204
    return ids


def test_livecopy_copies_everything_identically_and_only_once(pair, catalog):
    source, target = pair
    size = json.loads(replicate("size", source.url, "--json").stdout)
    assert size["active"] == {"images": 5, "bytes": 3 * MIB + 5 + MIB + 2 * MIB + len(b"community data")}
    assert size["deactivated"] == {"images": 1, "bytes": MIB}
    assert "active" in replicate("size", source.url).stdout

    before = replicate("compare", source.url, target.url, "--json", ok=False)
    assert before.returncode == 1
    report = json.loads(before.stdout)
    assert not report["identical"] and report["compared"] == 6
    assert {r["id"]: r["differences"] for r in report["images"]}[catalog["public"]] == ["missing"]

    run = replicate("livecopy", source.url, target.url)
    assert "copied 6, skipped 0 (identical), failed 0" in run.stdout, run.stdout
    assert f"{catalog['public']} [" in run.stderr  # the progress, a line per image off a terminal
    assert copied(snapshot(target)) == copied(snapshot(source))
    assert catalog["queued"] not in snapshot(target)  # no data yet: nothing to copy
    assert snapshot(target)[catalog["deactivated"]]["status"] == "deactivated"
    assert requests.get(f"{target.url}/v2/images/{catalog['public']}/file").content == (
        requests.get(f"{source.url}/v2/images/{catalog['public']}/file").content
    )
    assert "6 image(s) compared, 0 differ" in replicate("compare", source.url, target.url).stdout

    again = json.loads(replicate("livecopy", source.url, target.url, "--json").stdout)
    assert (again["copied"], again["skipped"], again["failed"], again["bytes"]) == (0, 6, 0, 0)

    # Changes on the source: each is found, and copied without moving data again.
    image = catalog["shared"]
    patch = [{"op": "add", "path": "/os_version", "value": "2"}, {"op": "replace", "path": "/name", "value": "s2"}]
    assert requests.patch(f"{source.url}/v2/images/{image}", data=json.dumps(patch), headers=PATCH).ok
    assert requests.delete(f"{source.url}/v2/images/{image}/members/p-four").status_code == 204
    assert requests.put(f"{source.url}/v2/images/{image}/members/p-three", json={"status": "accepted"}).ok
    assert requests.post(f"{source.url}/v2/images/{catalog['deactivated']}/actions/reactivate").status_code == 204
    patch = [{"op": "remove", "path": "/hw_disk_bus"}]
    assert requests.patch(f"{source.url}/v2/images/{catalog['public']}", data=json.dumps(patch), headers=PATCH).ok
    differ = json.loads(replicate("compare", source.url, target.url, "--json", ok=False).stdout)
    found = {r["id"]: r["differences"] for r in differ["images"] if r["differences"]}
    assert found == {
        image: ["metadata (name, os_version)", "members"],
        catalog["deactivated"]: ["status (deactivated)"],
        catalog["public"]: ["metadata (hw_disk_bus)"],
    }
    fixed = json.loads(replicate("livecopy", source.url, target.url, "--json").stdout)
    assert (fixed["copied"], fixed["bytes"]) == (3, 0)
    assert copied(snapshot(target)) == copied(snapshot(source))
    replicate("compare", source.url, target.url)


def test_an_interrupted_livecopy_resumes(pair):
    source, target = pair
    small = make_image(source, os.urandom(MIB), name="small")
    time.sleep(1.1)  # images are copied oldest first, and times have seconds
    big = make_image(source, _chunks(192 * MIB), name="big")
    proc = subprocess.Popen(
        [sys.executable, "-m", "abbild_cmd.cli", "replicate", "livecopy", source.url, target.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # poll without pause: the copy of the big image takes about a second
        deadline = time.monotonic() + 120
        while _status(target, big) != "saving":
            assert time.monotonic() < deadline and proc.poll() is None, "the big image never streamed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _status(target, big) in ("saving", "queued")
    run = json.loads(replicate("livecopy", source.url, target.url, "--json").stdout)
    results = {i["id"]: (i["result"], i["done"]) for i in run["images"]}
    assert results[small] == ("skipped", [])  # it came before the big one, and is complete
    assert results[big] == ("copied", ["data"])
    assert copied(snapshot(target)) == copied(snapshot(source))
    replicate("compare", source.url, target.url)


def _status(srv, image_id: str) -> str | None:
    resp = requests.get(f"{srv.url}/v2/images/{image_id}")
    return resp.json()["status"] if resp.ok else None


def _chunks(size: int):
    block = os.urandom(MIB)
    for _ in range(size // MIB):
        yield block


def test_filters_select_what_is_copied(pair, catalog):
    source, target = pair
    run = json.loads(replicate("livecopy", source.url, target.url, "--owner", "p-one", "--json").stdout)
    names = {i["name"] for i in run["images"]}
    assert names == {"public", "shared", "empty", "deactivated"}
    replicate("compare", source.url, target.url, "--owner", "p-one")
    assert replicate("compare", source.url, target.url, ok=False).returncode == 1

    run = json.loads(replicate("livecopy", source.url, target.url, "--visibility", "community", "--json").stdout)
    assert [(i["name"], i["result"]) for i in run["images"]] == [("community", "copied")]
    wanted = ("--property", "os_distro=cirros", "--property", "hw_disk_bus=virtio")
    run = json.loads(replicate("livecopy", source.url, target.url, *wanted, "--json").stdout)
    assert [(i["name"], i["result"]) for i in run["images"]] == [("public", "skipped")]
    assert set(copied(snapshot(target))) == {
        catalog[n] for n in ("public", "shared", "empty", "deactivated", "community")
    }
    none = json.loads(replicate("livecopy", source.url, target.url, "--property", "os_distro=other", "--json").stdout)
    assert none["images"] == []


def test_dump_and_load_through_a_directory(pair, catalog, tmp_path):
    source, target = pair
    dump = tmp_path / "dump"
    run = json.loads(replicate("dump", source.url, str(dump), "--json").stdout)
    assert (run["copied"], run["failed"]) == (6, 0)
    files = sorted(p.name for p in dump.iterdir())
    assert files == sorted(f"{catalog[n]}.{s}" for n in catalog if n != "queued" for s in ("json", "data"))
    data = requests.get(f"{source.url}/v2/images/{catalog['public']}/file").content
    assert (dump / f"{catalog['public']}.data").read_bytes() == data
    entry = json.loads((dump / f"{catalog['shared']}.json").read_text())
    assert entry["members"] == {"p-two": "accepted", "p-three": "rejected", "p-four": "pending"}

    # An interrupted dump: one image's metadata not written yet, its data half written.
    (dump / f"{catalog['public']}.json").unlink()
    (dump / f"{catalog['public']}.data").rename(dump / f"{catalog['public']}.data.part")
    with open(dump / f"{catalog['public']}.data.part", "r+b") as f:
        f.truncate(MIB)
    again = json.loads(replicate("dump", source.url, str(dump), "--json").stdout)
    assert (again["copied"], again["skipped"], again["bytes"]) == (1, 5, len(data))
    assert (dump / f"{catalog['public']}.data").read_bytes() == data
    assert not list(dump.glob("*.part"))

    load = json.loads(replicate("load", str(dump), target.url, "--json").stdout)
    assert (load["copied"], load["failed"]) == (6, 0)
    assert copied(snapshot(target)) == copied(snapshot(source))
    replicate("compare", source.url, target.url)
    assert json.loads(replicate("load", str(dump), target.url, "--json").stdout)["skipped"] == 6


def test_a_refusing_target_is_reported(make_server, tmp_path):
    source = make_server(data_dir=tmp_path / "source").start()
    base = tmp_path / "capped"
    base.mkdir()
    conf = base / "abbild-api.conf"
    conf.write_text(server_config(default=f"image_size_cap = {2 * MIB}").format(dir=base))
    target = make_server("--config-file", str(conf), data_dir=base).start()
    small = make_image(source, os.urandom(MIB), name="small")
    large = make_image(source, os.urandom(3 * MIB), name="large")
    run = replicate("livecopy", source.url, target.url, ok=False)
    assert run.returncode == 1
    assert "copied 1, skipped 0 (identical), failed 1" in run.stdout
    assert f"abbild: failed: {large} (large): target PUT " in run.stderr and " 413 " in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert requests.get(f"{target.url}/v2/images/{small}").json()["status"] == "active"
    assert requests.get(f"{target.url}/v2/images/{large}").json()["status"] == "queued"
    differ = json.loads(replicate("compare", source.url, target.url, "--json", ok=False).stdout)
    assert [r["differences"] for r in differ["images"] if r["id"] == large] == [["no data (queued)"]]


def test_bad_input_is_refused_with_a_message(pair, tmp_path):
    source, target = pair
    for args, message in (
        (("size", "glance.example.org"), "is no http(s) URL"),
        (("livecopy", source.url, target.url, "--property", "os_distro"), "write it as key=value"),
        (("size", "http://127.0.0.1:1"), "source http://127.0.0.1:1 is unreachable"),
        (("load", str(tmp_path / "nothing"), target.url), "is no directory"),
        (("livecopy", source.url, target.url, "--target-auth-url", "http://127.0.0.1:1/v3"), "needs --target-username"),
    ):
        run = replicate(*args, ok=False)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)


def test_a_large_image_is_copied_in_bounded_memory(pair):
    """The replicator's peak RSS copying 256 MiB stays within a few MiB of copying 1 MiB:
    the data streams through, never held whole."""
    source, target = pair
    small = make_image(source, os.urandom(MIB), name="small")
    peak_small = _peak_rss(source, target, "--property", "name=small")
    large = make_image(source, _chunks(256 * MIB), name="large")
    start = time.monotonic()
    peak_large = _peak_rss(source, target)
    assert peak_large - peak_small < 32 * MIB, (peak_small, peak_large, time.monotonic() - start)
    for image_id in (small, large):
        assert requests.get(f"{target.url}/v2/images/{image_id}").json()["status"] == "active"
    replicate("compare", source.url, target.url)


def _peak_rss(source, target, *args: str) -> int:
    """The peak RSS in bytes of one ``abbild replicate livecopy``, measured by a parent
    process of its own (this test process has waited for other children before)."""
    command = [sys.executable, "-m", "abbild_cmd.cli", "replicate", "livecopy", "-q", source.url, target.url, *args]
    probe = (
        "import resource, subprocess, sys\n"
        f"rc = subprocess.run({command!r}, stdout=subprocess.DEVNULL).returncode\n"
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    rc, kib = out.stdout.split()
    assert rc == "0", out.stderr
    return int(kib) * 1024


def test_keystone_sides(make_server, tmp_path):
    """A noauth source into a keystone target with password credentials from the
    environment (the replicator takes its tokens), then back with a token."""
    reason = ks.unavailable_reason()
    if reason:
        backend_unavailable(reason)
    password = "abbild-test-pw"
    ks.ensure_user("abbild-service", password, "service", ["service"])
    ks.ensure_user("abbild-replicator", password, "admin", ["admin"])
    base = tmp_path / "keystone"
    base.mkdir()
    conf = base / "abbild-api.conf"
    text = KEYSTONE_CONFIG.format(auth_url=ks.auth_url(), user="abbild-service", password=password, project="service")
    conf.write_text(text.format(dir=base))
    target = make_server("--config-file", str(conf), data_dir=base).start()
    source = make_server(data_dir=tmp_path / "source").start()
    make_image(
        source, os.urandom(MIB), name="shared", visibility="shared", owner="p-one", members={"p-two": "accepted"}
    )
    make_image(source, os.urandom(MIB), name="hidden", owner="p-two", os_hidden=True)

    anonymous = replicate("livecopy", source.url, target.url, ok=False)
    assert anonymous.returncode == 2 and "401" in anonymous.stderr and "--target-token" in anonymous.stderr
    env = dict(
        os.environ,
        ABBILD_TARGET_AUTH_URL=ks.auth_url(),
        ABBILD_TARGET_USERNAME="abbild-replicator",
        ABBILD_TARGET_PASSWORD=password,
        ABBILD_TARGET_PROJECT="admin",
    )
    command = [sys.executable, "-m", "abbild_cmd.cli", "replicate", "livecopy", source.url, target.url, "--json"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["copied"] == 2
    wrong = subprocess.run(
        command, env=dict(env, ABBILD_TARGET_PASSWORD="wrong"), capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 2 and "Keystone refused the credentials" in wrong.stderr, wrong.stderr

    token, _, _ = ks.token_for("abbild-replicator", password, "admin")
    back = replicate("compare", target.url, source.url, "--source-token", token, "--json")
    assert json.loads(back.stdout)["compared"] == 2


def test_progress_on_a_terminal(pair):
    """On a terminal, a bar redrawn in place with bytes and rate."""
    import pty

    source, target = pair
    image_id = make_image(source, os.urandom(8 * MIB), name="bar")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "abbild_cmd.cli", "replicate", "livecopy", source.url, target.url],
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    try:
        while True:  # read as it comes, so that the bar never waits for a full terminal
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command ended and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        proc.wait(timeout=300)
    assert proc.returncode == 0, shown
    assert re.search(rf"\r{image_id} \[#+\] 100\.0% 8\.0/8\.0 MiB \d+\.\d MiB/s", shown.decode()), shown


def test_a_source_that_breaks_off_leaves_the_target_image_queued(make_server, tmp_path):
    """A download cut short (a fault a real server does not make on demand, so a small
    HTTP server plays the source): the upload is dropped, not left waiting for the rest;
    the image is named as failed and stays queued on the target for the next run."""
    image_id = "8d1b5a7e-3f0c-4c47-9a51-2b6f1d8e9c10"
    image = {
        "id": image_id,
        "name": "cut",
        "status": "active",
        "visibility": "private",
        "protected": False,
        "os_hidden": False,
        "owner": "p-one",
        "disk_format": "raw",
        "container_format": "bare",
        "min_disk": 0,
        "min_ram": 0,
        "tags": [],
        "size": 4 * MIB,
        "checksum": "0" * 32,
        "os_hash_algo": "sha512",
        "os_hash_value": "0" * 128,
        "created_at": "2026-01-01T00:00:00Z",
    }

    class BreakingSource(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/v2/images?"):
                hidden = "os_hidden=true" in self.path
                self._send(json.dumps({"images": [] if hidden else [image]}).encode())
            elif self.path == f"/v2/images/{image_id}/file":
                self.send_response(200)
                self.send_header("Content-Length", str(4 * MIB))
                self.end_headers()
                self.wfile.write(os.urandom(MIB))  # then the connection closes
            else:
                self.send_error(404)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    target = make_server(data_dir=tmp_path / "target").start()
    with serving(BreakingSource) as source_url:
        start = time.monotonic()
        run = replicate("livecopy", source_url, target.url, ok=False, timeout=120)
    assert run.returncode == 1 and time.monotonic() - start < 30
    assert (
        f"abbild: failed: {image_id} (cut): source {source_url} is unreachable: download of {image_id} broke off"
        in (run.stderr)
    ), run.stderr
    wait_for(lambda: _status(target, image_id) == "queued", what="the target's image queued again")
