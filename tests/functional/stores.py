"""The functional suite's default store, chosen with ``ABBILD_TEST_STORE``.

``make test`` runs the client and data tests once more with each real backend as the
default store of the session's server (``ABBILD_TEST_STORE=s3 pytest ...``). Each
profile below gives the config lines that make it so, from the environment the
backend's start script left (``tools/ceph-up.sh``, ``tools/swift-up.sh``); the vmware
profile starts its loopback stand-in server itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid

import pytest

from abbild.testing.backends import read_env_file

STORE = os.environ.get("ABBILD_TEST_STORE", "filesystem")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env_file(path: str, needed: str) -> dict[str, str]:
    """What a start script wrote to *path*, the environment winning."""
    found = read_env_file(path)
    found.update({k: v for k, v in os.environ.items() if k in found or k == needed})
    if needed not in found:
        pytest.fail(
            f"ABBILD_TEST_STORE={STORE}: no {needed} in the environment or {path}; "
            "start the backend with its tools/*-up.sh script",
            pytrace=False,
        )
    return found


def _one_store(driver: str, section: str) -> str:
    # Named "local" whatever its driver, as the embedded default's store: the tests
    # expect that name in "stores" and /v2/info/stores.
    return f"[DEFAULT]\nenabled_backends = local:{driver}\ndefault_backend = local\n[local]\n{section}"


def _s3() -> str:
    env = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_RGW_ENDPOINT")
    return _one_store(
        "s3",
        f"""endpoint_url = {env["CEPH_RGW_ENDPOINT"]}
access_key = {env["CEPH_S3_ACCESS_KEY"]}
secret_key = {env["CEPH_S3_SECRET_KEY"]}
bucket = abbild-functional-{uuid.uuid4().hex[:8]}
create_bucket = true
""",
    )


def _rbd() -> str:
    env = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_CONF")
    return _one_store(
        "rbd",
        f"""pool = {env.get("CEPH_RBD_POOL", "images")}
user = {env.get("CEPH_USER", "admin")}
ceph_conf = {env["CEPH_CONF"]}
keyring = {env["CEPH_ADMIN_KEYRING"]}
""",
    )


def _swift() -> str:
    env = _env_file(os.environ.get("SWIFT_DIR", "/tmp/abbild-swift") + "/env.sh", "ST_AUTH")
    return _one_store(
        "swift",
        f"""auth_version = 1
auth_address = {env["ST_AUTH"]}
user = {env["ST_USER"]}
key = {env["ST_KEY"]}
container = abbild-functional-{uuid.uuid4().hex[:8]}
# small, so that functional uploads are segmented too
large_object_size = 4
large_object_chunk_size = 1
""",
    )


@contextlib.contextmanager
def _vmware(workdir):
    ca = os.path.join(workdir, "vsphere-ca.pem")
    # Port 0: the simulator binds a free port itself and names it, so no other process
    # can take the port between choosing and binding it.
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "drivers/vmware/tests/fake_vsphere.py"),
            "--port",
            "0",
            "--ca-out",
            ca,
            "--user",
            "abbild",
            "--password",
            "secret",
            "--datastore",
            "dc1:ds1:100000000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        started = re.search(r"https://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        if started is None:
            raise RuntimeError(f"the vSphere simulator did not start (exit code {proc.poll()})")
        port = started.group(1)
        yield _one_store(
            "vmware",
            f"""host = 127.0.0.1
port = {port}
user = abbild
password = secret
datastores = dc1:ds1:100
image_dir = /abbild
ca_file = {ca}
""",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


PROFILES = {"s3": _s3, "rbd": _rbd, "swift": _swift}


@contextlib.contextmanager
def default_store_config(workdir):
    """Config lines (``[DEFAULT]`` backends and the store's section) that make
    ``ABBILD_TEST_STORE`` the default store, or None for the embedded filesystem."""
    if STORE == "filesystem":
        yield None
    elif STORE == "vmware":
        with _vmware(workdir) as text:
            yield text
    elif STORE in PROFILES:
        yield PROFILES[STORE]()
    else:
        raise pytest.UsageError(f"ABBILD_TEST_STORE={STORE}: use one of filesystem, vmware, {', '.join(PROFILES)}")
