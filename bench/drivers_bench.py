"""Store drivers against their backends' own tools: the same bytes, the same server.

For each driver, an upload (``put``) and a download (``get``) of one random file,
side by side in one run with the backend's own client on that file:

- rbd: ``rbd import`` / ``rbd export`` (the CLI, same pool, same object size as the
  driver's ``chunk_size``);
- s3: boto3's transfer manager, ``upload_file`` / ``download_fileobj`` with the
  default ``TransferConfig`` (8 MiB parts, 10 threads), into a sink that drops the
  bytes (``download_file`` would write a file: the driver's get writes nothing);
- swift: ``swift upload`` / ``swift download`` (python-swiftclient's CLI), with the
  driver's segment size when the driver segments the file (not below its
  ``large_object_size``).

The drivers are loaded as abbild loads them (stevedore entry points, options from a
config file) and driven in-process: ``put`` is fed 1 MiB chunks read from the file,
``get`` is drained into nothing. The backends are those of ``tools/ceph-up.sh`` and
``tools/swift-up.sh`` (their env files). Each pair runs ``--repeat`` times,
alternating driver and tool; the best of each counts. Target: driver >= 0.9x tool.

    python3 bench/drivers_bench.py                         # 1 GiB, rbd s3 swift
    python3 bench/drivers_bench.py --drivers s3 --size-mib 256
    python3 bench/drivers_bench.py --set s3.large_object_upload_threads=8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

MiB = 1 << 20
CHUNK = MiB
TARGET = 0.9


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_env_file(path: str) -> dict[str, str]:
    env = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            if line.startswith("export ") and "=" in line:
                name, value = line[len("export ") :].strip().split("=", 1)
                env[name] = value.strip("'\"")
    return env


def ceph_env() -> dict[str, str]:
    env = read_env_file(os.path.join(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph"), "env.sh"))
    if not env:
        raise SystemExit('no Ceph cluster: start one with: eval "$(bash tools/ceph-up.sh)"')
    return env


def swift_env() -> dict[str, str]:
    env = read_env_file(os.path.join(os.environ.get("SWIFT_DIR", "/tmp/abbild-swift"), "env.sh"))
    if not env:
        raise SystemExit('no Swift: start it with: eval "$(bash tools/swift-up.sh)"')
    return env


def file_chunks(path: str):
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def timed(work) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def load_driver(driver_name: str, settings: dict[str, str], workdir: str):
    """The driver as abbild builds a store: entry point, then options from a file."""
    from oslo_config import cfg

    from abbild.stores import build_store

    path = os.path.join(workdir, f"{driver_name}.conf")
    with open(path, "w") as f:
        f.write("[bench]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    conf = cfg.ConfigOpts()
    conf(args=["--config-file", path], project="abbild-drivers-bench", default_config_files=[])
    return build_store(conf, "bench", driver_name).driver


# -- per backend: driver settings and the tool's upload and download ----------------------


class RbdTool:
    name = "rbd import/export"

    def __init__(self, overrides: dict[str, str]) -> None:
        self.env = ceph_env()
        self.settings = {
            "pool": self.env.get("CEPH_RBD_POOL", "images"),
            "user": self.env.get("CEPH_USER", "admin"),
            "ceph_conf": self.env["CEPH_CONF"],
            "keyring": self.env["CEPH_ADMIN_KEYRING"],
            **overrides,
        }
        self.chunk_mib = int(self.settings.get("chunk_size", 8))
        self.base = ["rbd", "-c", self.env["CEPH_CONF"], "--id", self.settings["user"]]
        self.base += ["--keyring", self.env["CEPH_ADMIN_KEYRING"]]
        self.pool = self.settings["pool"]

    def upload(self, path: str, name: str) -> None:
        subprocess.run(
            [*self.base, "import", "--no-progress", "--object-size", f"{self.chunk_mib}M", path, f"{self.pool}/{name}"],
            check=True,
        )

    def download(self, name: str) -> None:
        subprocess.run(
            [*self.base, "export", "--no-progress", f"{self.pool}/{name}", "-"], check=True, stdout=subprocess.DEVNULL
        )

    def remove(self, name: str) -> None:
        subprocess.run(
            [*self.base, "rm", "--no-progress", f"{self.pool}/{name}"], check=False, stderr=subprocess.DEVNULL
        )

    def cleanup(self) -> None:
        pass


class S3Tool:
    name = "boto3 transfer manager (default TransferConfig)"

    def __init__(self, overrides: dict[str, str]) -> None:
        import boto3
        import botocore.config

        env = ceph_env()
        self.bucket = f"abbild-drivers-bench-{uuid.uuid4().hex[:8]}"
        self.settings = {
            "endpoint_url": env["CEPH_RGW_ENDPOINT"],
            "access_key": env["CEPH_S3_ACCESS_KEY"],
            "secret_key": env["CEPH_S3_SECRET_KEY"],
            "addressing_style": "path",
            "bucket": self.bucket,
            **overrides,
        }
        # The same client settings as the driver's: no CRC32 on every part either.
        self.client = boto3.client(
            "s3",
            endpoint_url=env["CEPH_RGW_ENDPOINT"],
            region_name="us-east-1",
            aws_access_key_id=env["CEPH_S3_ACCESS_KEY"],
            aws_secret_access_key=env["CEPH_S3_SECRET_KEY"],
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.client.create_bucket(Bucket=self.bucket)

    def upload(self, path: str, name: str) -> None:
        self.client.upload_file(path, self.bucket, name)

    def download(self, name: str) -> None:
        self.client.download_fileobj(self.bucket, name, Sink())

    def remove(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=name)

    def cleanup(self) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        for upload in self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        self.client.delete_bucket(Bucket=self.bucket)


class Sink:
    """A seekable file that keeps nothing: where the transfer manager's ranges go."""

    def __init__(self) -> None:
        self.position = 0

    def write(self, data) -> int:
        self.position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset
        return offset

    def tell(self) -> int:
        return self.position


class SwiftTool:
    name = "swift upload/download (python-swiftclient CLI)"

    def __init__(self, overrides: dict[str, str]) -> None:
        env = swift_env()
        self.container = f"abbild-drivers-bench-{uuid.uuid4().hex[:8]}"
        self.settings = {
            "auth_version": "1",
            "auth_address": env["ST_AUTH"],
            "user": env["ST_USER"],
            "key": env["ST_KEY"],
            "container": self.container,
            "create_container_on_put": "true",
            **overrides,
        }
        self.base = ["swift", "-A", env["ST_AUTH"], "-U", env["ST_USER"], "-K", env["ST_KEY"]]
        self.segment_mib = int(self.settings.get("large_object_chunk_size", 200))
        self.large_mib = int(self.settings.get("large_object_size", 5 * 1024))

    def upload(self, path: str, name: str) -> None:
        command = [*self.base, "upload", "--object-name", name, self.container, path]
        if os.path.getsize(path) >= self.large_mib * MiB:  # the driver segments it too
            command += ["--segment-size", str(self.segment_mib * MiB)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def download(self, name: str) -> None:
        command = [*self.base, "download", "--output", "-", self.container, name]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def remove(self, name: str) -> None:
        subprocess.run([*self.base, "delete", self.container, name], check=False, stdout=subprocess.DEVNULL)

    def cleanup(self) -> None:
        subprocess.run([*self.base, "delete", self.container], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*self.base, "delete", self.container + "_segments"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


TOOLS = {"rbd": RbdTool, "s3": S3Tool, "swift": SwiftTool}


def bench_driver(name: str, path: str, repeat: int, overrides: dict[str, str], workdir: str) -> dict:
    size = os.path.getsize(path)
    tool = TOOLS[name](overrides)
    driver = load_driver(name, tool.settings, workdir)
    best = {"driver put": 0.0, "tool put": 0.0, "driver get": 0.0, "tool get": 0.0}

    def put(who: str, key: str, tool_key: str, stored: dict) -> None:
        if who == "tool":
            tool.upload(path, tool_key)
            return
        result = driver.put(key, file_chunks(path), size)
        if result.size != size:
            raise SystemExit(f"{name}: put wrote {result.size} bytes of {size}")
        stored["uri"] = result.uri

    def get(who: str, uri: str, tool_key: str) -> None:
        if who == "tool":
            tool.download(tool_key)
            return
        received = 0
        for chunk in driver.get(uri):
            received += len(chunk)
        if received != size:
            raise SystemExit(f"{name}: get returned {received} bytes of {size}")

    try:
        for attempt in range(repeat):
            key, tool_key = f"bench-{uuid.uuid4().hex}", f"bench-tool-{uuid.uuid4().hex}"
            try:
                # Alternate who goes first, so neither always meets a warmer backend.
                order = ["driver", "tool"] if attempt % 2 == 0 else ["tool", "driver"]
                stored = {}
                for who in order:
                    seconds = timed(functools.partial(put, who, key, tool_key, stored))
                    best[f"{who} put"] = max(best[f"{who} put"], size / MiB / seconds)
                for who in order:
                    seconds = timed(functools.partial(get, who, stored["uri"], tool_key))
                    best[f"{who} get"] = max(best[f"{who} get"], size / MiB / seconds)
                log(f"  {name} run {attempt + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in best.items()) + " MiB/s")
            finally:
                with contextlib.suppress(Exception):
                    driver.discard(key)
                tool.remove(tool_key)
    finally:
        tool.cleanup()
    return {"driver": name, "tool": tool.name, **best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drivers", default="rbd,s3,swift", help="comma-separated (default %(default)s)")
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the random file (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each pair; the best counts (default %(default)s)")
    ap.add_argument("--tmpdir", help="where the random file goes (default $TMPDIR)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="DRIVER.OPTION=VALUE", help="a driver option, repeatable"
    )
    args = ap.parse_args(argv)
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        target, value = item.split("=", 1)
        driver, option = target.split(".", 1)
        overrides.setdefault(driver, {})[option] = value
    workdir = tempfile.mkdtemp(prefix="abbild-drivers-bench-", dir=args.tmpdir)
    rows = []
    try:
        path = os.path.join(workdir, "random.img")
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        for name in args.drivers.split(","):
            log(f"{name}: {args.size_mib} MiB, {args.repeat} runs")
            rows.append(bench_driver(name, path, args.repeat, overrides.get(name, {}), workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nStore drivers against their backends' tools: {args.size_mib} MiB, best of {args.repeat} (MiB/s)")
    print(f"{'driver':7} {'put':>6} {'tool':>6} {'ratio':>6}   {'get':>6} {'tool':>6} {'ratio':>6}   tool")
    met = True
    for r in rows:
        up, down = r["driver put"] / r["tool put"], r["driver get"] / r["tool get"]
        met &= up >= TARGET and down >= TARGET
        print(
            f"{r['driver']:7} {r['driver put']:6.0f} {r['tool put']:6.0f} {up:5.2f}x   "
            f"{r['driver get']:6.0f} {r['tool get']:6.0f} {down:5.2f}x   {r['tool']}"
        )
    print(f"target: every ratio >= {TARGET}x: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
