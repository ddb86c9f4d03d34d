"""Meta-tests that keep the layout and the plugin surface honest."""

import ast
import configparser
import pathlib
import re
import subprocess
import sys

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
    for folder in ("core", "api", "paste", "registry", "cmd", "drivers", "etc", "tests", "bench"):
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


# Which abbild packages each may import: the core imports nothing above it, the layers
# above import the core (and not each other), and only the composition root (abbild_cmd)
# puts them together. Drivers are the core's plugins.
LAYERS = {
    "core/abbild": {"abbild"},
    "api/abbild_api": {"abbild", "abbild_api"},
    "paste/abbild_paste": {"abbild", "abbild_paste"},
    "registry/abbild_registry": {"abbild", "abbild_registry"},
    "cmd/abbild_cmd": {"abbild", "abbild_api", "abbild_paste", "abbild_registry", "abbild_cmd"},
    **{f"drivers/{d}/abbild_{d}": {"abbild", f"abbild_{d}"} for d in DRIVERS},
}


def _abbild_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n == "abbild" or n.startswith("abbild_")}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_packages_import_only_their_layer_and_below(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_abbild_imports(path) - LAYERS[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in wrong.items() if names} == {}


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_the_tree_passes_ruff(command):
    """One formatter and linter, configured in pyproject.toml."""
    result = subprocess.run([sys.executable, "-m", "ruff", *command, str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
