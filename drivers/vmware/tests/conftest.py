"""Wiring for the vmware driver's tests: the fake vSphere server (``fake_vsphere.py``)
over TLS with a throw-away CA, and a store named ``vcenter`` pointing at it."""

from __future__ import annotations

import os
import ssl
import sys
import threading

import pytest
import trustme
from abbild_vmware.driver import VMwareDriver
from oslo_config import cfg

sys.path.insert(0, os.path.dirname(__file__))  # for fake_vsphere; the tests are not a package
from fake_vsphere import FakeVSphere  # noqa: E402

STORE = "vcenter"
USER, PASSWORD = "svc-images@vsphere.local", "s3cr<e>t&"  # XML-special, so escaping is tested
GiB = 1 << 30


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def vsphere(ca):
    """A running fake vSphere on 127.0.0.1 with datastores ``dc1:big`` (1 GiB) and
    ``dc1:small`` (1 MiB); stopped after the test."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeVSphere(context, USER, PASSWORD, {("dc1", "big"): GiB, ("dc1", "small"): 1 << 20})
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def make_conf(vsphere, ca_file):
    """The store's option group, pointing at the fake server; keyword arguments override."""

    def make_conf(**overrides):
        conf = cfg.ConfigOpts()
        conf.register_opts(VMwareDriver.options, group=STORE)
        conf(args=[])
        settings = {
            "host": "127.0.0.1",
            "port": vsphere.port,
            "user": USER,
            "password": PASSWORD,
            "datastores": ["dc1:big:100"],
            "ca_file": ca_file,
            "image_dir": "/abbild images",
            **overrides,
        }
        for name, value in settings.items():
            conf.set_override(name, value, group=STORE)
        return conf[STORE]

    return make_conf


@pytest.fixture
def make_driver(make_conf):
    def make_driver(**overrides):
        driver = VMwareDriver(STORE, make_conf(**overrides))
        driver.configure()
        return driver

    return make_driver
