"""For tests that need a real backend (a database server, Ceph, Swift, Keystone):
finding the settings its start script wrote, and giving up the right way when it is
not there. Locally such tests skip with the reason; under ``CI=true`` a backend that
should have been started is a failure, never a silent skip."""

from __future__ import annotations

import os
import shlex
from typing import NoReturn

import pytest


def backend_unavailable(reason: str) -> NoReturn:
    """Skip the test with *reason*, or fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: make test starts every backend)", pytrace=False)
    pytest.skip(reason)


def read_env_file(path: str) -> dict[str, str]:
    """The ``export NAME=value`` lines a start script wrote to *path* (``tools/*-up.sh``);
    empty when there is no such file."""
    if not os.path.exists(path):
        return {}
    found = {}
    with open(path) as f:
        for line in f:
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                name, _, value = words[1].partition("=")
                found[name] = value
    return found
