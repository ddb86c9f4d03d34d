"""Wiring for the swift driver's tests: the real Swift that ``tools/swift-up.sh``
starts on loopback, logged in to with tempauth or, where Keystone runs, Keystone v3.

The settings come from the environment (``ST_AUTH``, ``ST_USER``, ``ST_KEY``,
``SWIFT_KEYSTONE_*``), or else from ``$SWIFT_DIR/env.sh`` (default
``/tmp/abbild-swift``), which swift-up.sh writes. Without a Swift that answers, the
tests skip with the reason; under ``CI=true`` they fail instead.

Each test session writes into containers of its own, ``abbild-test-<random>`` and
``abbild-test-<random>_*``, and removes them at the end.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
import uuid

import pytest
from abbild_swift.driver import SwiftDriver
from oslo_config import cfg

from abbild.testing.backends import backend_unavailable, read_env_file

STORE = "objects"
DEFAULT_SWIFT_DIR = "/tmp/abbild-swift"
# Small sizes, so that a few MiB exercise the segmented path: objects of 4 MiB and more
# (and of unknown size) go up as 1 MiB segments.
TEST_SIZES = {"large_object_size": 4, "large_object_chunk_size": 1}


def swift_settings() -> dict[str, str]:
    """``ST_*`` and ``SWIFT_*`` from the environment if it has ST_AUTH, else from
    ``$SWIFT_DIR/env.sh``; empty when neither has them."""
    if os.environ.get("ST_AUTH"):
        return {k: v for k, v in os.environ.items() if k.startswith(("ST_", "SWIFT_"))}
    return read_env_file(os.path.join(os.environ.get("SWIFT_DIR", DEFAULT_SWIFT_DIR), "env.sh"))


def _answers(url: str) -> str | None:
    """None if GET *url* answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return None if resp.status == 200 else f"GET {url} answered {resp.status}"
    except OSError as exc:
        return f"GET {url} failed: {exc}"


def _assert_loopback(url: str) -> None:
    # No test may ever write into a real cloud, whatever the environment says.
    host = urllib.parse.urlsplit(url).hostname
    assert host in ("127.0.0.1", "localhost", "::1"), f"refusing to test against {url}: not loopback"


@pytest.fixture(scope="session")
def swift_env() -> dict[str, str]:
    """The settings of the test Swift; skips (fails under CI=true) when it is not up."""
    settings = swift_settings()
    if "ST_AUTH" not in settings:
        backend_unavailable("no ST_AUTH and no $SWIFT_DIR/env.sh: start Swift with `bash tools/swift-up.sh`")
    _assert_loopback(settings["ST_AUTH"])
    proxy = urllib.parse.urljoin(settings["ST_AUTH"], "/healthcheck")
    reason = _answers(proxy)
    if reason:
        backend_unavailable(f"Swift is not up ({reason}): start it with `bash tools/swift-up.sh`")
    return settings


@pytest.fixture(scope="session")
def keystone_env(swift_env) -> dict[str, str]:
    """The Keystone settings of the test Swift; skips (fails under CI=true) when Swift
    was started without Keystone or Keystone does not answer."""
    if "SWIFT_KEYSTONE_AUTH_URL" not in swift_env:
        backend_unavailable(
            "Swift runs without Keystone: start Keystone (`bash tools/keystone-up.sh`), then "
            "`bash tools/swift-up.sh` again"
        )
    _assert_loopback(swift_env["SWIFT_KEYSTONE_AUTH_URL"])
    reason = _answers(swift_env["SWIFT_KEYSTONE_AUTH_URL"])
    if reason:
        backend_unavailable(f"Keystone is not up ({reason}): `bash tools/keystone-up.sh`")
    return swift_env


@pytest.fixture(scope="session")
def raw(swift_env):
    """A plain swiftclient connection as test:tester, to look behind the driver's back."""
    import swiftclient

    conn = swiftclient.Connection(swift_env["ST_AUTH"], swift_env["ST_USER"], swift_env["ST_KEY"], retries=1)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def container_base(raw):
    """This session's container name; every container starting with it is removed at
    the end."""
    base = f"abbild-test-{uuid.uuid4().hex[:10]}"
    yield base
    _remove_containers(raw, base)


def _remove_containers(conn, base: str) -> None:
    _, containers = conn.get_account(prefix=base, full_listing=True)
    for container in containers:
        _, objects = conn.get_container(container["name"], full_listing=True)
        for obj in objects:
            conn.delete_object(container["name"], obj["name"])
        conn.delete_container(container["name"])


def tempauth_options(env: dict[str, str]) -> dict:
    return {"auth_version": "1", "auth_address": env["ST_AUTH"], "user": env["ST_USER"], "key": env["ST_KEY"]}


@pytest.fixture(scope="session")
def keystone_options(keystone_env) -> dict:
    """Driver options to log in as the Keystone test user (role member)."""
    return {
        "auth_version": "3",
        "auth_address": keystone_env["SWIFT_KEYSTONE_AUTH_URL"],
        "user": keystone_env["SWIFT_KEYSTONE_USER"],
        "key": keystone_env["SWIFT_KEYSTONE_PASSWORD"],
        "project_name": keystone_env["SWIFT_KEYSTONE_PROJECT"],
    }


@pytest.fixture(scope="session")
def keystone_raw(keystone_options, container_base):
    """A plain swiftclient connection as the Keystone test user; this session's
    containers in that account are removed at the end."""
    import swiftclient
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    o = keystone_options
    auth = v3.Password(
        auth_url=o["auth_address"],
        username=o["user"],
        password=o["key"],
        project_name=o["project_name"],
        user_domain_name="Default",
        project_domain_name="Default",
    )
    conn = swiftclient.Connection(session=session.Session(auth=auth), retries=1)
    yield conn
    _remove_containers(conn, container_base)
    conn.close()


@pytest.fixture
def make_conf():
    """Build the store's option group the way the store manager does: the driver's
    options registered under the store name, then *overrides* set."""

    def make_conf(**overrides):
        conf = cfg.ConfigOpts()
        conf.register_opts(SwiftDriver.options, group=STORE)
        conf(args=[])
        for name, value in overrides.items():
            conf.set_override(name, value, group=STORE)
        return conf[STORE]

    return make_conf


@pytest.fixture
def make_driver(make_conf, swift_env, container_base):
    """:returns: a function building a configured driver on the test Swift: tempauth,
    this session's container and the small test sizes, unless *overrides* say otherwise."""

    def make_driver(**overrides):
        options = {**tempauth_options(swift_env), "container": container_base, "retries": 1, **TEST_SIZES}
        driver = SwiftDriver(STORE, make_conf(**{**options, **overrides}))
        driver.configure()
        return driver

    return make_driver
