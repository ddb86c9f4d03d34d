"""The registry's paste pipeline: the shipped ini, or the operator's."""

from __future__ import annotations

import os
from collections.abc import Sequence

SHIPPED_INI = os.path.join(os.path.dirname(__file__), "abbild-registry-paste.ini")


def load_registry_app(config_files: Sequence[str]):
    """The WSGI app of the ``abbild-registry`` pipeline (``[registry_server]
    paste_config_file`` or the shipped ini); the app and every filter share the
    configuration parsed here."""
    from paste.deploy import loadapp

    from abbild import config
    from abbild_registry.app import load_conf

    conf = load_conf(config_files)
    ini = conf.registry_server.paste_config_file or SHIPPED_INI
    return loadapp(
        f"config:{os.path.abspath(ini)}",
        name="abbild-registry",
        global_conf=config.pipeline_global_conf(conf, config_files),
    )
