"""`pip install .` must ship what an editable install finds in the tree: the three
packages and their data files, and nothing named after a folder."""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    [wheel] = out.glob("abbild-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_has_the_packages_and_their_data(wheel_names):
    for name in (
        "abbild/__init__.py",
        "abbild/db/migrations/env.py",
        "abbild/db/migrations/versions/0001_initial.py",
        "abbild/testing/conformance.py",
        "abbild_api/app.py",
        "abbild_cmd/cli.py",
        "abbild_registry/abbild-registry-paste.ini",
        "abbild_paste/abbild-api-paste.ini",
    ):
        assert name in wheel_names


def test_wheel_has_no_folder_names(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    assert tops <= {"abbild", "abbild_api", "abbild_paste", "abbild_registry", "abbild_cmd"} | {n for n in tops if n.endswith(".dist-info")}
