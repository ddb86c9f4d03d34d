import pytest
from oslo_config import cfg

from abbild import opts
from abbild.driver import Capability
from abbild.errors import ConfigError, Invalid, UnsupportedOperation
from abbild.memory import MemoryDriver
from abbild.stores import StoreManager


class ReadOnlyMemory(MemoryDriver):
    def configure(self):
        return Capability.READ


class NeedsOption(MemoryDriver):
    options = [cfg.StrOpt("bucket", required=True, help="the bucket")]

    def configure(self):
        if not self.conf.bucket:
            raise ConfigError(f"store {self.store_name!r}: set 'bucket'")
        return super().configure()


DRIVERS = {"memory": MemoryDriver, "ro": ReadOnlyMemory, "needs": NeedsOption}


def make_conf(**overrides):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    for name, value in overrides.items():
        conf.set_override(name, value)
    return conf


def test_stores_are_named_by_the_operator():
    conf = make_conf(enabled_backends={"a": "memory", "b": "ro"}, default_backend="b")
    stores = StoreManager(conf, drivers=DRIVERS)
    assert [s.name for s in stores] == ["a", "b"]
    assert stores.default.name == "b"
    assert stores["b"].read_only and not stores["a"].read_only


@pytest.mark.parametrize(
    "backends,default,message",
    [
        ({}, "local", "enabled_backends is empty"),
        ({"a": "memory"}, "zzz", "default_backend 'zzz' is not one of"),
        ({"a": "nosuch"}, "a", "unknown driver 'nosuch'"),
        ({"DEFAULT": "memory"}, "DEFAULT", "reserved"),
        ({"a": ""}, "a", "names no driver"),
    ],
)
def test_bad_configuration_stops_start_up(backends, default, message):
    conf = make_conf(enabled_backends=backends, default_backend=default)
    with pytest.raises(ConfigError, match=message):
        StoreManager(conf, drivers=DRIVERS)


def test_driver_options_live_in_the_stores_group():
    conf = make_conf(enabled_backends={"s": "needs"}, default_backend="s")
    with pytest.raises(ConfigError, match="bucket"):
        StoreManager(conf, drivers=DRIVERS)


def test_unknown_installed_driver_names_the_fix():
    conf = make_conf(enabled_backends={"x": "definitely-not-installed"}, default_backend="x")
    with pytest.raises(ConfigError, match=r"no store driver named 'definitely-not-installed'.*installed:"):
        StoreManager(conf)


def test_capabilities_are_enforced_by_the_core():
    conf = make_conf(enabled_backends={"ro": "ro"}, default_backend="ro")
    store = StoreManager(conf, drivers=DRIVERS)["ro"]
    with pytest.raises(UnsupportedOperation):
        store.put("k", [b"x"], 1)
    with pytest.raises(UnsupportedOperation):
        store.delete("memory://ro/k")


def test_unknown_store_name_is_bad_input():
    conf = make_conf(enabled_backends={"a": "memory"}, default_backend="a")
    with pytest.raises(Invalid, match="Unknown store 'b'"):
        StoreManager(conf, drivers=DRIVERS)["b"]


class NoRange(MemoryDriver):
    def configure(self):
        return Capability.READ | Capability.WRITE | Capability.DELETE


@pytest.mark.parametrize("offset,length", [(0, 5), (3, 4), (8, None), (9, 100), (0, None)])
def test_ranges_are_cut_by_the_core_without_range_read(offset, length):
    conf = make_conf(enabled_backends={"n": "norange"}, default_backend="n")
    store = StoreManager(conf, drivers={"norange": NoRange})["n"]
    data = b"0123456789"
    obj = store.put("k", [data[:4], data[4:7], data[7:]], len(data))
    end = None if length is None else offset + length
    assert b"".join(store.get(obj.uri, offset, length)) == data[offset:end]
