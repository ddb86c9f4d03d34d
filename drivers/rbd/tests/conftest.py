"""Wiring for the rbd driver's tests: a real Ceph cluster started by tools/ceph-up.sh.

Connection details come from the environment (CEPH_CONF, CEPH_ADMIN_KEYRING,
CEPH_USER, CEPH_RBD_POOL), or else from the env file ceph-up.sh writes
($CEPH_DIR/env.sh, by default /tmp/abbild-ceph/env.sh). Without a reachable cluster
(or without the rados and rbd modules) the tests skip with the reason, and fail under
CI=true.
"""

from __future__ import annotations

import os

import pytest
from abbild_rbd.driver import RBDDriver
from oslo_config import cfg

from abbild.testing.backends import backend_unavailable, read_env_file

STORE = "fast"
NEEDED = ("CEPH_CONF", "CEPH_ADMIN_KEYRING", "CEPH_RBD_POOL")


class TrackingRBDDriver(RBDDriver):
    """Remembers the keys it stored, so the session removes exactly its own images
    (others may share the pool: other test processes, functional tests)."""

    stored: set[str] = set()

    def put(self, key, chunks, size):
        self.stored.add(key)
        return super().put(key, chunks, size)


def _unavailable(reason: str):
    backend_unavailable(f'{reason}; start it with: eval "$(bash tools/ceph-up.sh)"')


@pytest.fixture(scope="session")
def ceph():
    """``{conf, keyring, user, pool, cluster, ioctx}``: the settings, and an admin
    connection of the tests' own to look behind the driver's back."""
    env_file = os.path.join(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph"), "env.sh")
    names = (*NEEDED, "CEPH_USER")
    settings = {**read_env_file(env_file), **{k: os.environ[k] for k in names if k in os.environ}}
    missing = [name for name in NEEDED if not settings.get(name)]
    if missing:
        _unavailable(f"no Ceph cluster configured: {', '.join(missing)} unset and not in {env_file}")
    try:
        import rados
    except ImportError as exc:
        _unavailable(f"cannot import rados ({exc}); tools/ceph-up.sh links it into $PYTHON")
    cluster = rados.Rados(
        conffile=settings["CEPH_CONF"],
        rados_id=settings.get("CEPH_USER", "admin"),
        # connect() ignores a timeout argument; this bounds it.
        conf={"keyring": settings["CEPH_ADMIN_KEYRING"], "client_mount_timeout": "5"},
    )
    try:
        cluster.connect()
        ioctx = cluster.open_ioctx(settings["CEPH_RBD_POOL"])
    except rados.Error as exc:
        cluster.shutdown()
        _unavailable(f"Ceph cluster of {settings['CEPH_CONF']} does not answer: {exc}")
    yield {
        "conf": settings["CEPH_CONF"],
        "keyring": settings["CEPH_ADMIN_KEYRING"],
        "user": settings.get("CEPH_USER", "admin"),
        "pool": settings["CEPH_RBD_POOL"],
        "cluster": cluster,
        "ioctx": ioctx,
    }
    ioctx.close()
    cluster.shutdown()


def _conf(ceph: dict, **overrides):
    """Build the store's option group the way the store manager does. Keyword
    arguments override options; ``name=None`` leaves an option unset."""
    conf = cfg.ConfigOpts()
    conf.register_opts(RBDDriver.options, group=STORE)
    conf(args=[])
    settings = {
        "ceph_conf": ceph["conf"],
        "keyring": ceph["keyring"],
        "user": ceph["user"],
        "pool": ceph["pool"],
        "chunk_size": 1,  # so a few MiB span several RADOS objects
        "connect_timeout": 10,
        **overrides,
    }
    for name, value in settings.items():
        conf.set_override(name, value, group=STORE)
    return conf[STORE]


@pytest.fixture
def make_driver(ceph):
    """:returns: a function returning a configured driver; keyword arguments override options."""

    def make_driver(**overrides):
        driver = TrackingRBDDriver(STORE, _conf(ceph, **overrides))
        driver.configure()
        return driver

    return make_driver


@pytest.fixture(scope="session")
def shared_driver(ceph):
    """One configured, connected driver for the whole session: connecting to the
    cluster takes a while."""
    driver = TrackingRBDDriver(STORE, _conf(ceph))
    driver.configure()
    yield driver
    # Memstore keeps every image in RAM: remove what the tests stored.
    for key in TrackingRBDDriver.stored:
        driver.discard(key)
