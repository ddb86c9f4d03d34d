"""Wiring for the filesystem driver's tests: a store named ``local`` in ``tmp_path``."""

from __future__ import annotations

import pytest
from abbild_filesystem.driver import FilesystemDriver
from oslo_config import cfg

STORE = "local"


@pytest.fixture
def datadir(tmp_path):
    """The store's directory; ``tmp_path`` itself stays free for files outside it."""
    return tmp_path / "data"


@pytest.fixture
def make_conf(datadir):
    """Build the store's option group the way the store manager does: the driver's
    options registered under the store name. Keyword arguments override options;
    ``datadir`` defaults to the fixture's, and ``datadir=None`` leaves it unset."""

    def make_conf(**overrides):
        conf = cfg.ConfigOpts()
        conf.register_opts(FilesystemDriver.options, group=STORE)
        conf(args=[])
        overrides.setdefault("datadir", str(datadir))
        for name, value in overrides.items():
            conf.set_override(name, value, group=STORE)
        return conf[STORE]

    return make_conf


@pytest.fixture
def make_driver(make_conf):
    """:returns: a function returning ``(driver, capabilities)``, the driver configured."""

    def make_driver(**overrides):
        driver = FilesystemDriver(STORE, make_conf(**overrides))
        return driver, driver.configure()

    return make_driver
