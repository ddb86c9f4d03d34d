"""The image cache through real clients: ``abbild serve`` with ``image_cache_dir`` set
(it runs the ``+cache`` flavour), glanceclient's cache calls and the ``glance cache-*``
commands, ``abbild cache ...``, and raw HTTP for the rest.

Store reads are counted at the source: most images here live only in the http store,
served by this module's own web server, which counts the GETs of each path."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from glanceclient import Client
from glanceclient import exc as glance_exc
from keystoneauth1 import session as ks_session

from tests.functional.clis import executable
from tests.functional.helpers import server_config, serving, wait_for, who

PAYLOAD = os.urandom(3 << 20)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
OCTET = {"Content-Type": "application/octet-stream"}
WEB_STORE = "[web]\nallowed_networks = 127.0.0.1/32\n"
# The periodic tasks stay off: each test runs the one it is about.
CACHE_OPTIONS = (
    "image_cache_dir = {dir}/cache\n"
    "image_cache_prune_interval = 0\n"
    "image_cache_clean_interval = 0\n"
    "image_cache_prefetch_interval = 0\n"
)

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


class _Web(http.server.BaseHTTPRequestHandler):
    """PAYLOAD at every path (single Range support), slowly under /slow/; counts GETs."""

    gets: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, body: bool) -> None:
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
        if not body:
            return
        self.gets.append(self.path)
        data = PAYLOAD[start : end + 1]
        step = 256 << 10
        for i in range(0, len(data), step):
            if self.path.startswith("/slow/"):
                time.sleep(0.05)
            self.wfile.write(data[i : i + step])

    def do_HEAD(self):
        self._send(False)

    def do_GET(self):
        self._send(True)


@pytest.fixture(scope="module")
def web():
    with serving(_Web) as url:
        yield url


@pytest.fixture(scope="module")
def srv(server_factory, web):
    """trusted-headers+cache, a filesystem store and the http store ``web``."""
    config = server_config(flavor="trusted-headers", default=CACHE_OPTIONS, extra_backends="web:http", stores=WEB_STORE)
    return server_factory("cache", config)


@pytest.fixture
def admin(project):
    return who(project, "admin", "member", "reader")


@pytest.fixture
def member(project):
    return who(project)


def web_image(srv, web, headers, path: str | None = None) -> tuple[str, str]:
    """An active image whose only data is at *path* on the web server (read once, to
    hash it): (image id, path)."""
    path = path or f"/{uuid.uuid4().hex}.img"
    resp = requests.post(
        f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    resp = requests.post(f"{srv.url}/v2/images/{image_id}/locations", json={"url": web + path}, headers=headers)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: requests.get(f"{srv.url}/v2/images/{image_id}", headers=headers).json()["status"] == "active")
    assert _Web.gets.count(path) == 1
    return image_id, path


def cache_state(srv, headers) -> dict:
    resp = requests.get(f"{srv.url}/v2/cache", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def cached_ids(srv, headers) -> set[str]:
    return {entry["image_id"] for entry in cache_state(srv, headers)["cached_images"]}


def cache_entry(srv, headers, image_id) -> dict:
    [entry] = [e for e in cache_state(srv, headers)["cached_images"] if e["image_id"] == image_id]
    return entry


def cache_file(srv, image_id) -> Path:
    return Path(srv.data_dir) / "cache" / image_id


def download(srv, image_id, headers, **extra) -> requests.Response:
    return requests.get(f"{srv.url}/v2/images/{image_id}/file", headers={**headers, **extra})


def fill(srv, image_id, headers, admin) -> requests.Response:
    """A download that misses: the copy is published once the last byte went out, so
    wait for it."""
    resp = download(srv, image_id, headers)
    assert resp.status_code == 200 and resp.content == PAYLOAD
    wait_for(lambda: image_id in cached_ids(srv, admin), what=f"{image_id} cached")
    return resp


def glance_for(srv, headers) -> Client:
    # Trusted headers through a session: glanceclient's own %-encodes the roles' commas.
    return Client("2", session=ks_session.Session(additional_headers=headers), endpoint_override=srv.url)


# -- a miss, then hits ---------------------------------------------------------------------


def test_a_miss_is_served_and_cached_in_one_store_read_then_hits_come_from_the_cache(srv, web, member, admin):
    image_id, path = web_image(srv, web, member)
    miss = fill(srv, image_id, member, admin)
    assert _Web.gets.count(path) == 2  # the download's one read filled the cache too
    assert cache_file(srv, image_id).read_bytes() == PAYLOAD
    entry = cache_entry(srv, admin, image_id)
    assert entry["size"] == len(PAYLOAD) and entry["hits"] == 0 and entry["last_modified"] > 0
    for n in (1, 2):
        hit = download(srv, image_id, member)
        assert hit.status_code == 200 and hit.content == PAYLOAD
        for name in ("Content-MD5", "Content-Length", "Content-Type"):
            assert hit.headers[name] == miss.headers[name], name
        assert hit.headers["Content-MD5"] == MD5 and hit.headers["Content-Length"] == str(len(PAYLOAD))
        assert _Web.gets.count(path) == 2
        entry = cache_entry(srv, admin, image_id)
        assert entry["hits"] == n and entry["last_accessed"] >= entry["last_modified"]


def test_prefer_is_ignored_on_a_hit(srv, web, member, admin):
    image_id, path = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    resp = requests.get(f"{srv.url}/v2/images/{image_id}/file", params={"prefer": "web"}, headers=member)
    assert resp.status_code == 200 and resp.content == PAYLOAD
    assert _Web.gets.count(path) == 2


def _worker_pid(srv) -> int:
    """The gunicorn worker (the only child of ``abbild serve``)."""
    children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_hit_is_sent_with_sendfile_from_the_cache_file(srv, web, member, admin, tmp_path):
    """The zero-copy path of the filesystem store: the worker hands the cache file to
    sendfile(2), no byte passes through Python."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    image_id, _ = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    trace = tmp_path / "trace"
    tracer = subprocess.Popen(
        [strace, "-f", "-y", "-e", "trace=sendfile", "-o", str(trace), "-p", str(_worker_pid(srv))],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # strace attaches to every thread of the worker
        if tracer.poll() is not None:
            pytest.skip(f"strace cannot attach here: {tracer.stderr.read()}")
        hit = download(srv, image_id, member)
        assert hit.content == PAYLOAD
        time.sleep(0.3)
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    lines = [line for line in trace.read_text().splitlines() if "sendfile" in line]
    calls = [line for line in lines if "sendfile(" in line]  # not "<... sendfile resumed>"
    sent = sum(int(m.group(1)) for line in lines if (m := re.search(r"= (\d+)$", line)))
    assert calls and all(f"/cache/{image_id}>" in line for line in calls), lines
    assert sent == len(PAYLOAD)


def test_two_concurrent_misses_fill_the_cache_once(srv, web, member, admin):
    image_id, path = web_image(srv, web, member, f"/slow/{uuid.uuid4().hex}.img")
    results: list[bytes] = []

    def get():
        results.append(download(srv, image_id, member).content)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [PAYLOAD, PAYLOAD]
    assert _Web.gets.count(path) == 3
    wait_for(lambda: image_id in cached_ids(srv, admin), what="cached")
    assert [e["image_id"] for e in cache_state(srv, admin)["cached_images"]].count(image_id) == 1
    assert not list((Path(srv.data_dir) / "cache").rglob(f"*{image_id}*.*"))  # no second file beside it
    assert download(srv, image_id, member).content == PAYLOAD
    assert _Web.gets.count(path) == 3


def test_ranged_reads_never_fill_the_cache_and_are_served_from_it(srv, web, member, admin):
    image_id, path = web_image(srv, web, member)
    part = download(srv, image_id, member, Range="bytes=100-1099")
    assert part.status_code == 206 and part.content == PAYLOAD[100:1100]
    uncached_headers = {k: part.headers[k] for k in ("Content-Range", "Content-Length", "Content-MD5")}
    assert uncached_headers["Content-Range"] == f"bytes 100-1099/{len(PAYLOAD)}"
    assert image_id not in cached_ids(srv, admin) and not cache_file(srv, image_id).exists()
    assert _Web.gets.count(path) == 2
    fill(srv, image_id, member, admin)  # now cached
    assert _Web.gets.count(path) == 3
    hits = cache_entry(srv, admin, image_id)["hits"]

    # From the cache now, with the headers the store's answer had.
    part = download(srv, image_id, member, Range="bytes=100-1099")
    assert part.status_code == 206 and part.content == PAYLOAD[100:1100]
    assert {k: part.headers[k] for k in uncached_headers} == uncached_headers
    part = download(srv, image_id, member, Range="bytes=-10")
    assert part.status_code == 206 and part.content == PAYLOAD[-10:]
    legacy = download(srv, image_id, member, **{"Content-Range": "bytes 5-9/*"})
    assert legacy.status_code == 206 and legacy.content == PAYLOAD[5:10]
    beyond = download(srv, image_id, member, Range=f"bytes={len(PAYLOAD)}-")
    assert beyond.status_code == 416
    assert _Web.gets.count(path) == 3
    assert cache_entry(srv, admin, image_id)["hits"] == hits + 3


# -- the cache never serves what the image service would not --------------------------------


def test_a_cached_image_is_authorized_as_an_uncached_one(srv, web, member, admin, project):
    image_id, path = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    other = who(f"other-{project}")
    assert download(srv, image_id, other).status_code == 404
    anonymous = requests.get(f"{srv.url}/v2/images/{image_id}/file")
    assert anonymous.status_code == 401
    assert _Web.gets.count(path) == 2


def test_deactivate_stops_serving_from_the_cache_at_once(srv, web, member, admin):
    image_id, path = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    assert image_id in cached_ids(srv, admin)
    resp = requests.post(f"{srv.url}/v2/images/{image_id}/actions/deactivate", headers=member)
    assert resp.status_code == 204, resp.text
    assert download(srv, image_id, member).status_code == 403
    assert image_id not in cached_ids(srv, admin) and not cache_file(srv, image_id).exists()
    # An administrator still reads a deactivated image: from the store, and it is not cached.
    assert download(srv, image_id, admin).content == PAYLOAD
    assert _Web.gets.count(path) == 3
    assert image_id not in cached_ids(srv, admin)
    resp = requests.post(f"{srv.url}/v2/images/{image_id}/actions/reactivate", headers=member)
    assert resp.status_code == 204, resp.text
    fill(srv, image_id, member, admin)
    assert _Web.gets.count(path) == 4


def test_delete_stops_serving_from_the_cache_at_once(srv, web, member, admin):
    image_id, _ = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    assert cache_file(srv, image_id).exists()
    assert requests.delete(f"{srv.url}/v2/images/{image_id}", headers=member).status_code == 204
    assert download(srv, image_id, member).status_code == 404
    assert download(srv, image_id, admin).status_code == 404
    assert image_id not in cached_ids(srv, admin) and not cache_file(srv, image_id).exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda f: (f.seek(1 << 20), f.write(bytes(255 - b for b in PAYLOAD[1 << 20 : (1 << 20) + 64]))),
            id="overwritten",
        ),
        pytest.param(lambda f: f.truncate(len(PAYLOAD) - 1), id="truncated"),
        pytest.param(lambda f: (f.seek(0, os.SEEK_END), f.write(b"tail")), id="grown"),
    ],
)
def test_a_corrupted_cache_file_is_never_served(srv, web, member, admin, damage):
    """Bit rot or tampering: the copy is dropped, and the client gets the store's data."""
    image_id, path = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    with open(cache_file(srv, image_id), "r+b") as f:
        damage(f)
    resp = download(srv, image_id, member)
    assert resp.status_code == 200 and resp.content == PAYLOAD
    assert _Web.gets.count(path) == 3  # from the store
    # That read filled the cache again, with the right data this time.
    wait_for(lambda: image_id in cached_ids(srv, admin), what="cached again")
    assert cache_file(srv, image_id).read_bytes() == PAYLOAD
    assert download(srv, image_id, member).content == PAYLOAD
    assert _Web.gets.count(path) == 3


def test_clean_removes_a_corrupted_copy(srv, web, member, admin):
    image_id, _ = web_image(srv, web, member)
    fill(srv, image_id, member, admin)
    with open(cache_file(srv, image_id), "r+b") as f:
        f.seek(12345)
        f.write(bytes([PAYLOAD[12345] ^ 0xFF]))
    stray = Path(srv.data_dir) / "cache" / "incomplete" / str(uuid.uuid4())
    stray.write_bytes(b"left by a dead process")
    os.utime(stray, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    resp = requests.post(f"{srv.url}/v2/cache/clean", headers=admin)
    assert resp.status_code == 200, resp.text
    assert resp.content == b""
    assert image_id not in cached_ids(srv, admin) and not cache_file(srv, image_id).exists()
    assert not stray.exists()


# -- the cache API through glanceclient -----------------------------------------------------


def test_glanceclient_queue_prefetches_at_once(srv, web, member, admin):
    glance = glance_for(srv, admin)
    image_id, path = web_image(srv, web, member)
    glance.cache.queue(image_id)
    wait_for(lambda: image_id in cached_ids(srv, admin), what=f"{image_id} cached")
    state = glance.cache.list()
    assert image_id in [e["image_id"] for e in state["cached_images"]]
    assert image_id not in state["queued_images"]
    assert _Web.gets.count(path) == 2
    assert download(srv, image_id, member).content == PAYLOAD
    assert _Web.gets.count(path) == 2
    nodes = glance.cache.list_cached_nodes(image_id)
    assert len(nodes) == 1 and nodes[0].startswith("http")


def test_queue_refuses_unknown_and_inactive_images(srv, admin):
    resp = requests.put(f"{srv.url}/v2/cache/{uuid.uuid4()}", headers=admin)
    assert resp.status_code == 404
    queued = requests.post(
        f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=admin
    ).json()
    resp = requests.put(f"{srv.url}/v2/cache/{queued['id']}", headers=admin)
    assert resp.status_code == 400 and "active" in resp.text


def test_glanceclient_delete_and_clear(srv, web, member, admin):
    glance = glance_for(srv, admin)
    one, _ = web_image(srv, web, member)
    two, _ = web_image(srv, web, member)
    for image_id in (one, two):
        fill(srv, image_id, member, admin)
    glance.cache.delete(one)
    assert one not in cached_ids(srv, admin) and two in cached_ids(srv, admin)
    assert not cache_file(srv, one).exists()
    with pytest.raises(glance_exc.HTTPNotFound):
        glance.cache.delete(str(uuid.uuid4()))
    glance.cache.clear("queue")
    assert two in cached_ids(srv, admin)
    glance.cache.clear("cache")
    assert cache_state(srv, admin)["cached_images"] == [] and not cache_file(srv, two).exists()
    glance.cache.clean()  # 2.18: 200 without a body
    assert dict(glance.cache.prune()) == {"total_files_pruned": 0, "total_bytes_pruned": 0}
    resp = requests.delete(f"{srv.url}/v2/cache", headers={**admin, "x-image-cache-clear-target": "everything"})
    assert resp.status_code == 400


def test_glanceclient_sees_the_cache_versions(srv, admin):
    from glanceclient.common import utils as glance_utils

    glance = glance_for(srv, admin)
    for version in ("v2.14", "v2.16", "v2.17", "v2.18"):
        assert glance_utils.has_version(glance.http_client, version)
    assert [v["id"] for v in glance.versions.list() if v["status"] == "CURRENT"] == ["v2.18"]


def test_without_the_cache_its_api_is_404_and_glanceclient_says_unsupported(server):
    resp = requests.get(f"{server.url}/v2/cache")
    assert resp.status_code == 404
    glance = Client("2", endpoint=server.url, token="x")
    with pytest.raises(glance_exc.HTTPNotImplemented):
        glance.cache.list()


CACHE_CALLS = [
    ("GET", "/v2/cache", {}),
    ("DELETE", "/v2/cache", {}),
    ("PUT", "/v2/cache/{id}", {}),
    ("DELETE", "/v2/cache/{id}", {}),
    ("GET", "/v2/cache/nodes/{id}", {}),
    ("POST", "/v2/cache/clean", {}),
    ("POST", "/v2/cache/prune", {}),
]


@pytest.mark.parametrize("method,path,extra", CACHE_CALLS, ids=[f"{m} {p}" for m, p, _ in CACHE_CALLS])
def test_the_cache_api_is_for_administrators(srv, web, member, method, path, extra):
    image_id, _ = web_image(srv, web, member)
    resp = requests.request(method, srv.url + path.format(id=image_id), headers={**member, **extra})
    assert resp.status_code == 403, resp.text


# -- pruning, and the command-line clients ---------------------------------------------------

MIB = 1 << 20


@pytest.fixture(scope="module")
def small(server_factory):
    """noauth+cache with room for two 2 MiB images (the glance CLI sends no trusted headers)."""
    config = server_config(default=CACHE_OPTIONS + f"image_cache_max_size = {5 * MIB}\n")
    return server_factory("cache-small", config)


def upload(srv, data: bytes) -> str:
    image = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    resp = requests.put(f"{srv.url}/v2/images/{image['id']}/file", data=data, headers=OCTET)
    assert resp.status_code == 204, resp.text
    return image["id"]


def test_prune_removes_the_least_recently_used_down_to_the_limit(small):
    assert requests.delete(f"{small.url}/v2/cache").status_code == 204
    data = {name: os.urandom(2 * MIB) for name in "abc"}
    ids = {name: upload(small, blob) for name, blob in data.items()}
    glance = Client("2", endpoint=small.url, token="x")

    def cached() -> set[str]:
        return {e["image_id"] for e in glance.cache.list()["cached_images"]}

    # The index keeps whole seconds: one step a second, so that each is later than the last.
    for name in "abc":
        assert requests.get(f"{small.url}/v2/images/{ids[name]}/file").content == data[name]
        wait_for(lambda name=name: ids[name] in cached(), what=f"{name} cached")
        time.sleep(1.1)
    assert requests.get(f"{small.url}/v2/images/{ids['a']}/file").content == data["a"]  # a hit: a is recent again
    assert cached() == set(ids.values())
    result = glance.cache.prune()
    assert dict(result) == {"total_files_pruned": 1, "total_bytes_pruned": 2 * MIB}
    left = glance.cache.list()["cached_images"]
    assert {e["image_id"] for e in left} == {ids["a"], ids["c"]}
    assert sum(e["size"] for e in left) <= 5 * MIB
    assert not cache_file(small, ids["b"]).exists()
    assert dict(glance.cache.prune()) == {"total_files_pruned": 0, "total_bytes_pruned": 0}


@pytest.fixture
def glance_cli(small, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)

    def glance(*args):
        proc = subprocess.run(
            [executable("glance"), "--os-image-url", small.url, "--os-auth-token", "x", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # glance prints a refused cache call on stderr and still exits 0
        assert proc.returncode == 0 and "Unable" not in proc.stderr and "not permitted" not in proc.stderr, (
            proc.stdout + proc.stderr
        )
        return proc.stdout

    return glance


def test_glance_cache_commands(small, glance_cli):
    image_id = upload(small, os.urandom(MIB + 7))
    glance_cli("cache-queue", image_id)
    wait_for(lambda: re.search(rf"\| {image_id} \| cached", glance_cli("cache-list")), what="cached")
    assert re.search(rf"\| {image_id} \| cached \|.*\|\s*{MIB + 7}\s*\|\s*0\s*\|", glance_cli("cache-list"))
    assert glance_cli("cache-nodes-list", image_id).count("http") == 1
    glance_cli("cache-delete", image_id)
    assert image_id not in glance_cli("cache-list")
    glance_cli("cache-clean")
    assert re.search(r"Pruned \d+ file\(s\), \d+ byte\(s\)\.", glance_cli("cache-prune"))
    glance_cli("cache-clear", "--target", "queue")
    glance_cli("cache-clear")
    assert "cached" not in glance_cli("cache-list").split("Hits")[-1]


def abbild_cache(srv, *args, ok: bool = True) -> subprocess.CompletedProcess:
    conf = Path(srv.data_dir) / "abbild-api.conf"
    proc = subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "cache", *args, "--config-file", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_abbild_cache_command_line(small):
    """The node's cache from its config file, as the API process sees it."""
    data = os.urandom(MIB + 3)
    image_id = upload(small, data)
    abbild_cache(small, "queue", image_id)
    listed = json.loads(abbild_cache(small, "list", "--json").stdout)
    assert image_id in listed["queued_images"]
    assert image_id in requests.get(f"{small.url}/v2/cache").json()["queued_images"]  # one index, two views
    prefetch = abbild_cache(small, "prefetch")
    assert image_id in prefetch.stdout
    assert re.search(rf"{image_id} \[#+\] +100\.0%", prefetch.stderr), prefetch.stderr
    assert cache_file(small, image_id).read_bytes() == data
    table = abbild_cache(small, "list").stdout
    assert re.search(rf"^{image_id} +cached +", table, re.M), table
    assert requests.get(f"{small.url}/v2/images/{image_id}/file").content == data  # served from that copy
    listed = json.loads(abbild_cache(small, "list", "--json").stdout)
    [entry] = [e for e in listed["cached_images"] if e["image_id"] == image_id]
    assert entry["hits"] == 1 and entry["size"] == len(data)
    assert "total_files_pruned" in json.loads(abbild_cache(small, "prune", "--json").stdout)
    assert isinstance(json.loads(abbild_cache(small, "clean", "--json").stdout), dict)
    abbild_cache(small, "remove", image_id)
    assert not cache_file(small, image_id).exists()
    gone = abbild_cache(small, "remove", image_id, ok=False)
    assert gone.returncode == 1 and "neither cached nor queued" in gone.stderr
    abbild_cache(small, "queue", image_id)
    assert json.loads(abbild_cache(small, "clear", "--target", "queue", "--json").stdout) == {"removed": 1}
    bad = abbild_cache(small, "queue", str(uuid.uuid4()), ok=False)
    assert bad.returncode == 2 and "abbild: error:" in bad.stderr


# -- configuration ---------------------------------------------------------------------------


def _api(tmp_path, text: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(text.format(dir=tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "api", "--config-file", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_abbild_api_refuses_a_cache_dir_without_a_cache_flavour_and_the_other_way_round(tmp_path):
    proc = _api(tmp_path, server_config(default="image_cache_dir = {dir}/cache"))
    assert proc.returncode == 2
    assert "flavor = noauth+cache" in proc.stderr and "unset image_cache_dir" in proc.stderr
    proc = _api(tmp_path, server_config(flavor="noauth+cache"))
    assert proc.returncode == 2
    assert "image_cache_dir is not set" in proc.stderr and "flavor = noauth" in proc.stderr


def test_graceful_shutdown_stops_the_cache_runner(make_server, tmp_path):
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(
        server_config(default="image_cache_dir = {dir}/cache\nimage_cache_prefetch_interval = 1\n").format(dir=tmp_path)
    )
    srv = make_server("--config-file", str(conf)).start()
    assert requests.get(f"{srv.url}/v2/cache").json() == {"cached_images": [], "queued_images": []}
    started = time.monotonic()
    srv.stop()
    assert srv.proc.returncode == 0, srv.read_log()
    assert time.monotonic() - started < 15
