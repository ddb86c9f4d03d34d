"""Fixtures for unit tests: an image service over a real SQLite registry and the memory driver."""

import pytest
from oslo_config import cfg

from abbild import hookimpl, opts
from abbild.db import migrate
from abbild.db.registry import SQLRegistry
from abbild.memory import MemoryDriver
from abbild.plugins import get_plugin_manager
from abbild.service import ImageService
from abbild.stores import StoreManager


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def abbild_image_created(self, image):
        self.events.append(("created", image.id))

    @hookimpl
    def abbild_image_uploaded(self, image, location):
        self.events.append(("uploaded", image.status.value, location.store))

    @hookimpl
    def abbild_image_upload_failed(self, image, error):
        self.events.append(("upload_failed", image.status.value, type(error).__name__))

    @hookimpl
    def abbild_image_activated(self, image):
        self.events.append(("activated", image.id))

    @hookimpl
    def abbild_image_deleted(self, image):
        self.events.append(("deleted", image.status.value))


class Broken:
    @hookimpl
    def abbild_image_created(self, image):
        raise RuntimeError("a broken notifier must not break the request")


@pytest.fixture
def service(tmp_path):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("enabled_backends", {"mem": "memory", "other": "memory"})
    conf.set_override("default_backend", "mem")
    conf.set_override("image_size_cap", 1 << 20)
    conf.set_override("node_staging_uri", f"file://{tmp_path}/staging")
    registry = SQLRegistry(url=f"sqlite:///{tmp_path}/r.sqlite")
    migrate.sync(registry.engine)
    pm = get_plugin_manager(load_entrypoints=False)
    recorder = Recorder()
    pm.register(Broken())
    pm.register(recorder)
    pm.hook.abbild_configure.call_historic(kwargs={"conf": conf})
    svc = ImageService(conf, registry, StoreManager(conf, drivers={"memory": MemoryDriver}), pm)
    svc.recorder = recorder
    yield svc
    registry.close()
