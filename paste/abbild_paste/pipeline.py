"""Loading the abbild-api pipeline for a given configuration."""

from __future__ import annotations

import os
from collections.abc import Sequence

from paste.deploy import loadapp

from abbild import config

SHIPPED_INI = os.path.join(os.path.dirname(__file__), "abbild-api-paste.ini")


def load_api(config_files: Sequence[str], flavor: str | None = None):
    """The WSGI app of the pipeline ``abbild-api-<flavor>``; the flavour defaults to
    ``[paste_deploy] flavor``."""
    conf = config.load(config_files)
    ini = conf.paste_deploy.config_file or _ini_beside(config_files) or SHIPPED_INI
    return loadapp(
        f"config:{os.path.abspath(ini)}",
        name=f"abbild-api-{flavor or conf.paste_deploy.flavor}",
        global_conf={"config_files": ",".join(os.path.abspath(f) for f in config_files)},
    )


def _ini_beside(config_files: Sequence[str]) -> str | None:
    """An ``abbild-api-paste.ini`` next to a config file (the last one first), the way
    ``/etc/abbild`` holds both."""
    for path in reversed(config_files):
        ini = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(SHIPPED_INI))
        if os.path.isfile(ini):
            return ini
    return None
