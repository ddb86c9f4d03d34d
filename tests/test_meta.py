"""Meta-tests that keep the layout and the plugin surface honest."""

import configparser
import subprocess
import sys
import pathlib
import re

import pytest

from abbild.plugins import get_plugin_manager

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in get_plugin_manager(load_entrypoints=False).hook.__dict__ if name.startswith("abbild_"))
DRIVERS = sorted(p.name for p in (ROOT / "drivers").iterdir() if (p / "setup.cfg").exists())


def test_there_are_hooks_and_drivers():
    assert "abbild_image_uploaded" in HOOKS and "filesystem" in DRIVERS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    pm = get_plugin_manager(load_entrypoints=False)
    args = ", ".join(getattr(pm.hook, hook).spec.argnames)
    docs = (ROOT / "docs" / "hooks.md").read_text()
    assert f"## {hook}({args})" in docs


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"def test_hook_{hook}\b", tests)


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_has_a_conformance_test(driver):
    assert (ROOT / "drivers" / driver / "tests" / f"test_{driver}_conformance.py").exists()


@pytest.mark.parametrize("driver", DRIVERS)
def test_entry_point_name_is_the_folder_name(driver):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "drivers" / driver / "setup.cfg")
    assert cfg["metadata"]["name"] == f"abbild-{driver}"
    stores = [line.split("=")[0].strip() for line in cfg["options.entry_points"]["abbild.stores"].splitlines() if line]
    assert stores == [driver]
    assert (ROOT / "drivers" / driver / f"abbild_{driver}" / "__init__.py").exists()


def test_top_level_folders_are_not_packages():
    for folder in ("core", "api", "paste", "drivers", "etc", "tests", "bench"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_installed_import_names_only(tmp_path):
    """Outside the checkout, the folders are not importable; the packages are."""
    code = (
        "import importlib.util as u, sys;"
        "bad = [n for n in ('core', 'api', 'drivers') if u.find_spec(n)];"
        "import abbild, abbild_api, abbild_paste, paste.deploy;"
        "print(*bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
