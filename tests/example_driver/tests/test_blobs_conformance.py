"""All the example driver's tests: the shared conformance suite, plus proof that the
installed distribution is found through its entry point."""

import pytest
from abbild_blobs.driver import BlobDriver
from oslo_config import cfg

from abbild import config
from abbild.errors import ConfigError
from abbild.stores import StoreManager, installed_drivers
from abbild.testing.conformance import DriverConformance


class TestBlobConformance(DriverConformance):
    @pytest.fixture
    def driver(self, tmp_path):
        # The store's option group, built as the store manager builds it.
        conf = cfg.ConfigOpts()
        conf.register_opts(BlobDriver.options, group="blobs1")
        conf(args=[])
        conf.set_override("path", str(tmp_path / "blobs.sqlite"), group="blobs1")
        driver = BlobDriver("blobs1", conf.blobs1)
        driver.configure()
        return driver


def test_found_through_its_entry_point_and_configured_from_a_file(tmp_path):
    assert installed_drivers()["blobs"] == "abbild_blobs.driver:BlobDriver"
    path = tmp_path / "abbild-api.conf"
    path.write_text("[DEFAULT]\nenabled_backends = cold:blobs\ndefault_backend = cold\n[cold]\n")
    with pytest.raises(ConfigError, match=r"set \[cold\] path"):
        StoreManager(config.load([str(path)]))
    path.write_text(path.read_text() + f"path = {tmp_path}/cold.sqlite\n")
    store = StoreManager(config.load([str(path)]))["cold"]
    stored = store.put("img", [b"abc", b"def"], 6)
    assert (stored.uri, b"".join(store.get(stored.uri))) == ("blobs://cold/img", b"abcdef")
