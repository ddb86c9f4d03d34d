"""Server memory during big transfers: RSS growth of ``abbild serve`` while a
``--size-gib`` image goes up (Content-Length and chunked) and comes back down, on
the filesystem, s3 and rbd stores.

Starts ``abbild serve`` itself (one worker, noauth) on a throwaway config in
``--workdir``; s3 and rbd use the Ceph cluster of ``tools/ceph-up.sh`` (its env
file, ``$CEPH_DIR/env.sh``). The client never holds the image: it streams it from
a seeded generator (a 64 MiB random block, each 1 MiB of it prefixed with a
counter, so no two MiB are alike) and hashes it on the way, to check the md5
against the image's ``checksum``; the download is hashed and checked too.

RSS is the sum over the server's processes (the gunicorn master and its worker),
sampled every 100 ms; growth is the maximum during a transfer minus the sample
just before it. Target: below 64 MiB for every row. Each server first moves a
small image up and down unmeasured (``--warmup-mib``): what the first request of
a process loads once (boto3's models, connections, malloc arenas of new threads)
is not growth with the image's size.

    python3 bench/memory_bench.py --size-gib 1           # a quick check
    python3 bench/memory_bench.py                        # 10 GiB, all stores
    python3 bench/memory_bench.py --stores rbd --modes chunked
    python3 bench/memory_bench.py --stores s3 --set s3.large_object_part_size=8

Standard library only (plus boto3, when installed, to remove the s3 bucket).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from drivers_bench import log, read_env_file  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
BLOCK = 64 * MiB
TARGET_MIB = 64
SAMPLE_SECONDS = 0.1


# -- the data -----------------------------------------------------------------------------


def generated_chunks(size: int, seed: int = 15):
    """*size* bytes in 1 MiB chunks: a seeded 64 MiB random block, each MiB of it with
    its running number in front, so the stream never repeats. One chunk at a time."""
    block = random.Random(seed).randbytes(BLOCK)
    sent, number = 0, 0
    while sent < size:
        offset = (number * CHUNK) % BLOCK
        n = min(CHUNK, size - sent)
        head = number.to_bytes(8, "big")[:n]
        yield head + block[offset + len(head) : offset + n]
        sent += n
        number += 1


# -- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_section(store: str, workdir: str, extra: dict[str, str]) -> str:
    """The config lines of *store*, enabled as the only and default store ``bench``."""
    if store == "filesystem":
        body = f"datadir = {workdir}/images\n"
    else:
        ceph = read_env_file(os.path.join(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph"), "env.sh"))
        if not ceph:
            raise SystemExit(f'{store}: no Ceph cluster; start one with: eval "$(bash tools/ceph-up.sh)"')
        if store == "s3":
            body = (
                f"endpoint_url = {ceph['CEPH_RGW_ENDPOINT']}\naddressing_style = path\n"
                f"access_key = {ceph['CEPH_S3_ACCESS_KEY']}\nsecret_key = {ceph['CEPH_S3_SECRET_KEY']}\n"
                f"bucket = abbild-membench-{uuid.uuid4().hex[:8]}\ncreate_bucket = true\n"
            )
        elif store == "rbd":
            body = (
                f"pool = {ceph.get('CEPH_RBD_POOL', 'images')}\nuser = {ceph.get('CEPH_USER', 'admin')}\n"
                f"ceph_conf = {ceph['CEPH_CONF']}\nkeyring = {ceph['CEPH_ADMIN_KEYRING']}\n"
            )
        else:
            raise SystemExit(f"unknown store {store!r}")
    body += "".join(f"{name} = {value}\n" for name, value in extra.items())
    return f"[DEFAULT]\nenabled_backends = bench:{store}\ndefault_backend = bench\n\n[bench]\n{body}"


class Server:
    """``abbild serve`` (one worker) on a free port, in a session of its own."""

    def __init__(self, store: str, workdir: str, extra: dict[str, str]) -> None:
        self.store = store
        self.conf_path = os.path.join(workdir, f"{store}.conf")
        with open(self.conf_path, "w") as f:
            f.write(store_section(store, workdir, extra))
            f.write(f"\n[database]\nconnection = sqlite:///{workdir}/{store}.sqlite\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, f"{store}-server.log")
        command = [sys.executable, "-m", "abbild_cmd.cli", "serve", "--config-file", self.conf_path]
        command += ["--port", str(self.port), "--workers", "1", "--auth", "noauth"]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthcheck", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"abbild serve exited with {self.proc.returncode}; see {self.log_path}") from None
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"abbild serve did not answer within 60 s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server and all its descendants."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(child) for child in f.read().split())
        return found

    def rss(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


class RssSampler:
    """Samples the server's RSS every 100 ms while in the ``with`` block."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self):
        self.baseline = self.peak = self.server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.server.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# -- the client ---------------------------------------------------------------------------


class Api:
    def __init__(self, url: str) -> None:
        host, port = url.split("//")[1].split(":")
        self.host, self.port = host, int(port)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=3600)

    def json(self, method: str, path: str, body=None, expect=(200, 201, 204)):
        conn = self.connect()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, payload, headers)
            response = conn.getresponse()
            data = response.read()
            if response.status not in expect:
                raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data) if data else None
        finally:
            conn.close()

    def upload(self, image_id: str, size: int, chunked: bool) -> str:
        """Stream *size* generated bytes; :returns: their md5."""
        md5 = hashlib.md5()
        conn = self.connect()
        try:
            conn.putrequest("PUT", f"/v2/images/{image_id}/file")
            conn.putheader("Content-Type", "application/octet-stream")
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            else:
                conn.putheader("Content-Length", str(size))
            conn.endheaders()
            for chunk in generated_chunks(size):
                md5.update(chunk)
                if chunked:
                    conn.send(b"%x\r\n" % len(chunk))
                    conn.send(chunk)
                    conn.send(b"\r\n")
                else:
                    conn.send(chunk)
            if chunked:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            data = response.read()
            if response.status != 204:
                raise SystemExit(f"upload: {response.status} {data[:300]!r}")
        finally:
            conn.close()
        return md5.hexdigest()

    def download(self, image_id: str) -> tuple[int, str]:
        """:returns: bytes received and their md5."""
        md5, received = hashlib.md5(), 0
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        conn = self.connect()
        try:
            conn.request("GET", f"/v2/images/{image_id}/file")
            response = conn.getresponse()
            if response.status != 200:
                raise SystemExit(f"download: {response.status} {response.read()[:300]!r}")
            while n := response.readinto(buffer):
                md5.update(view[:n])
                received += n
        finally:
            conn.close()
        return received, md5.hexdigest()


def measure(server: Server, work) -> tuple[object, float, int]:
    with RssSampler(server) as sampler:
        started = time.monotonic()
        result = work()
        seconds = time.monotonic() - started
    return result, seconds, sampler.growth


def bench_store(
    store: str, modes: list[str], size: int, workdir: str, extra: dict[str, str], warmup: int
) -> list[dict]:
    rows = []
    server = Server(store, workdir, extra)
    try:
        api = Api(server.url)
        log(f"{store}: server up (pid {server.proc.pid}), RSS {server.rss() / MiB:.0f} MiB")
        if warmup:
            # Once through both paths, unmeasured: the first request of a process loads
            # code and data once for good (boto3's models, connection pools, thread
            # arenas), which is no growth with the image's size.
            image = api.json(
                "POST", "/v2/images", {"name": "membench-warmup", "disk_format": "raw", "container_format": "bare"}
            )
            api.upload(image["id"], warmup, chunked="chunked" in modes)
            api.download(image["id"])
            api.json("DELETE", f"/v2/images/{image['id']}", expect=(204, 404))
            log(f"{store}: warmed up with {warmup // MiB} MiB, RSS {server.rss() / MiB:.0f} MiB")
        for mode in modes:
            image = api.json(
                "POST", "/v2/images", {"name": f"membench-{mode}", "disk_format": "raw", "container_format": "bare"}
            )
            try:
                md5, seconds, growth = measure(
                    server, functools.partial(api.upload, image["id"], size, mode == "chunked")
                )
                stored = api.json("GET", f"/v2/images/{image['id']}")
                if stored["checksum"] != md5 or stored["size"] != size:
                    raise SystemExit(f"{store} {mode}: image has {stored['checksum']}/{stored['size']}, sent {md5}")
                rows.append(row(store, mode, "upload", size, seconds, growth))
                (received, down_md5), seconds, growth = measure(server, functools.partial(api.download, image["id"]))
                if (received, down_md5) != (size, md5):
                    raise SystemExit(f"{store} {mode}: downloaded {received} bytes, md5 {down_md5}, expected {md5}")
                rows.append(row(store, mode, "download", size, seconds, growth))
            finally:
                try:
                    api.json("DELETE", f"/v2/images/{image['id']}", expect=(204, 404))
                except SystemExit as exc:  # do not hide what failed before
                    log(f"{store}: could not delete image {image['id']}: {exc}; see {server.log_path}")
    finally:
        server.stop()
        if store == "s3":
            remove_bucket(server.conf_path)
    return rows


def row(store: str, mode: str, direction: str, size: int, seconds: float, growth: int) -> dict:
    r = {
        "store": store,
        "mode": mode,
        "direction": direction,
        "rss_growth_mib": growth / MiB,
        "mib_s": size / MiB / seconds,
    }
    log(f"  {store:10} {mode:8} {direction:8} RSS +{r['rss_growth_mib']:.1f} MiB  {r['mib_s']:.0f} MiB/s")
    return r


def remove_bucket(conf_path: str) -> None:
    """The bench's bucket is empty once its images are deleted; remove it if boto3 can."""
    settings = dict(line.split(" = ", 1) for line in open(conf_path).read().splitlines() if " = " in line)
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=settings["endpoint_url"],
            region_name="us-east-1",
            aws_access_key_id=settings["access_key"],
            aws_secret_access_key=settings["secret_key"],
        )
        client.delete_bucket(Bucket=settings["bucket"])
    except Exception as exc:  # noqa: BLE001 (a leftover empty bucket is harmless)
        log(f"s3: could not remove bucket {settings.get('bucket')}: {exc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=10, help="image size in GiB (default %(default)s)")
    ap.add_argument("--stores", default="filesystem,s3,rbd", help="comma-separated (default %(default)s)")
    ap.add_argument("--modes", default="length,chunked", help="upload modes: length (Content-Length), chunked")
    ap.add_argument("--workdir", help="throwaway config, database and filesystem store (default: a temp dir)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="STORE.OPTION=VALUE", help="a store option, repeatable"
    )
    ap.add_argument(
        "--warmup-mib", type=int, default=64, help="unmeasured transfer first, per store; 0: none (default %(default)s)"
    )
    ap.add_argument("--json", help="also write the rows as JSON to this path")
    args = ap.parse_args(argv)
    size = int(args.size_gib * GiB)
    modes = args.modes.split(",")
    extra: dict[str, dict[str, str]] = {}
    for item in args.set:
        target, value = item.split("=", 1)
        store, option = target.split(".", 1)
        extra.setdefault(store, {})[option] = value
    workdir = args.workdir or tempfile.mkdtemp(prefix="abbild-membench-", dir="/var/tmp")
    os.makedirs(workdir, exist_ok=True)
    keep = os.environ.get("MEMBENCH_KEEP")
    rows = []
    try:
        for store in args.stores.split(","):
            rows += bench_store(store, modes, size, workdir, extra.get(store, {}), args.warmup_mib * MiB)
    finally:
        if not args.workdir and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nServer RSS growth over a {args.size_gib:g} GiB transfer (sampled every 100 ms; target < {TARGET_MIB} MiB)"
    )
    print(f"{'store':10} {'upload':9} {'direction':9} {'RSS +MiB':>9} {'MiB/s':>7}  ok")
    for r in rows:
        ok = "yes" if r["rss_growth_mib"] < TARGET_MIB else "NO"
        upload = "CL" if r["mode"] == "length" else "chunked"
        print(f"{r['store']:10} {upload:9} {r['direction']:9} {r['rss_growth_mib']:9.1f} {r['mib_s']:7.0f}  {ok}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["rss_growth_mib"] < TARGET_MIB for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
