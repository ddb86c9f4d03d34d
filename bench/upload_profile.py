"""Upload throughput and server CPU per GiB, side by side with serial md5+sha512.

Each round hashes the source file serially (the reference, from the page cache) and
then uploads it in every mode: Content-Length (1 MiB sends), chunked with 1 MiB
chunks (http.client) and chunked with 64 KiB chunks through requests, as
python-glanceclient sends them. Prints every round, then the best and the median.

    abbild serve --port 9377 --data-dir /tmp/d &
    python3 bench/upload_profile.py --url http://127.0.0.1:9377 --server-pid <pid> --size-mib 512
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

import bench  # the sibling script: its client, CPU meter and random file

MiB = 1 << 20
GiB = 1 << 30


def serial_hash(path: str) -> tuple[float, float]:
    """:returns: (MiB/s, CPU s/GiB) of md5 then sha512 over the file, on one thread."""
    md5, sha = hashlib.md5(), hashlib.sha512()
    t0, cpu0 = time.perf_counter(), time.thread_time()
    n = 0
    for block in bench.file_blocks(path):
        md5.update(block)
        sha.update(block)
        n += len(block)
    return n / MiB / (time.perf_counter() - t0), (time.thread_time() - cpu0) * GiB / n


def upload_requests_64k(url: str, image_id: str, path: str) -> None:
    import requests

    def blocks():
        with open(path, "rb", buffering=0) as f:
            while block := f.read(64 << 10):
                yield block

    r = requests.put(
        f"{url}/v2/images/{image_id}/file",
        data=blocks(),  # a generator: requests sends it chunked
        headers={"Content-Type": "application/octet-stream"},
        timeout=3600,
    )
    if r.status_code != 204:
        raise RuntimeError(f"upload: HTTP {r.status_code} {r.text[:300]}")


def one_upload(api, url: str, mode: str, path: str, size: int, meter) -> tuple[float, float]:
    """:returns: (MiB/s, server CPU s/GiB)"""
    image_id = api.create_image()
    try:
        cpu0 = meter.sample() if meter else 0.0
        t0 = time.perf_counter()
        if mode == "chunked-64k":
            upload_requests_64k(url, image_id, path)
        else:
            bench.upload(api, image_id, path, size, mode == "chunked-1m", None)
        dt = time.perf_counter() - t0
        cpu = (meter.sample() - cpu0) if meter else float("nan")
        return size / MiB / dt, cpu * GiB / size
    finally:
        api.delete_image(image_id)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:9292")
    p.add_argument("--server-pid", type=int)
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="cl,chunked-1m,chunked-64k")
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    size = args.size_mib * MiB
    api = bench.Api(args.url)
    meter = bench.CpuMeter(args.server_pid) if args.server_pid else None
    fd, path = tempfile.mkstemp(prefix="abbild-upload-src-", dir=args.tmpdir)
    os.close(fd)
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    try:
        bench.make_random_file(path, size)
        for r in range(args.rounds):
            runs = [serial_hash(path) for _ in range(2)]
            ref, ref_cpu = max(x[0] for x in runs), min(x[1] for x in runs)
            line = [f"round {r + 1}: serial md5+sha512 {ref:6.1f} MiB/s, {ref_cpu:4.2f} s CPU/GiB"]
            for mode in modes:
                speed, cpu = one_upload(api, args.url, mode, path, size, meter)
                results[mode].append((speed / ref, speed, cpu))
                line.append(f"{mode} {speed:6.1f} MiB/s = {speed / ref:4.2f}x, {cpu:5.2f} s CPU/GiB")
            print(" | ".join(line), flush=True)
    finally:
        os.unlink(path)
        api.close()
    print(f"\n{'mode':<12} {'ratio best':>10} {'ratio median':>12} {'CPU s/GiB best':>14} {'CPU median':>10}")
    for mode, rows in results.items():
        ratios, cpus = [x[0] for x in rows], [x[2] for x in rows]
        print(
            f"{mode:<12} {max(ratios):10.2f} {statistics.median(ratios):12.2f} "
            f"{min(cpus):14.2f} {statistics.median(cpus):10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
