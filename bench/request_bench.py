#!/usr/bin/env python3
"""Per-request cost of the API pipeline: latency and server CPU of small requests.

Measures a running server (it starts none, but with ``--floor``), noauth:

- GET one image: p50/p95 latency, and the server's CPU milliseconds per request; over
  HTTP also from ``--clients`` clients at once: rate, p50/p99 and the slowest;
- create image (POST /v2/images) with 1 and with 4 writer threads: rate per second
  and server CPU milliseconds per create;
- GET /v2/images?limit=100: p50 and server CPU milliseconds per request.

Server CPU is the utime+stime of ``--server-pid`` and all its descendants (gunicorn's
workers), from /proc, read before and after each phase; the client runs in this
process, so keep it on another core if you can (the figures include nothing of it).

With ``--config-file`` (the server's own: the embedded default writes
``<data dir>/abbild-api.conf``) the same requests also run in this process on the
WSGI app the paste pipeline builds, with no HTTP at all: the difference between the
two is the HTTP server's share. Every image it creates is deleted at the end.

With ``--floor`` it measures GETs only, and starts two servers of its own for the
floor under them: gunicorn's bare gthread worker and abbild's GracefulThreadWorker,
each serving a constant 1 KiB JSON answer (``--workers``/``--threads`` as ``abbild
serve``'s defaults), then GET /healthcheck and GET one image on ``--url`` (and on
every ``--also NAME=URL@PID``), round by round so that the load of a shared machine
weighs on each alike.

    abbild serve --data-dir /tmp/rb &
    python3 bench/request_bench.py --url http://127.0.0.1:9292 \\
        --server-pid $(pgrep -o -f 'abbild serve') --config-file /tmp/rb/abbild-api.conf
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IMAGE_BODY = json.dumps({"name": "request-bench", "disk_format": "raw", "container_format": "bare"}).encode()
JSON_HEADERS = {"Content-Type": "application/json"}


# ------------------------------------------------------------------------ server CPU


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _cpu_ticks(pid: int) -> int:
    """utime + stime of *pid* (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def server_cpu_seconds(pid: int | None) -> float:
    """CPU seconds used so far by *pid* and every process below it."""
    if pid is None:
        return 0.0
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        total += _cpu_ticks(p)
        pending += _children(p)
    return total / CLOCK_TICKS


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- clients


class HttpClient:
    """One keep-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        try:
            return self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # the server closed an idle keep-alive connection: once more, on a new one
            self.conn.close()
            return self._send(method, path, body, headers)

    def _send(self, method, path, body, headers) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


class WsgiClient:
    """The same requests on the WSGI app itself: no sockets, no HTTP parsing."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        import webob

        req = webob.Request.blank(path, method=method, headers=headers or {}, body=body or b"")
        if body is None:
            req.body = b""
        req.environ["REMOTE_ADDR"] = "127.0.0.1"
        resp = req.get_response(self.app)
        return resp.status_code, resp.body

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- phases


def _check(status: int, body: bytes, expected: int) -> None:
    if status != expected:
        raise SystemExit(f"expected {expected}, got {status}: {body[:300]!r}")


def timed_gets(client, path: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        status, body = client.request("GET", path)
        latencies.append(time.perf_counter() - start)
        _check(status, body, 200)
    return latencies


def on_clients(make_client, count: int, work) -> float:
    """``work(client)`` on *count* threads at once, each with a client of its own;
    returns the wall time, or raises the first error a thread met."""
    errors: list[BaseException] = []

    def thread() -> None:
        client = make_client()
        try:
            work(client)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=thread) for _ in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def creates(make_client, writers: int, per_writer: int, created: list[str]) -> float:
    """*writers* threads each creating *per_writer* images; returns the wall time."""
    lock = threading.Lock()

    def write(client) -> None:
        for _ in range(per_writer):
            status, body = client.request("POST", "/v2/images", IMAGE_BODY, JSON_HEADERS)
            _check(status, body, 201)
            with lock:
                created.append(json.loads(body)["id"])

    return on_clients(make_client, writers, write)


def concurrent_gets(make_client, path: str, clients: int, per_client: int, cpu, label: str) -> None:
    """*clients* threads, each on its own kept-alive connection, GET *path* *per_client*
    times: the server's rate, latency percentiles and CPU under that concurrency."""
    lock = threading.Lock()
    latencies: list[float] = []

    def read(client) -> None:
        mine = timed_gets(client, path, per_client)
        with lock:
            latencies.extend(mine)

    before = cpu()
    elapsed = on_clients(make_client, clients, read)
    used = cpu() - before
    n = len(latencies)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{label} GET image x{clients:<3}  n={n}  {n / elapsed:.0f}/s  p50 {_ms(statistics.median(latencies))} ms  "
        f"p99 {_ms(q[98])} ms  slowest {_ms(max(latencies))} ms  server CPU {_ms(used / n)} ms/req",
        flush=True,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def run(label: str, make_client, cpu, args) -> None:
    """All phases against one kind of client; *cpu* reads the CPU clock that is charged."""
    created: list[str] = []
    client = make_client()
    try:
        status, body = client.request("POST", "/v2/images", IMAGE_BODY, JSON_HEADERS)
        _check(status, body, 201)
        image_id = json.loads(body)["id"]
        created.append(image_id)
        # enough images for a full page of the list
        status, body = client.request("GET", "/v2/images?limit=100")
        missing = 100 - len(json.loads(body)["images"])
        if missing > 0:
            creates(make_client, 1, missing, created)

        path = f"/v2/images/{image_id}"
        timed_gets(client, path, max(args.requests // 10, 10))  # warm up
        for _ in range(args.repeat):
            before = cpu()
            lat = timed_gets(client, path, args.requests)
            used = cpu() - before
            q = statistics.quantiles(lat, n=20)
            print(
                f"{label} GET image      n={args.requests}  p50 {_ms(statistics.median(lat))} ms  "
                f"p95 {_ms(q[18])} ms  server CPU {_ms(used / args.requests)} ms/req",
                flush=True,
            )

        for clients in args.clients if label.strip() == "http" else []:
            for _ in range(args.repeat):
                concurrent_gets(make_client, path, clients, max(args.requests // clients, 10), cpu, label)

        for writers in (1, 4):
            per_writer = max(args.creates // writers, 1)
            for _ in range(args.repeat):
                before = cpu()
                elapsed = creates(make_client, writers, per_writer, created)
                used = cpu() - before
                n = writers * per_writer
                print(
                    f"{label} create x{writers}      n={n}  {n / elapsed:.0f}/s  server CPU {_ms(used / n)} ms/create",
                    flush=True,
                )

        lists = max(args.requests // 10, 20)
        for _ in range(args.repeat):
            before = cpu()
            lat = timed_gets(client, "/v2/images?limit=100", lists)
            used = cpu() - before
            print(
                f"{label} list limit=100 n={lists}  p50 {_ms(statistics.median(lat))} ms  "
                f"server CPU {_ms(used / lists)} ms/req ({_ms(used / lists / 100)} ms/image)",
                flush=True,
            )
    finally:
        for image_id in created:
            client.request("DELETE", f"/v2/images/{image_id}")
        client.close()


# ----------------------------------------------------------------------- the floor

FLOOR_BODY = json.dumps({"padding": "x" * 1000}).encode()[:1024]


def floor_app(environ, start_response):
    """The least a WSGI app can do: a constant 1 KiB JSON answer."""
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(FLOOR_BODY)))])
    return [FLOOR_BODY]


def serve_floor(kind: str, port: int, workers: int, threads: int) -> None:
    """Serve :func:`floor_app` on gunicorn's own gthread worker (``bare``) or on ours
    (``graceful``: abbild_cmd.server.GracefulThreadWorker, header reading and all)."""
    from gunicorn.app.base import BaseApplication

    class Floor(BaseApplication):
        client_header_timeout = 60
        client_body_timeout = 300

        def load_config(self):
            worker = "gthread"
            if kind == "graceful":
                from abbild_cmd.server import GracefulThreadWorker

                worker = GracefulThreadWorker
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "worker_class": worker,
                "workers": workers,
                "threads": threads,
                "keepalive": 5,
                "loglevel": "warning",
                "control_socket_disable": True,
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return floor_app

    Floor().run()


def start_floor(kind: str, port: int, workers: int, threads: int):
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", kind, "--port", str(port)]
        + ["--workers", str(workers), "--threads", str(threads)]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {kind} floor server did not start on port {port}")


def measure_gets(label: str, url: str, path: str, pid: int | None, args) -> None:
    client = HttpClient(url)
    try:
        timed_gets(client, path, max(args.requests // 10, 10))  # warm up
        for _ in range(args.repeat):
            before = server_cpu_seconds(pid)
            lat = timed_gets(client, path, args.requests)
            used = server_cpu_seconds(pid) - before
            print(
                f"{label:<36} n={args.requests}  p50 {_ms(statistics.median(lat))} ms  "
                f"server CPU {_ms(used / args.requests)} ms/req",
                flush=True,
            )
    finally:
        client.close()


def floor(args) -> None:
    """GET on the floor servers and on the running abbild server, rounds interleaved so
    that the machine's load weighs on each alike."""
    targets = []
    procs = []
    try:
        for offset, kind in enumerate(("bare", "graceful")):
            port = args.floor_port + offset
            proc = start_floor(kind, port, args.workers, args.threads)
            procs.append(proc)
            targets.append((f"{kind} gthread, 1 KiB", f"http://127.0.0.1:{port}", "/", proc.pid))
        servers = [("abbild", args.url, args.server_pid)] if args.url and args.server_pid else []
        for also in args.also or []:
            name, _, rest = also.partition("=")
            url, _, pid = rest.rpartition("@")
            servers.append((name, url, int(pid)))
        created = []
        for name, url, pid in servers:
            client = HttpClient(url)
            status, body = client.request("POST", "/v2/images", IMAGE_BODY, JSON_HEADERS)
            _check(status, body, 201)
            image_id = json.loads(body)["id"]
            client.close()
            created.append((url, image_id))
            targets.append((f"{name} GET /healthcheck", url, "/healthcheck", pid))
            targets.append((f"{name} GET /v2/images/{{id}}", url, f"/v2/images/{image_id}", pid))
        rounds = args.repeat
        args.repeat = 1
        for _ in range(rounds):
            for label, url, path, pid in targets:
                measure_gets(label, url, path, pid, args)
        for url, image_id in created:
            client = HttpClient(url)
            client.request("DELETE", f"/v2/images/{image_id}")
            client.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9292", help="a running abbild server (noauth)")
    parser.add_argument("--server-pid", type=int, help="its main process (gunicorn's arbiter): for server CPU")
    parser.add_argument("--config-file", action="append", help="the server's config: also measure in-process")
    parser.add_argument("--requests", type=int, default=1000, help="GETs per round")
    parser.add_argument("--creates", type=int, default=400, help="creates per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each phase")
    parser.add_argument("--no-http", action="store_true", help="in-process only")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10, 40],
        help="over HTTP, GET one image from this many clients at once too, each on its own connection "
        "(comma-separated; default 10,40)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="GET only: a bare gunicorn gthread worker and ours serving a constant answer "
        "(started here), then the server at --url (/healthcheck and one image), round by round",
    )
    parser.add_argument(
        "--also",
        action="append",
        metavar="NAME=URL@PID",
        help="with --floor: one more server to measure alike (say, the code before a change)",
    )
    parser.add_argument("--floor-port", type=int, default=9390, help="first port of the floor servers")
    parser.add_argument("--workers", type=int, default=1, help="floor servers' workers (abbild serve's default)")
    parser.add_argument("--threads", type=int, default=16, help="floor servers' threads (abbild serve's default)")
    parser.add_argument("--serve-floor", choices=("bare", "graceful"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_floor:
        serve_floor(args.serve_floor, args.port, args.workers, args.threads)
        return 0
    if args.floor:
        floor(args)
        return 0

    if not args.no_http:
        run("http ", lambda: HttpClient(args.url), lambda: server_cpu_seconds(args.server_pid), args)
    if args.config_file:
        from abbild_paste.pipeline import load_api

        app = load_api(args.config_file)
        # Single-threaded except the create x4 phase, whose client threads are this
        # process too: its CPU figure includes the (small) client side there.
        run("wsgi ", lambda: WsgiClient(app), process_cpu_seconds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
