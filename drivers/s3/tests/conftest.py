"""Wiring for the s3 driver's tests: a real radosgw started by tools/ceph-up.sh.

Connection details come from the environment (CEPH_RGW_ENDPOINT, CEPH_S3_ACCESS_KEY,
CEPH_S3_SECRET_KEY), or else from the env file ceph-up.sh writes ($CEPH_DIR/env.sh,
by default /tmp/abbild-ceph/env.sh). Each session works in a bucket of its own and
removes it at the end. Without a reachable radosgw the tests skip with the reason,
and fail under CI=true.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
import uuid

import pytest
from abbild_s3.driver import S3Driver
from oslo_config import cfg

from abbild.testing.backends import backend_unavailable, read_env_file

STORE = "cold"
NEEDED = ("CEPH_RGW_ENDPOINT", "CEPH_S3_ACCESS_KEY", "CEPH_S3_SECRET_KEY")


def _unavailable(reason: str):
    backend_unavailable(f'{reason}; start it with: eval "$(bash tools/ceph-up.sh)"')


@pytest.fixture(scope="session")
def ceph_s3():
    """``{endpoint, access_key, secret_key}`` of the radosgw, checked to answer."""
    env_file = os.path.join(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph"), "env.sh")
    settings = {**read_env_file(env_file), **{k: os.environ[k] for k in NEEDED if k in os.environ}}
    missing = [name for name in NEEDED if not settings.get(name)]
    if missing:
        _unavailable(f"no radosgw configured: {', '.join(missing)} unset and not in {env_file}")
    endpoint = settings["CEPH_RGW_ENDPOINT"]
    # Never let a test run reach a real cloud with whatever credentials are around.
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    assert host == "localhost" or ipaddress.ip_address(host).is_loopback, f"{endpoint} is not on loopback"
    import boto3
    import botocore.config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=settings["CEPH_S3_ACCESS_KEY"],
        aws_secret_access_key=settings["CEPH_S3_SECRET_KEY"],
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            connect_timeout=3,
            retries={"max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    try:
        client.list_buckets()
    except Exception as exc:
        _unavailable(f"radosgw at {endpoint} does not answer: {exc}")
    return {
        "endpoint": endpoint,
        "access_key": settings["CEPH_S3_ACCESS_KEY"],
        "secret_key": settings["CEPH_S3_SECRET_KEY"],
        "client": client,
    }


@pytest.fixture(scope="session")
def s3_client(ceph_s3):
    """A plain boto3 client of the radosgw, to look behind the driver's back."""
    return ceph_s3["client"]


@pytest.fixture(scope="session")
def bucket(s3_client):
    """A bucket of this test session, emptied and removed at the end."""
    name = f"abbild-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for upload in s3_client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3_client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)


def _conf(ceph_s3: dict, test_bucket: str, **overrides):
    """Build the store's option group the way the store manager does. Keyword
    arguments override options; ``name=None`` leaves an option unset."""
    conf = cfg.ConfigOpts()
    conf.register_opts(S3Driver.options, group=STORE)
    conf(args=[])
    settings = {
        "endpoint_url": ceph_s3["endpoint"],
        "access_key": ceph_s3["access_key"],
        "secret_key": ceph_s3["secret_key"],
        "addressing_style": "path",
        "bucket": test_bucket,
        # Small sizes, so a few MiB exercise both upload paths.
        "large_object_size": 5,
        "large_object_part_size": 5,
        **overrides,
    }
    for name, value in settings.items():
        conf.set_override(name, value, group=STORE)
    return conf[STORE]


@pytest.fixture
def make_conf(ceph_s3, bucket):
    return lambda **overrides: _conf(ceph_s3, bucket, **overrides)


@pytest.fixture
def make_driver(make_conf):
    """:returns: a function returning a configured driver."""

    def make_driver(**overrides):
        driver = S3Driver(STORE, make_conf(**overrides))
        driver.configure()
        return driver

    return make_driver


@pytest.fixture(scope="session")
def shared_driver(ceph_s3, bucket):
    """One configured driver with the default test settings for the whole session:
    building a boto3 client takes about half a second."""
    driver = S3Driver(STORE, _conf(ceph_s3, bucket))
    driver.configure()
    return driver
