"""The registry's paste pipeline: the shipped ini, or the operator's."""

from __future__ import annotations

import os
from collections.abc import Sequence

SHIPPED_INI = os.path.join(os.path.dirname(__file__), "abbild-registry-paste.ini")


def load_registry_app(config_files: Sequence[str]):
    """The WSGI app of the ``abbild-registry`` pipeline (``[registry_server]
    paste_config_file`` or the shipped ini)."""
    from paste.deploy import loadapp

    from abbild_registry.app import load_conf

    ini = load_conf(config_files).registry_server.paste_config_file or SHIPPED_INI
    return loadapp(
        f"config:{os.path.abspath(ini)}",
        name="abbild-registry",
        global_conf={"config_files": ",".join(os.path.abspath(f) for f in config_files)},
    )
