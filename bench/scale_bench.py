#!/usr/bin/env python3
"""Image metadata at scale: list, get and create latency with 100,000 images.

For a database URL (a SQLite file, or a PostgreSQL/MariaDB database that exists) it
seeds the images (bench/seed.py) unless the database has them already, brings the
schema to head (as ``abbild db sync``), starts ``abbild serve`` on it (2 workers x 16
threads, a throwaway config and data directory, the ``trusted-headers`` flavour so one
server answers both an administrator and a plain project) and prints, per request
shape, p50/p95 milliseconds and the server's CPU milliseconds per request (all its
processes, from /proc):

- GET one image;
- list pages, limit=100: the default sort, the common filters (name, status,
  visibility, owner, a common and a rare tag, a common and a rare property value,
  shared images by member_status) and sorts (name:asc, size:desc), each as the first page and a deep one (a marker far into the
  list), as an administrator and as a project;
- creates with 4 writer threads (creates/s, CPU ms each).

Then the same lists, gets and creates at registry level, in this process
(``SQLRegistry`` called directly), so the database's share of a request is visible.
The server is stopped at the end, whatever happens.

    python bench/scale_bench.py sqlite:////tmp/scale/abbild.sqlite
    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE scale'
    python bench/scale_bench.py postgresql+psycopg://postgres@127.0.0.1:5432/scale
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import psutil
from sqlalchemy import func, select, text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed as seeding  # noqa: E402

from abbild.db import migrate  # noqa: E402
from abbild.db.models import ImageRow  # noqa: E402
from abbild.db.registry import SQLRegistry  # noqa: E402
from abbild.image import Image, Status  # noqa: E402
from abbild.registry import ImageFilters, Viewer  # noqa: E402

LIMIT = 100
WRITERS = 4
DEEP = 50_000  # how far into the list the deep page's marker lies, at most

# (label, query parameters, the ImageFilters the API makes of them, sort)
SHAPES = [
    ("default", {}, ImageFilters(), []),
    (
        "name=",
        {"name": "ubuntu-22.04-server-x86_64"},
        ImageFilters(values={"name": ["ubuntu-22.04-server-x86_64"]}),
        [],
    ),
    ("status=queued", {"status": "queued"}, ImageFilters(values={"status": ["queued"]}), []),
    ("visibility=public", {"visibility": "public"}, ImageFilters(visibility="public"), []),
    ("visibility=shared", {"visibility": "shared"}, ImageFilters(visibility="shared"), []),
    ("owner=", {"owner": "<project>"}, ImageFilters(owner="<project>"), []),
    ("tag=golden", {"tag": "golden"}, ImageFilters(tags=["golden"]), []),
    ("os_distro=debian", {"os_distro": "debian"}, ImageFilters(properties={"os_distro": "debian"}), []),
    # few images have these (bench/seed.py: RARE_TAG, RARE_DISTRO)
    (f"tag={seeding.RARE_TAG}", {"tag": seeding.RARE_TAG}, ImageFilters(tags=[seeding.RARE_TAG]), []),
    (
        f"os_distro={seeding.RARE_DISTRO}",
        {"os_distro": seeding.RARE_DISTRO},
        ImageFilters(properties={"os_distro": seeding.RARE_DISTRO}),
        [],
    ),
    (
        "shared pending",
        {"visibility": "shared", "member_status": "pending"},
        ImageFilters(visibility="shared", member_status="pending"),
        [],
    ),
    ("sort=name:asc", {"sort": "name:asc"}, ImageFilters(), [("name", "asc")]),
    ("sort=size:desc", {"sort": "size:desc"}, ImageFilters(), [("size", "desc")]),
]


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


# -- the database ------------------------------------------------------------------------


def prepare_database(url: str, images: int, seed_value: int) -> SQLRegistry:
    registry = SQLRegistry(url=url)
    migrate.sync(registry.engine)
    with registry.engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(ImageRow))
    if count == 0:
        log(f"seeding {images} images")
        seeding.seed(url, images, seed_value, log=log)
    else:
        log(f"reusing the {count} images in the database")
    return registry


def busiest_member(registry: SQLRegistry) -> str:
    """The project with the most accepted shared images: the non-admin viewer."""
    query = text(
        "SELECT member FROM image_members WHERE status = 'accepted' AND deleted = :f "
        "GROUP BY member ORDER BY count(*) DESC, member LIMIT 1"
    )
    with registry.engine.connect() as conn:
        return conn.execute(query, {"f": False}).scalar()


def deep_marker(registry: SQLRegistry, sort: list, project: str | None) -> str:
    """An image the viewer may read, far into the list by *sort*'s first key: for a
    project one of its own images half way through them; for the administrator the
    image DEEP places in (at most two thirds of the images)."""
    key, direction = sort[0] if sort else ("created_at", "desc")
    order = f"{key} {'DESC' if direction == 'desc' else 'ASC'}, id"
    where = "deleted = :f AND status = 'active' AND visibility <> 'community'"
    params = {"f": False}
    if project is not None:
        where += " AND owner = :project"
        params["project"] = project
    if key in ("name", "size"):
        where += f" AND {key} IS NOT NULL"
    with registry.engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM images WHERE {where}"), params).scalar()
        offset = count // 2 if project is not None else min(DEEP, count * 2 // 3)
        return conn.execute(
            text(f"SELECT id FROM images WHERE {where} ORDER BY {order} LIMIT 1 OFFSET {offset}"), params
        ).scalar()


# -- the server --------------------------------------------------------------------------

CONFIG = """\
[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
node_staging_uri = file://{data_dir}/staging

[database]
connection = {url}

[paste_deploy]
flavor = trusted-headers

[local]
datadir = {data_dir}/images
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, workers: int, threads: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="abbild-scale-")
        os.makedirs(os.path.join(self.dir.name, "images"))
        config = os.path.join(self.dir.name, "abbild-api.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(data_dir=self.dir.name, url=url))
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                "abbild",
                "serve",
                "--config-file",
                config,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--auth",
                "trusted-headers",
            ],  # fmt: skip
            stdout=open(os.path.join(self.dir.name, "server.log"), "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Its start-up recovery may first requeue uploads whose claim ran out.
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("abbild serve did not come up")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(1.0)  # the workers to boot

    def cpu_seconds(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.dir.cleanup()


def headers_for(project: str | None) -> dict:
    if project is None:
        return {"X-Identity-Status": "Confirmed", "X-Roles": "admin", "X-Project-Id": "bench-admin"}
    return {"X-Identity-Status": "Confirmed", "X-Roles": "member,reader", "X-Project-Id": project}


def request(conn, method, path, headers, body=None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def measure_http(server: Server, label: str, path: str, headers: dict, count: int, results: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    for _ in range(3):
        status, body = request(conn, "GET", path, headers)
        if status != 200:
            raise SystemExit(f"{label}: GET {path} answered {status}: {body[:300]!r}")
    rows = len(json.loads(body).get("images", [])) if "images" in path else 1
    samples = []
    cpu = server.cpu_seconds()
    for _ in range(count):
        started = time.perf_counter()
        request(conn, "GET", path, headers)
        samples.append((time.perf_counter() - started) * 1000)
    cpu = (server.cpu_seconds() - cpu) * 1000 / count
    conn.close()
    p50, p95 = percentiles(samples)
    results.append((label, p50, p95, cpu, rows))
    print(f"http  {label:42s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  cpu {cpu:6.2f} ms/req  ({rows} rows)", flush=True)


def measure_creates(server: Server, total: int) -> list[str]:
    created: list[str] = []
    lock = threading.Lock()
    headers = {**headers_for(None), "Content-Type": "application/json"}

    def writer(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        for i in range(n):
            body = json.dumps({"name": f"scale-bench-{i}", "disk_format": "raw", "container_format": "bare"})
            status, answer = request(conn, "POST", "/v2/images", headers, body)
            if status != 201:
                raise SystemExit(f"create answered {status}: {answer[:300]!r}")
            with lock:
                created.append(json.loads(answer)["id"])
        conn.close()

    cpu = server.cpu_seconds()
    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(total // WRITERS,)) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = (server.cpu_seconds() - cpu) * 1000 / len(created)
    print(f"http  creates, {WRITERS} writers: {len(created) / elapsed:7.0f}/s  cpu {cpu:6.2f} ms/create", flush=True)
    return created


def delete_images(server: Server, ids: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    for image_id in ids:
        request(conn, "DELETE", f"/v2/images/{image_id}", headers_for(None))
    conn.close()


# -- registry level ------------------------------------------------------------------------


def timed(fn, count: int) -> tuple[float, float, float]:
    """p50 and p95 wall milliseconds of *fn*, and this process's CPU milliseconds per
    call (less disturbed by other work on the machine than the wall clock)."""
    for _ in range(2):
        fn()
    samples = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return (*percentiles(samples), (time.process_time() - cpu) * 1000 / count)


def registry_creates(registry: SQLRegistry, total: int) -> None:
    created: list[Image] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(n):
            image = registry.create_image(
                Image(id=str(uuid.uuid4()), name=f"scale-bench-{i}", owner="bench", visibility="private")
            )
            with lock:
                created.append(image)

    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=writer, args=(total // WRITERS,)) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = (time.process_time() - cpu) * 1000 / len(created)
    print(
        f"reg   create_image, {WRITERS} threads: {len(created) / elapsed:7.0f}/s  cpu {cpu:6.2f} ms/create", flush=True
    )
    for image in created:  # deleted again, as the API would
        image.status = Status.DELETED
        registry.save_image(image)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="database URL (SQLAlchemy)")
    parser.add_argument("--images", type=int, default=100_000, help="images to seed into an empty database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=30, help="measured requests per shape")
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--no-http", action="store_true", help="registry level only")
    parser.add_argument("--no-registry", action="store_true", help="HTTP only")
    args = parser.parse_args(argv)

    registry = prepare_database(args.url, args.images, args.seed)
    project = busiest_member(registry)
    with registry.engine.connect() as conn:
        one = conn.execute(
            text("SELECT id FROM images WHERE status = 'active' AND deleted = :f ORDER BY id LIMIT 1"), {"f": False}
        ).scalar()
    markers = {}
    for viewer_project in (None, project):
        for sort in {tuple(s) for *_, s in SHAPES}:
            markers[viewer_project, sort] = deep_marker(registry, list(sort), viewer_project)
    log(f"project viewer {project}; GET image {one}")

    def shapes():
        for who, viewer_project in (("admin", None), ("project", project)):
            for label, params, filters, sort in SHAPES:
                params = {k: (project if v == "<project>" else v) for k, v in params.items()}
                if filters.owner == "<project>":
                    filters = ImageFilters(owner=project)
                for page in ("first", "deep"):
                    marker = markers[viewer_project, tuple(sort)] if page == "deep" else None
                    query = {**params, "limit": LIMIT, **({"marker": marker} if marker else {})}
                    yield f"{who} {label} {page}", viewer_project, query, filters, sort, marker

    if not args.no_http:
        server = Server(args.url, args.workers, args.threads)
        try:
            results: list = []
            measure_http(server, "GET one image", f"/v2/images/{one}", headers_for(None), args.requests, results)
            for label, viewer_project, query, _, _, _ in shapes():
                path = "/v2/images?" + urllib.parse.urlencode(query)
                measure_http(server, label, path, headers_for(viewer_project), args.requests, results)
            if args.creates:
                delete_images(server, measure_creates(server, args.creates))
        finally:
            server.stop()

    if not args.no_registry:
        p50, p95, cpu = timed(lambda: registry.get_image(one), args.requests)
        print(f"reg   {'get_image':42s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  cpu {cpu:6.2f} ms/call", flush=True)
        for label, viewer_project, _, filters, sort, marker in shapes():
            viewer = Viewer(is_admin=True, project_id="bench-admin", roles=("admin",))
            if viewer_project is not None:
                viewer = Viewer(project_id=viewer_project, roles=("member", "reader"))
            rows = len(registry.list_images(filters, sort, LIMIT, marker, viewer))
            page = functools.partial(registry.list_images, filters, sort, LIMIT, marker, viewer)
            p50, p95, cpu = timed(page, args.requests)
            print(
                f"reg   {label:42s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  cpu {cpu:6.2f} ms/call  ({rows} rows)",
                flush=True,
            )
        if args.creates:
            registry_creates(registry, args.creates)
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
