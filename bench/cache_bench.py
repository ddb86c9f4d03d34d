#!/usr/bin/env python3
"""Cached downloads against uncached ones, in one run and on the same bytes.

Starts ``abbild serve`` itself, on a throwaway directory with two stores: ``local``
(filesystem) and ``ceph`` (RBD, from the environment ``tools/ceph-up.sh`` wrote), first
without a cache and then, on the same database and stores, with one. It uploads one
image to each store, then prints MiB/s and the server's CPU seconds per GiB for:

- a download from the filesystem store and from RBD, without a cache;
- the first download with the cache on (a miss: served from RBD and written to the
  cache in the same pass);
- a cache hit (served from the cache directory with sendfile);

and the ratios of the hit to the uncached downloads. Every download's md5 is checked.
For the miss it also prints its floor on this machine: the uncached RBD download plus
what the cache must add, measured in this process on the same bytes (one sha512 pass,
and writing a new file beside the cache, fsynced). On virtual machines whose freed
memory goes back to the host, growing the page cache costs most of that write.

    python bench/cache_bench.py --size-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import Api, CpuMeter, MiB, download, file_blocks, fmt, log, make_random_file, print_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_env(path: str) -> dict[str, str]:
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                name, value = line[len("export ") :].split("=", 1)
                env[name] = value.strip("'\"")
    return env


def config(workdir: str, ceph: dict[str, str], cache: bool) -> str:
    path = os.path.join(workdir, "cache.conf" if cache else "plain.conf")
    cache_line = f"image_cache_dir = {workdir}/cache\nimage_cache_max_size = {1 << 40}\n" if cache else ""
    with open(path, "w") as f:
        f.write(
            f"""[DEFAULT]
enabled_backends = local:filesystem, ceph:rbd
default_backend = local
{cache_line}
[database]
connection = sqlite:///{workdir}/abbild.sqlite

[local]
datadir = {workdir}/images

[ceph]
pool = {ceph.get("CEPH_RBD_POOL", "images")}
user = {ceph.get("CEPH_USER", "admin")}
ceph_conf = {ceph["CEPH_CONF"]}
keyring = {ceph["CEPH_ADMIN_KEYRING"]}
"""
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``abbild serve`` on a free port: one worker process, so the CPU meter sees it all."""

    def __init__(self, conf_path: str, log_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "abbild_cmd.cli", "serve", "--config-file", conf_path]
        command += ["--port", str(self.port), "--workers", "1"]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"), start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthcheck", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"abbild serve exited with {self.proc.returncode}; see {log_path}") from None
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"abbild serve did not answer within 60 s; see {log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


def best_download(api: Api, image_id: str, meter: CpuMeter, expected_md5: str, repeat: int) -> dict:
    results = []
    for _ in range(repeat):
        r = download(api, image_id, meter, with_md5=True)
        if r["md5"] != expected_md5:
            raise SystemExit(f"image {image_id}: downloaded md5 {r['md5']}, expected {expected_md5}")
        results.append(r)
    return min(results, key=lambda r: r["server_cpu_s_per_gib"])


def cache_work(source: str, directory: str) -> dict[str, float]:
    """CPU seconds per GiB, in this process, of what a miss adds to a download: hashing
    the data once (sha512, the default os_hash_algo) and writing it to a new file."""
    size = os.path.getsize(source)
    digest, hashing = hashlib.sha512(), 0.0
    for block in file_blocks(source):
        started = time.process_time()
        digest.update(block)
        hashing += time.process_time() - started
    path, writing = os.path.join(directory, "cache-work"), 0.0
    with open(path, "wb", buffering=0) as out:
        for block in file_blocks(source):
            started = time.process_time()
            out.write(block)
            writing += time.process_time() - started
        started = time.process_time()
        os.fsync(out.fileno())
        writing += time.process_time() - started
    # Kept until the run ends: the miss must not write into the pages this file freed,
    # but grow the page cache as this write did.
    per_gib = (1 << 30) / size
    return {"sha512": hashing * per_gib, "write": writing * per_gib}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=2, help="downloads per figure, the best kept (default %(default)s)")
    ap.add_argument("--ceph-env", default=os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh")
    ap.add_argument("--tmpdir", default=None, help="where the image file, data and cache go (default: $TMPDIR)")
    args = ap.parse_args(argv)
    ceph = read_env(args.ceph_env)
    size = args.size_mib * MiB
    workdir = tempfile.mkdtemp(prefix="abbild-cache-bench-", dir=args.tmpdir)
    server = None
    try:
        source = os.path.join(workdir, "image.raw")
        log(f"writing {args.size_mib} MiB of random data")
        make_random_file(source, size)
        expected_md5 = hashlib.md5()
        for block in file_blocks(source):
            expected_md5.update(block)
        expected_md5 = expected_md5.hexdigest()
        log_path = os.path.join(workdir, "server.log")

        server = Server(config(workdir, ceph, cache=False), log_path)
        api, meter = Api(server.url), CpuMeter(server.proc.pid)
        ids = {}
        for store in ("local", "ceph"):
            ids[store] = api.create_image()
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "X-Image-Meta-Store": store,
            }
            with open(source, "rb", buffering=0) as f:
                api.request("PUT", f"/v2/images/{ids[store]}/file", body=f, headers=headers, expect=204)
        rows = {}
        log("uncached downloads")
        rows["filesystem, no cache"] = best_download(api, ids["local"], meter, expected_md5, args.repeat)
        rows["rbd, no cache"] = best_download(api, ids["ceph"], meter, expected_md5, args.repeat)
        server.stop()

        log("what a miss adds, measured in this process")
        work = cache_work(source, workdir)
        server = Server(config(workdir, ceph, cache=True), log_path)
        api, meter = Api(server.url), CpuMeter(server.proc.pid)
        log("cache miss (rbd, written to the cache on the way)")
        rows["rbd, cache miss"] = best_download(api, ids["ceph"], meter, expected_md5, 1)
        log("cache hits")
        rows["cache hit"] = best_download(api, ids["ceph"], meter, expected_md5, args.repeat)
        for image_id in ids.values():
            api.delete_image(image_id)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print_table(
        f"Downloads of one {args.size_mib} MiB image (server CPU includes its children)",
        ["download", "MiB/s", "server CPU s/GiB"],
        [[name, fmt(r["mib_s"]), fmt(r["server_cpu_s_per_gib"], ".3f")] for name, r in rows.items()],
    )
    hit = rows["cache hit"]
    for name in ("filesystem, no cache", "rbd, no cache"):
        base = rows[name]
        print(
            f"cache hit vs {name}: {hit['mib_s'] / base['mib_s']:.2f}x the MiB/s, "
            f"{hit['server_cpu_s_per_gib'] / max(base['server_cpu_s_per_gib'], 1e-9):.2f}x the server CPU"
        )
    floor = rows["rbd, no cache"]["server_cpu_s_per_gib"] + work["sha512"] + work["write"]
    print(
        f"cache miss: {rows['rbd, cache miss']['server_cpu_s_per_gib']:.2f} s/GiB against a floor of {floor:.2f} "
        f"(rbd, no cache + sha512 {work['sha512']:.2f} + writing the copy {work['write']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
