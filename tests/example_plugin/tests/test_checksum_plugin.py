"""The example plugin, installed as its own distribution: the plugin manager finds it
through its entry point, and its step runs on real staged data. (The import of a real
image through it, by the API: tests/functional/test_import_steps.py.)"""

import gzip
import hashlib
import os
import pathlib

import abbild_checksum.plugin

from abbild import config
from abbild.image import Image
from abbild.import_steps import StagedData
from abbild.plugins import get_plugin_manager


def offered_steps(pm) -> dict:
    steps = {}
    for answer in pm.hook.abbild_import_steps():
        steps.update(answer)
    return steps


def test_found_through_its_entry_point():
    pm = get_plugin_manager()
    assert pm.get_plugin("checksum") is abbild_checksum.plugin
    assert offered_steps(pm)["example_checksum_property"] is abbild_checksum.plugin.checksum_property
    assert "example_checksum_property" not in offered_steps(get_plugin_manager(load_entrypoints=False))


def test_runs_after_a_built_in_step(tmp_path: pathlib.Path):
    data = os.urandom(3 << 20)
    (tmp_path / "staged").write_bytes(gzip.compress(data))
    staged = StagedData(
        image=Image(id="8d8b3b5e-0d0e-4a47-9a4f-6a9ed3e5c0a1", disk_format="raw", container_format="bare"),
        path=tmp_path / "staged",
        disk_format="raw",
        workdir=tmp_path,
        method="glance-direct",
    )
    pm = get_plugin_manager()
    pm.hook.abbild_configure.call_historic(kwargs={"conf": config.load()})
    steps = offered_steps(pm)
    for name in ("image_decompression", "example_checksum_property"):
        steps[name](staged)
    assert staged.properties == {"example_sha256": hashlib.sha256(data).hexdigest()}
