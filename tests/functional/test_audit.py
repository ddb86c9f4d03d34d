"""``abbild audit`` from the operator's side: images uploaded through the API of a real
``abbild serve`` (SQLite, the filesystem store ``local`` and, where Ceph runs, an S3
store ``cold`` on radosgw with a bucket of its own), damaged behind its back, then
audited, repaired and updated by the command on the server's own config file."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from abbild.testing.backends import backend_unavailable, read_env_file
from tests.functional.conftest import Server
from tests.functional.helpers import server_config, wait_for

OCTET = {"Content-Type": "application/octet-stream"}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
MIB = 1 << 20


def s3_section() -> str:
    env = read_env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh")
    if "CEPH_RGW_ENDPOINT" not in env:
        backend_unavailable("no radosgw: start Ceph with `bash tools/ceph-up.sh`")
    return f"""[cold]
endpoint_url = {env["CEPH_RGW_ENDPOINT"]}
access_key = {env["CEPH_S3_ACCESS_KEY"]}
secret_key = {env["CEPH_S3_SECRET_KEY"]}
bucket = abbild-audit-{uuid.uuid4().hex[:8]}
create_bucket = true
"""


@pytest.fixture
def make_srv(tmp_path):
    """``make_srv(default="", s3=False)``: an ``abbild serve`` with its own config file
    and data directory, stopped after the test."""
    servers = []

    def make(default: str = "", s3: bool = False) -> Server:
        text = server_config(default=default, extra_backends="cold:s3" if s3 else "", stores=s3_section() if s3 else "")
        conf = tmp_path / "abbild-api.conf"
        conf.write_text(text.format(dir=tmp_path))
        srv = Server(tmp_path, "--config-file", str(conf))
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.stop()


def audit(srv: Server, *args: str) -> tuple[int, dict]:
    """``abbild audit --json`` on the server's config: the exit status and the report."""
    proc = subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "audit", "--json", "--config-file", f"{srv.data_dir}/abbild-api.conf"]
        + list(args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1, 2), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def found(report: dict, kind: str, image_id: str) -> list[dict]:
    return [f for f in report["findings"] if f["kind"] == kind and f["image_id"] == image_id]


def upload(srv: Server, data: bytes, store: str | None = None) -> str:
    image = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    headers = {**OCTET, **({"X-Image-Meta-Store": store} if store else {})}
    resp = requests.put(f"{srv.url}/v2/images/{image['id']}/file", data=data, headers=headers)
    assert resp.status_code == 204, resp.text
    return image["id"]


def image_of(srv: Server, image_id: str) -> dict:
    return requests.get(f"{srv.url}/v2/images/{image_id}").json()


def datadir(srv: Server) -> Path:
    return Path(srv.data_dir) / "images"


def test_a_clean_deployment_audits_clean(make_srv):
    srv = make_srv()
    data = os.urandom(MIB + 5)
    image_id = upload(srv, data)
    status, report = audit(srv)
    assert status == 0, report
    assert report["findings"] == [] and report["counts"]["checked"] == 1
    assert report["counts"]["bytes"] == len(data)
    table = subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "audit", "--config-file", f"{srv.data_dir}/abbild-api.conf"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0 and "1 location(s) checked" in table.stdout and "0 finding(s)" in table.stdout
    assert image_of(srv, image_id)["status"] == "active"


def test_a_flipped_byte_is_reported_and_repair_deactivates_the_image(make_srv):
    srv = make_srv()
    data = os.urandom(2 * MIB)
    image_id = upload(srv, data)
    path = datadir(srv) / image_id
    flipped = bytearray(data)
    flipped[MIB + 17] ^= 0x01
    path.write_bytes(bytes(flipped))
    status, report = audit(srv)
    assert status == 1
    [finding] = found(report, "corrupt", image_id)
    assert finding["store"] == "local" and "md5" in finding["detail"] and finding["action"] == ""
    assert image_of(srv, image_id)["status"] == "active"  # reported only
    status, report = audit(srv, "--repair")
    assert status == 1
    assert found(report, "corrupt", image_id)[0]["action"] == "deactivated"
    assert image_of(srv, image_id)["status"] == "deactivated"
    assert path.read_bytes() == bytes(flipped), "the data stays for whoever investigates"
    assert audit(srv)[0] == 0, "a deactivated image is not audited again"


def test_an_image_whose_data_vanished_is_reported(make_srv):
    srv = make_srv()
    image_id = upload(srv, b"soon gone")
    (datadir(srv) / image_id).unlink()
    status, report = audit(srv, "--repair")
    assert status == 1
    [finding] = found(report, "missing", image_id)
    assert finding["store"] == "local" and finding["action"] == ""
    assert image_of(srv, image_id)["status"] == "active"


def test_a_planted_orphan_is_kept_during_the_grace_period_and_removed_after(make_srv):
    srv = make_srv()
    keep = upload(srv, b"an image that stays")
    orphan = datadir(srv) / str(uuid.uuid4())
    orphan.write_bytes(b"nobody's data")
    foreign = datadir(srv) / "not-an-image-id"
    foreign.write_bytes(b"someone else's file")
    status, report = audit(srv, "--repair", "--grace", "3600")
    assert status == 1
    [finding] = found(report, "orphan", orphan.name)
    assert "younger than the grace period" in finding["detail"] and finding["action"] == ""
    assert orphan.exists()
    assert not [f for f in report["findings"] if f["kind"] == "orphan" and f["image_id"] != orphan.name]
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    status, report = audit(srv, "--grace", "3600")
    assert status == 1 and found(report, "orphan", orphan.name)[0]["action"] == ""
    assert orphan.exists(), "without --repair nothing is deleted"
    status, report = audit(srv, "--repair", "--grace", "3600")
    assert found(report, "orphan", orphan.name)[0]["action"] == "deleted"
    assert not orphan.exists()
    assert foreign.exists() and (datadir(srv) / keep).exists()
    assert audit(srv)[0] == 0


def test_an_orphan_in_s3_is_found_by_listing_the_bucket(make_srv):
    srv = make_srv(s3=True)
    in_s3 = upload(srv, os.urandom(100_000), store="cold")
    assert image_of(srv, in_s3)["stores"] == "cold"
    # An image deleted while the store refused to delete its data leaves such an object.
    import boto3

    env = read_env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh")
    conf = (Path(srv.data_dir) / "abbild-api.conf").read_text()
    bucket = conf.split("bucket = ")[1].split()[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=env["CEPH_RGW_ENDPOINT"],
        aws_access_key_id=env["CEPH_S3_ACCESS_KEY"],
        aws_secret_access_key=env["CEPH_S3_SECRET_KEY"],
        region_name="us-east-1",
    )
    orphan = str(uuid.uuid4())
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"left behind")
    try:
        status, report = audit(srv, "--store", "cold", "--repair", "--grace", "0")
        assert status == 1, report
        [finding] = found(report, "orphan", orphan)
        assert finding["store"] == "cold" and finding["action"] == "deleted"
        assert report["counts"]["checked"] == 1, "--store cold reads only the image in cold"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert orphan not in keys and in_s3 in keys
        assert audit(srv)[0] == 0
    finally:
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_a_stuck_upload_with_a_stale_claim_goes_back_to_queued_with_repair(make_srv):
    srv = make_srv(default="audit_stuck_after = 0\n")
    image = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()
    image_id = image["id"]
    release = threading.Event()

    def slow_body():
        yield os.urandom(256 * 1024)
        release.wait(60)

    def send():
        try:
            requests.put(f"{srv.url}/v2/images/{image_id}/file", data=slow_body(), headers=OCTET, timeout=60)
        except requests.RequestException:
            pass  # the server dies under it

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    partial = datadir(srv) / f".{image_id}.partial"
    wait_for(lambda: image_of(srv, image_id)["status"] == "saving" and partial.exists(), what="upload started")
    srv.kill()  # the uploading process dies: its claim is stale at once (same host)
    release.set()
    sender.join(10)
    status, report = audit(srv)
    assert status == 1
    [finding] = found(report, "stuck", image_id)
    assert "'saving'" in finding["detail"] and "stale" in finding["detail"] and finding["action"] == ""
    assert partial.exists()
    status, report = audit(srv, "--repair")
    assert found(report, "stuck", image_id)[0]["action"].startswith("queued again")
    assert not partial.exists()
    with sqlite3.connect(Path(srv.data_dir) / "abbild.sqlite") as db:
        assert db.execute("select status from images where id = ?", (image_id,)).fetchone() == ("queued",)
    assert audit(srv)[0] == 0


# The legacy PATCH of /locations registers data with the hashes the caller gives.
LEGACY_LOCATIONS = "show_multiple_locations = true\n"


def test_update_fills_os_hash_of_an_image_registered_with_md5_only(make_srv):
    srv = make_srv(default=LEGACY_LOCATIONS)
    data = os.urandom(MIB + 11)
    name = str(uuid.uuid4())
    (datadir(srv) / name).write_bytes(data)
    image_id = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()[
        "id"
    ]
    location = {
        "url": f"file://{datadir(srv) / name}",
        "metadata": {},
        "validation_data": {"checksum": hashlib.md5(data).hexdigest()},
    }
    resp = requests.patch(
        f"{srv.url}/v2/images/{image_id}",
        data=json.dumps([{"op": "add", "path": "/locations/-", "value": location}]),
        headers=PATCH,
    )
    assert resp.status_code == 200, resp.text
    before = image_of(srv, image_id)
    assert before["status"] == "active" and before["os_hash_value"] is None
    status, report = audit(srv)
    assert status == 0 and report["updates"] == []
    status, report = audit(srv, "--update")
    assert status == 0, report
    [update] = report["updates"]
    assert update["image_id"] == image_id
    after = image_of(srv, image_id)
    assert after["os_hash_algo"] == "sha512"
    assert after["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert after["checksum"] == before["checksum"] and after["size"] == len(data)
    assert audit(srv, "--update")[1]["updates"] == [], "nothing left to fill"


def test_update_fills_nothing_from_data_whose_md5_does_not_match(make_srv):
    srv = make_srv(default=LEGACY_LOCATIONS)
    name = str(uuid.uuid4())
    (datadir(srv) / name).write_bytes(b"the registered data")
    image_id = requests.post(f"{srv.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}).json()[
        "id"
    ]
    location = {
        "url": f"file://{datadir(srv) / name}",
        "metadata": {},
        "validation_data": {"checksum": hashlib.md5(b"the registered data").hexdigest()},
    }
    requests.patch(
        f"{srv.url}/v2/images/{image_id}",
        data=json.dumps([{"op": "add", "path": "/locations/-", "value": location}]),
        headers=PATCH,
    ).raise_for_status()
    (datadir(srv) / name).write_bytes(b"The registered data")
    status, report = audit(srv, "--update")
    assert status == 1 and found(report, "corrupt", image_id) and report["updates"] == []
    assert image_of(srv, image_id)["os_hash_value"] is None


def test_the_rate_limit_is_honoured(make_srv):
    srv = make_srv()
    upload(srv, os.urandom(4 * MIB))

    def timed(*args: str) -> float:
        started = time.monotonic()
        status, report = audit(srv, *args)
        assert status == 0 and report["counts"]["bytes"] == 4 * MIB
        return time.monotonic() - started

    unlimited = timed()
    limited = timed("--rate", "1")
    # 4 MiB at 1 MiB/s is 4 s of reading (3 s and more after a first burst); generous
    # bounds, since a busy machine makes either run seconds slower.
    assert limited - unlimited >= 2.5, (limited, unlimited)


def test_bad_arguments_are_refused_with_a_message(make_srv):
    srv = make_srv()
    conf = f"{srv.data_dir}/abbild-api.conf"
    for args, message in [
        (["--rate", "-1"], "negative"),
        (["--grace", "soon"], "not a number"),
        (["--store", "nowhere"], "no such store"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "abbild_cmd.cli", "audit", "--config-file", conf, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
