#!/usr/bin/env python3
"""Benchmark a running abbild server (Glance Image API v2, noauth).

Measures, in one run and on the same bytes:

(a) the machine's limits: serial md5+sha512 hashing rate, concurrent md5 || sha512
    rate, raw file copy rate (write + fsync), a bare sendfile loopback server (the
    reference of a warm download) and the disk's O_DIRECT sequential read (the
    reference of a cold one: put --tmpdir on the disk of the store's datadir);
(b) image upload throughput, with Content-Length and with chunked transfer
    encoding (the client streams from a file, 1 MiB at a time, never buffering);
(c) image download throughput (to nowhere): the first download after the upload
    (cold: the filesystem store writes past the page cache), beside the disk read
    through the page cache the first time (any reader's limit for it), with
    ``--store-dir`` once more after evicting the image's file from the page cache
    (cold again, in page-cache memory used before), and the next (warm),
    the downloaded md5 checked against the image's ``checksum``, and -- with
    ``--server-pid`` -- the server's CPU
    seconds per GiB uploaded and downloaded (the process and all its children);
(d) metadata: image creates per second with a few concurrent keep-alive clients,
    and list latency (``limit=25``, ``limit=200``, paging through everything);
(e) the ratios the targets are stated in.

Only the standard library, plus psutil if installed (else /proc is read).
Every image it creates is deleted at the end.

    python bench/bench.py --url http://127.0.0.1:9292 --server-pid $(pgrep -o -f 'abbild serve')
    python bench/bench.py --only-limits
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import queue
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB

TARGET_UPLOAD_RATIO = 1.3  # upload MiB/s / serial md5+sha512 MiB/s, at least
TARGET_CPU_UPLOAD = 3.2  # server CPU seconds per GiB uploaded, at most
TARGET_CPU_DOWNLOAD = 0.2  # server CPU seconds per GiB downloaded, at most
# download MiB/s at least: cold / disk O_DIRECT read, warm / bare sendfile server
TARGET_DOWNLOAD_RATIO = 0.9

IMAGE_BODY = {"name": "bench", "disk_format": "raw", "container_format": "bare"}


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else float("inf")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[k]


def file_blocks(path: str, chunk: int = CHUNK):
    """Yield the file's bytes in *chunk*-sized blocks (a new bytes object each)."""
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(chunk)
            if not block:
                return
            yield block


def make_random_file(path: str, size: int) -> None:
    with open(path, "wb", buffering=0) as f:
        left = size
        while left > 0:
            n = min(CHUNK * 16, left)
            f.write(os.urandom(n))
            left -= n
        os.fsync(f.fileno())  # no writeback of this file competes with what follows


class CpuMeter:
    """CPU seconds (user + system) of a process and all its descendants.

    Reads psutil if it is installed, /proc otherwise. A child that exits between
    two samples takes its CPU time with it, so keep worker recycling off while
    measuring.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.sample()  # fail early if the pid is wrong

    def sample(self) -> float:
        if psutil is not None:
            root = psutil.Process(self.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
            return total
        return self._sample_proc()

    def _sample_proc(self) -> float:
        stats: dict[int, tuple[int, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(")") + 2 :].split()
            ppid = int(fields[1])
            cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
            stats[int(name)] = (ppid, cpu)
        if self.pid not in stats:
            raise ProcessLookupError(self.pid)
        wanted, total, frontier = {self.pid}, 0.0, [self.pid]
        while frontier:
            parent = frontier.pop()
            total += stats[parent][1]
            for pid, (ppid, _) in stats.items():
                if ppid == parent and pid not in wanted:
                    wanted.add(pid)
                    frontier.append(pid)
        return total


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine so far (user+nice+system+irq+softirq)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / tick


class Api:
    """A minimal Glance v2 client over http.client, one keep-alive connection."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 3600.0) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            raise SystemExit(f"only http:// URLs are supported, not {url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.prefix = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, blocksize=CHUNK)

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Accept": "application/json"}
        if self.token:
            h["X-Auth-Token"] = self.token
        if extra:
            h.update(extra)
        return h

    def request(self, method: str, path: str, body=None, headers=None, encode_chunked=False, expect=None):
        """Send one request, read the whole (small) response; returns (status, bytes)."""
        for attempt in (0, 1):
            try:
                self.conn.request(
                    method, self.prefix + path, body=body, headers=self.headers(headers), encode_chunked=encode_chunked
                )
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed: retry once, only when
                # the body can be sent again
                self.conn.close()
                self.conn = self._connect()
                if attempt or not (body is None or isinstance(body, (bytes, str))):
                    raise
        if resp.will_close:
            self.conn.close()
            self.conn = self._connect()
        if expect is not None and resp.status not in (expect if isinstance(expect, tuple) else (expect,)):
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:500]!r}")
        return resp.status, data

    def json(self, method: str, path: str, obj=None, expect=200):
        body = None if obj is None else json.dumps(obj).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        _, data = self.request(method, path, body=body, headers=headers, expect=expect)
        return json.loads(data) if data else None

    def create_image(self, **extra) -> str:
        return self.json("POST", "/v2/images", {**IMAGE_BODY, **extra}, expect=201)["id"]

    def delete_image(self, image_id: str) -> int:
        status, _ = self.request("DELETE", f"/v2/images/{image_id}", expect=(204, 404))
        return status

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- (a) machine limits


def limit_hash_serial(path: str) -> dict:
    md5, sha = hashlib.md5(), hashlib.sha512()
    n = 0
    t0 = time.perf_counter()
    for block in file_blocks(path):
        md5.update(block)
        sha.update(block)
        n += len(block)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt), "md5": md5.hexdigest(), "sha512": sha.hexdigest()}


def limit_hash_concurrent(path: str) -> dict:
    """md5 and sha512 on two threads fed by one reader, the way the server's
    ImageStream does it (bounded queues, 1 MiB chunks)."""
    hashes = [hashlib.md5(), hashlib.sha512()]
    queues = [queue.Queue(maxsize=4) for _ in hashes]
    done = object()

    def work(h, q):
        while (block := q.get()) is not done:
            h.update(block)

    threads = [threading.Thread(target=work, args=(h, q), daemon=True) for h, q in zip(hashes, queues)]
    n = 0
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for block in file_blocks(path):
        n += len(block)
        for q in queues:
            q.put(block)
    for q in queues:
        q.put(done)
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt)}


def limit_copy(path: str, tmpdir: str) -> dict:
    """Read the file and write a new one (os.write, fsync at the end)."""
    fd, dst = tempfile.mkstemp(prefix="abbild-bench-copy-", dir=tmpdir)
    n = 0
    try:
        t0 = time.perf_counter()
        for block in file_blocks(path):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            n += len(block)
        os.fsync(fd)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(dst)
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt)}


def limit_direct_read(path: str, block: int = 16 * MiB) -> dict:
    """What the disk delivers: one sequential pass over the file with O_DIRECT (past the
    page cache, whatever it holds), *block* bytes per aligned read. The reference of a
    cold download; put --tmpdir on the disk of the store's datadir."""
    import mmap

    if not hasattr(os, "O_DIRECT"):
        return {"seconds": None, "bytes": 0, "mib_s": None, "error": "no O_DIRECT on this platform"}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:  # tmpfs and a few others refuse O_DIRECT
        return {"seconds": None, "bytes": 0, "mib_s": None, "error": str(e)}
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT wants
    n = 0
    try:
        t0 = time.perf_counter()
        while k := os.preadv(fd, [buf], n):
            n += k
        dt = time.perf_counter() - t0
    except OSError as e:
        return {"seconds": None, "bytes": 0, "mib_s": None, "error": str(e)}
    finally:
        os.close(fd)
        buf.close()
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt)}


def limit_first_buffered_read(path: str, tmpdir: str, block: int = 16 * MiB) -> dict:
    """What any reader gets from the disk through the page cache the first time: a
    copy of the file written with O_DIRECT (as the store writes an upload, untimed),
    then one sequential buffered pass over it into a reused buffer (timed), as a cold
    download reads it. The pages it fills are taken fresh, like a first download's;
    on some VMs (memory the host backs on first touch) that costs more than the disk.
    Run it after the cold download: the pages it frees would make that one warmer."""
    import mmap

    buf = mmap.mmap(-1, block)
    n = 0
    try:
        with direct_copy(path, tmpdir, buf) as (dst, _, _):
            fd = os.open(dst, os.O_RDONLY)
            try:
                evict(fd)  # nothing of it cached, whatever the filesystem did
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # as the store's reader
                t0 = time.perf_counter()
                while k := os.readv(fd, [buf]):
                    n += k
                dt = time.perf_counter() - t0
                evict(fd)
            finally:
                os.close(fd)
    except OSError as e:  # tmpfs and a few others refuse O_DIRECT
        return {"seconds": None, "bytes": 0, "mib_s": None, "error": str(e)}
    finally:
        buf.close()
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt)}


def evict(fd: int) -> None:
    """Drop a file's pages from the page cache (written back already: they are clean)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def limit_direct_write(path: str, tmpdir: str, block: int = 16 * MiB) -> dict:
    """What the disk takes: the file (from the page cache) written to a new file in
    *tmpdir* with O_DIRECT, *block* bytes per aligned write, fsynced. The ceiling of an
    upload to the filesystem store, which writes the same way; put --tmpdir on the disk
    of the store's datadir."""
    import mmap

    buf = mmap.mmap(-1, block)
    try:
        with direct_copy(path, tmpdir, buf) as (_, n, dt):
            pass
    except OSError as e:  # tmpfs and a few others refuse O_DIRECT
        return {"seconds": None, "bytes": 0, "mib_s": None, "error": str(e)}
    finally:
        buf.close()
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt)}


@contextlib.contextmanager
def direct_copy(path: str, tmpdir: str, buf):
    """A copy of *path* in *tmpdir*, written with O_DIRECT through the page-aligned
    *buf* (the tail, unless aligned, through the page cache, as the store writes it)
    and fsynced: ``(its path, bytes, seconds the writing took)``; removed afterwards.

    :raises OSError: the filesystem refuses O_DIRECT (tmpfs and a few others)."""
    if not hasattr(os, "O_DIRECT"):
        raise OSError("no O_DIRECT on this platform")
    fd_out, dst = tempfile.mkstemp(prefix="abbild-bench-direct-", dir=tmpdir)
    n = 0
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_DIRECT)
        try:
            with open(path, "rb", buffering=0) as src:
                t0 = time.perf_counter()
                while k := src.readinto(buf):
                    os.write(fd if k % 4096 == 0 else fd_out, memoryview(buf)[:k])
                    n += k
                os.fsync(fd)
                os.fsync(fd_out)
                dt = time.perf_counter() - t0
        finally:
            os.close(fd)
        yield dst, n, dt
    finally:
        os.close(fd_out)
        os.unlink(dst)


def limit_sendfile(path: str) -> dict:
    """The cheapest possible download on this machine: one bare os.sendfile of the
    (page-cached) file to a loopback socket, read like bench's download client reads.
    Its CPU time is the floor for a server's CPU per GiB downloaded."""
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def serve():
        conn, _ = listener.accept()
        with conn, open(path, "rb") as f:
            cpu0 = time.thread_time()  # this thread's user + system time: sendfile is all kernel
            size, offset = os.fstat(f.fileno()).st_size, 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
            result["cpu"] = time.thread_time() - cpu0

    sender = threading.Thread(target=serve)
    sender.start()
    buf = memoryview(bytearray(CHUNK))
    n = 0
    t0 = time.perf_counter()
    with socket.create_connection(listener.getsockname()) as client:
        while k := client.recv_into(buf):
            n += k
    dt = time.perf_counter() - t0
    sender.join()
    listener.close()
    return {"seconds": dt, "bytes": n, "mib_s": mib_s(n, dt), "cpu_s_per_gib": result["cpu"] * (1 << 30) / n}


def machine_limits(path: str, tmpdir: str, repeat: int = 2) -> dict:
    """Each limit is measured *repeat* times; the best run counts (the machine can
    do at least that), the others are kept under "runs"."""
    for _ in file_blocks(path):  # warm the page cache so every test reads the same way
        pass
    out = {}
    for key, label, fn in (
        ("hash_serial", "serial md5+sha512", lambda: limit_hash_serial(path)),
        ("hash_concurrent", "concurrent md5 || sha512", lambda: limit_hash_concurrent(path)),
        ("copy", "file copy + fsync", lambda: limit_copy(path, tmpdir)),
        ("sendfile", "bare sendfile to loopback", lambda: limit_sendfile(path)),
        ("direct_read", "disk O_DIRECT sequential read", lambda: limit_direct_read(path)),
        ("direct_write", "disk O_DIRECT sequential write", lambda: limit_direct_write(path, tmpdir)),
    ):
        runs = []
        for i in range(max(1, repeat)):
            log(f"limits: {label} ({i + 1}/{repeat})")
            runs.append(fn())
        best = dict(max(runs, key=lambda r: r["mib_s"] or 0))
        best["runs"] = [round(r["mib_s"] or 0, 1) for r in runs]
        out[key] = best
    return out


class StealMeter:
    """Share of CPU time the hypervisor took (steal) and I/O wait, machine-wide."""

    @staticmethod
    def read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def __enter__(self):
        self.t0 = self.read() if os.path.exists("/proc/stat") else None
        return self

    def __exit__(self, *exc):
        if self.t0 is None:
            self.steal = self.iowait = None
            return False
        d = [b - a for a, b in zip(self.t0, self.read())]
        total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
        self.iowait, self.steal = d[4] / total, d[7] / total
        return False


# --------------------------------------------------------------------------- (b), (c) transfers


class Measure:
    """Wall time, client CPU and (optionally) server CPU around a block."""

    def __init__(self, meter: CpuMeter | None) -> None:
        self.meter = meter

    def __enter__(self):
        self.s0 = self.meter.sample() if self.meter else None
        self.m0 = machine_busy()
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.client_cpu = time.process_time() - self.c0
        self.server_cpu = (self.meter.sample() - self.s0) if self.meter else None
        m1 = machine_busy()
        # CPU the rest of the machine used meanwhile (other processes, kernel threads
        # such as writeback), in cores: only known when the server's CPU is known
        self.other_cores = None
        if self.m0 is not None and m1 is not None and self.server_cpu is not None and self.seconds > 0:
            self.other_cores = (m1 - self.m0 - self.client_cpu - self.server_cpu) / self.seconds
        return False

    def result(self, nbytes: int) -> dict:
        r = {
            "seconds": self.seconds,
            "bytes": nbytes,
            "mib_s": mib_s(nbytes, self.seconds),
            "client_cpu_s_per_gib": self.client_cpu * GiB / nbytes if nbytes else None,
            "other_cores": self.other_cores,
        }
        if self.server_cpu is not None:
            r["server_cpu_s"] = self.server_cpu
            r["server_cpu_s_per_gib"] = self.server_cpu * GiB / nbytes if nbytes else None
        return r


def upload(api: Api, image_id: str, path: str, size: int, chunked: bool, meter: CpuMeter | None) -> dict:
    headers = {"Content-Type": "application/octet-stream"}
    with Measure(meter) as m:
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
            api.request(
                "PUT",
                f"/v2/images/{image_id}/file",
                body=file_blocks(path),
                headers=headers,
                encode_chunked=True,
                expect=204,
            )
        else:
            headers["Content-Length"] = str(size)
            with open(path, "rb", buffering=0) as f:  # http.client sends it blocksize (1 MiB) at a time
                api.request("PUT", f"/v2/images/{image_id}/file", body=f, headers=headers, expect=204)
    return m.result(size)


def download(api: Api, image_id: str, meter: CpuMeter | None, with_md5: bool) -> dict:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    md5 = hashlib.md5() if with_md5 else None
    n = 0
    with Measure(meter) as m:
        api.conn.request("GET", f"{api.prefix}/v2/images/{image_id}/file", headers=api.headers())
        resp = api.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET file: HTTP {resp.status} {resp.read()[:500]!r}")
        while True:
            k = resp.readinto(view)
            if not k:
                break
            n += k
            if md5 is not None:
                md5.update(view[:k])
        if resp.will_close:
            api.conn.close()
            api.conn = api._connect()
    r = m.result(n)
    if md5 is not None:
        r["md5"] = md5.hexdigest()
    r["content_length"] = resp.getheader("Content-Length")
    return r


# --------------------------------------------------------------------------- (d) metadata


def bench_creates(api_factory, count: int, threads: int) -> dict:
    ids: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(count))

    def work():
        api = api_factory()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    image_id = api.create_image(name=f"bench-{i}")
                except Exception as e:  # keep going; report at the end
                    with lock:
                        errors.append(str(e))
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    ids.append(image_id)
                    latencies.append(dt)
        finally:
            api.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {
        "ids": ids,
        "errors": errors,
        "seconds": wall,
        "per_s": len(ids) / wall if wall > 0 else 0.0,
        "median_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p95_ms": percentile(latencies, 95) * 1000 if latencies else None,
    }


def bench_list(api: Api, limit: int, repeat: int) -> dict:
    lat = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        api.json("GET", f"/v2/images?limit={limit}")
        lat.append(time.perf_counter() - t0)
    return {"n": len(lat), "median_ms": statistics.median(lat) * 1000, "p95_ms": percentile(lat, 95) * 1000}


def bench_paging(api: Api, limit: int, max_pages: int = 100000) -> dict:
    lat, seen = [], 0
    path = f"/v2/images?limit={limit}"
    t0 = time.perf_counter()
    while path and len(lat) < max_pages:
        t1 = time.perf_counter()
        page = api.json("GET", path)
        lat.append(time.perf_counter() - t1)
        seen += len(page.get("images", []))
        nxt = page.get("next")
        if nxt:
            # Glance gives "/v2/images?marker=..."; keep whatever prefix --url has
            u = urllib.parse.urlsplit(nxt)
            path = u.path + (f"?{u.query}" if u.query else "")
            if api.prefix and path.startswith(api.prefix):
                path = path[len(api.prefix) :]
        else:
            path = None
    total = time.perf_counter() - t0
    return {
        "pages": len(lat),
        "images": seen,
        "seconds": total,
        "median_ms": statistics.median(lat) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
    }


# --------------------------------------------------------------------------- report


def fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def report(res: dict) -> None:
    lim = res["limits"]
    print_table(
        f"(a) machine limits, same {res['size_mib']} MiB, this run",
        ["what", "MiB/s (best)", "seconds", "all runs MiB/s"],
        [
            [label, fmt(lim[k]["mib_s"]), fmt(lim[k]["seconds"], ".2f"), " ".join(map(str, lim[k]["runs"]))]
            for k, label in (
                ("hash_serial", "serial md5+sha512"),
                ("hash_concurrent", "concurrent md5 || sha512"),
                ("copy", "file copy (write + fsync)"),
                ("sendfile", "bare sendfile to loopback"),
                ("direct_read", "disk O_DIRECT sequential read (16 MiB reads)"),
                ("direct_write", "disk O_DIRECT sequential write (16 MiB writes)"),
            )
            if k in lim
        ],
    )
    if lim.get("direct_read", {}).get("error"):
        print(f"  disk O_DIRECT read: not measured ({lim['direct_read']['error']})")
    print(
        f"  bare sendfile: {lim['sendfile']['cpu_s_per_gib']:.3f} s CPU per GiB (best run): the floor for"
        " a server's download CPU on this machine"
    )
    if res.get("steal") is not None:
        print(f"  machine-wide during the whole run: steal {res['steal']:.1%}, iowait {res['iowait']:.1%}")
    if "transfers" in res:
        rows = []
        for key, label in (
            ("upload_cl", "upload, Content-Length"),
            ("upload_chunked", "upload, chunked"),
            ("disk_read_adjacent", "disk O_DIRECT read, just before the cold download"),
            ("download", "download, cold (to nowhere)"),
            ("first_buffered_read", "disk read via page cache, first time, just after"),
            ("download_evicted", "download, cold again (file evicted)"),
            ("download_warm", "download, warm (to nowhere), best run"),
            ("download_md5", "download + md5 (verify)"),
        ):
            r = res["transfers"].get(key)
            if r and r.get("mib_s"):
                rows.append(
                    [
                        label,
                        fmt(r["mib_s"]),
                        fmt(r["seconds"], ".2f"),
                        fmt(r.get("server_cpu_s_per_gib"), ".3f"),
                        fmt(r.get("client_cpu_s_per_gib"), ".3f"),
                        fmt(r.get("other_cores"), ".2f"),
                    ]
                )
        print_table(
            f"(b, c) transfers of a {res['size_mib']} MiB image",
            ["what", "MiB/s", "seconds", "server CPU s/GiB", "client CPU s/GiB", "other cores busy"],
            rows,
        )
        print(
            "  other cores busy: CPU used meanwhile by everything but this client and the server (other\n"
            "  processes, kernel writeback), averaged; well above 0.1 means the run was disturbed."
        )
        for line in res["transfers"].get("checks", []):
            print(f"  check: {line}")
    if "metadata" in res:
        md = res["metadata"]
        c = md["creates"]
        rows = [
            [
                f"create x{len(c['ids'])} ({md['threads']} clients)",
                f"{c['per_s']:.1f}/s",
                fmt(c["median_ms"], ".2f"),
                fmt(c["p95_ms"], ".2f"),
            ]
        ]
        for key in ("list25", "list200"):
            r = md[key]
            rows.append(
                [f"GET /v2/images?limit={key[4:]} (x{r['n']})", "", fmt(r["median_ms"], ".2f"), fmt(r["p95_ms"], ".2f")]
            )
        p = md["paging"]
        rows.append(
            [
                f"page through all, limit={md['page_limit']} ({p['pages']} pages, {p['images']} images, {p['seconds']:.2f} s)",
                "",
                fmt(p["median_ms"], ".2f"),
                fmt(p["p95_ms"], ".2f"),
            ]
        )
        print_table("(d) metadata", ["what", "rate", "median ms", "p95 ms"], rows)
        if c["errors"]:
            print(f"  {len(c['errors'])} create errors, first: {c['errors'][0]}")
    if "transfers" in res:
        t, serial = res["transfers"], lim["hash_serial"]["mib_s"]
        rows = []
        for key, label in (
            ("upload_cl", "upload CL / serial hash"),
            ("upload_chunked", "upload chunked / serial hash"),
        ):
            if key in t:
                ratio = t[key]["mib_s"] / serial
                rows.append(
                    [
                        label,
                        f"{ratio:.2f}",
                        f">= {TARGET_UPLOAD_RATIO}",
                        "PASS" if ratio >= TARGET_UPLOAD_RATIO else "FAIL",
                    ]
                )
        disk = t.get("disk_read_adjacent", {}).get("mib_s") or lim.get("direct_read", {}).get("mib_s")
        first = t.get("first_buffered_read", {}).get("mib_s")
        slower = min(disk or math.inf, lim["sendfile"]["mib_s"])
        for key, label, ref, ref_label in (
            ("download", "download cold MiB/s / disk O_DIRECT read", disk, "adjacent"),
            ("download", "download cold MiB/s / disk O_DIRECT read", lim.get("direct_read", {}).get("mib_s"), "best"),
            ("download", "download cold MiB/s / disk read via page cache", first, "first time"),
            ("download_evicted", "download cold again MiB/s / disk O_DIRECT read", disk, "adjacent"),
            # From the disk to a socket: the slower of the two is the ceiling.
            ("download_evicted", "download cold again MiB/s / slower of disk, sendfile", slower, "ceiling"),
            ("download_warm", "download warm MiB/s / bare sendfile", lim["sendfile"]["mib_s"], "best"),
        ):
            if key in t and ref:
                ratio = t[key]["mib_s"] / ref
                rows.append(
                    [
                        f"{label} ({ref_label}: {ref:.0f})",
                        f"{ratio:.2f}",
                        f">= {TARGET_DOWNLOAD_RATIO}",
                        "PASS" if ratio >= TARGET_DOWNLOAD_RATIO else "FAIL",
                    ]
                )
        for key, label in (
            ("download", "server CPU s/GiB download, cold"),
            ("download_evicted", "server CPU s/GiB download, cold again"),
            ("download_warm", "server CPU s/GiB download, warm"),
        ):
            if key not in t:
                continue
            d = t[key].get("server_cpu_s_per_gib")
            rows.append(
                [
                    label,
                    fmt(d, ".3f"),
                    f"<= {TARGET_CPU_DOWNLOAD}",
                    "-" if d is None else ("PASS" if d <= TARGET_CPU_DOWNLOAD else "FAIL"),
                ]
            )
        warm = t.get("download_warm", {}).get("server_cpu_s_per_gib")
        if warm is not None:
            rows.append(
                ["download warm CPU / bare sendfile CPU", f"{warm / lim['sendfile']['cpu_s_per_gib']:.2f}", "", ""]
            )
        for key, label in (
            ("upload_cl", "server CPU s/GiB upload CL"),
            ("upload_chunked", "server CPU s/GiB upload chunked"),
        ):
            u = t.get(key, {}).get("server_cpu_s_per_gib")
            if u is not None:
                rows.append(
                    [label, f"{u:.3f}", f"<= {TARGET_CPU_UPLOAD}", "PASS" if u <= TARGET_CPU_UPLOAD else "FAIL"]
                )
        write = lim.get("direct_write", {}).get("mib_s")
        for key, label in (
            ("upload_cl", "upload CL / disk O_DIRECT write"),
            ("upload_chunked", "upload chunked / disk O_DIRECT write"),
        ):
            if key in t and write:
                # No upload to the filesystem store can beat the disk: where the disk
                # writes slower than 1.3x the serial hash, this is the ratio to read.
                rows.append([f"{label} ({write:.0f})", f"{t[key]['mib_s'] / write:.2f}", "", ""])
        print_table("(e) targets", ["ratio", "value", "target", ""], rows)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", default="http://127.0.0.1:9292", help="the server's base URL (default %(default)s)")
    ap.add_argument("--token", help="X-Auth-Token to send (not needed with noauth)")
    ap.add_argument("--size-mib", type=int, default=1024, help="image size for transfers (default %(default)s)")
    ap.add_argument(
        "--images", type=int, default=2000, help="images to create for the metadata part (default %(default)s)"
    )
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients for creates (default %(default)s)")
    ap.add_argument(
        "--page-limit", type=int, default=200, help="page size when paging through all (default %(default)s)"
    )
    ap.add_argument("--server-pid", type=int, help="server pid: report its CPU time (incl. child processes)")
    ap.add_argument("--tmpdir", default=None, help="where the random file and the copy go (default: $TMPDIR)")
    ap.add_argument(
        "--store-dir",
        help="the filesystem store's datadir (abbild serve --data-dir D: D/images): "
        "also download the image again after evicting its file from the page cache",
    )
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs of each machine limit; the best counts (default %(default)s)"
    )
    ap.add_argument("--only-limits", action="store_true", help="measure the machine limits only (no server needed)")
    ap.add_argument("--skip-transfers", action="store_true", help="skip upload/download")
    ap.add_argument("--skip-metadata", action="store_true", help="skip creates/lists")
    ap.add_argument("--no-verify", action="store_true", help="skip the second download that checks md5")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)

    size = args.size_mib * MiB
    tmpdir = args.tmpdir or tempfile.gettempdir()
    meter = CpuMeter(args.server_pid) if args.server_pid else None
    res: dict = {"size_mib": args.size_mib, "url": args.url}
    created: list[str] = []
    api = None

    steal = StealMeter()
    fd, src = tempfile.mkstemp(prefix="abbild-bench-src-", dir=tmpdir)
    os.close(fd)
    try:
        log(f"writing {args.size_mib} MiB of random bytes to {src}")
        make_random_file(src, size)
        steal.__enter__()
        res["limits"] = machine_limits(src, tmpdir, args.repeat)
        if args.only_limits:
            return 0

        api = Api(args.url, args.token)
        if not args.skip_transfers:
            t = res["transfers"] = {"checks": []}
            want_md5, want_sha = res["limits"]["hash_serial"]["md5"], res["limits"]["hash_serial"]["sha512"]
            for key, chunked in (("upload_cl", False), ("upload_chunked", True)):
                image_id = api.create_image(name=f"bench-{key}")
                created.append(image_id)
                log(f"{key}: PUT {args.size_mib} MiB to image {image_id}")
                try:
                    t[key] = upload(api, image_id, src, size, chunked, meter)
                except (OSError, RuntimeError, http.client.HTTPException) as e:
                    # Say so, and measure the rest: one broken upload mode should
                    # not hide the others or the downloads.
                    t["checks"].append(f"{key}: FAILED: {e!r}")
                    log(f"{key}: FAILED: {e!r}")
                    api.conn.close()
                    api.conn = api._connect()
                    continue
                t[key]["image_id"] = image_id
                meta = api.json("GET", f"/v2/images/{image_id}")
                ok = meta.get("checksum") == want_md5 and meta.get("size") == size
                t["checks"].append(
                    f"{key}: size {meta.get('size')} checksum {meta.get('checksum')} "
                    f"{'==' if meta.get('checksum') == want_md5 else '!='} local md5 -> {'OK' if ok else 'MISMATCH'}"
                )
                if meta.get("os_hash_algo") == "sha512":
                    t["checks"].append(
                        f"{key}: os_hash_value {'==' if meta.get('os_hash_value') == want_sha else '!='} local sha512"
                    )
            image_id = next((t[k]["image_id"] for k in ("upload_cl", "upload_chunked") if k in t), None)
            if image_id is None:
                raise SystemExit("no upload succeeded: nothing to download")
            # The first read comes from the disk (the filesystem store writes with O_DIRECT,
            # past the page cache); the second from the page cache, which is what a
            # sendfile server is usually measured on. Both are shown.
            # The disk's speed swings with what else runs: read it right before as well.
            log("disk O_DIRECT read, just before the cold download")
            t["disk_read_adjacent"] = limit_direct_read(src)
            log(f"download: GET image {image_id} (cold: from the disk)")
            t["download"] = download(api, image_id, meter, with_md5=False)
            log("the disk read through the page cache, first time, just after the cold download")
            t["first_buffered_read"] = limit_first_buffered_read(src, tmpdir)
            if args.store_dir:
                stored = os.path.join(args.store_dir, image_id)
                log(f"download: GET image {image_id} (cold again: {stored} evicted from the page cache)")
                with open(stored, "rb") as f:
                    evict(f.fileno())
                t["download_evicted"] = download(api, image_id, meter, with_md5=False)
            # Best of --repeat, as the limits it is compared with (a warm download can be repeated).
            runs = []
            for i in range(max(1, args.repeat)):
                log(f"download: GET image {image_id} (warm: from the page cache) ({i + 1}/{args.repeat})")
                runs.append(download(api, image_id, meter, with_md5=False))
            t["download_warm"] = dict(max(runs, key=lambda r: r["mib_s"]))
            t["download_warm"]["runs"] = [round(r["mib_s"], 1) for r in runs]
            t["checks"].append(
                "download warm, all runs MiB/s: "
                + " ".join(f"{r['mib_s']:.0f} ({r.get('server_cpu_s_per_gib') or 0:.3f} s/GiB)" for r in runs)
            )
            if not args.no_verify:
                log("download again, computing md5")
                t["download_md5"] = download(api, image_id, meter, with_md5=True)
                checksum = api.json("GET", f"/v2/images/{image_id}").get("checksum")
                got = t["download_md5"]["md5"]
                t["checks"].append(
                    f"download: md5 {got} {'==' if got == checksum else '!='} checksum {checksum} -> "
                    f"{'OK' if got == checksum else 'MISMATCH'}"
                )
        if not args.skip_metadata:
            md = res["metadata"] = {"threads": args.threads, "page_limit": args.page_limit}
            log(f"creating {args.images} images with {args.threads} clients")
            c = md["creates"] = bench_creates(lambda: Api(args.url, args.token), args.images, args.threads)
            created.extend(c["ids"])
            log("listing")
            md["list25"] = bench_list(api, 25, 50)
            md["list200"] = bench_list(api, 200, 20)
            md["paging"] = bench_paging(api, args.page_limit)
    finally:
        if created:
            log(f"deleting {len(created)} images")
            _delete_all(args, created)
        if api is not None:
            api.close()
        os.unlink(src)
        if hasattr(steal, "t0"):
            steal.__exit__(None, None, None)
            res["steal"], res["iowait"] = steal.steal, steal.iowait
        if "limits" in res:
            report(res)
        if args.json:
            out = json.loads(json.dumps(res, default=str))
            out.get("metadata", {}).get("creates", {}).pop("ids", None)
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
    return 0


def _delete_all(args, ids: list[str]) -> None:
    todo = queue.Queue()
    for i in ids:
        todo.put(i)
    failed = []

    def work():
        api = Api(args.url, args.token)
        try:
            while True:
                try:
                    image_id = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    api.delete_image(image_id)
                except Exception as e:
                    failed.append(f"{image_id}: {e}")
        finally:
            api.close()

    threads = [threading.Thread(target=work) for _ in range(max(1, args.threads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        log(f"{len(failed)} deletes failed, first: {failed[0]}")


if __name__ == "__main__":
    sys.exit(main())
