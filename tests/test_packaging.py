"""What the distributions ship and what they declare.

`pip install .` must ship what an editable install finds in the tree, and nothing named
after a folder. And every distribution (abbild, and each driver under drivers/) must
work with only what it declares: each is installed, without extras, from a wheel built
from a copy of the checkout into a fresh venv of its own, where every module imports,
every entry point loads, and every module any of its files imports (even inside a
function) can be found, but for the few optional imports listed in OPTIONAL_IMPORTS.

The wheels, and those of everything they require, are made once per test run (one xdist
worker builds them while the others wait) into a wheelhouse; the venvs install from it
offline. Nothing is built in the checkout itself: a build/ folder left there would carry
modules since moved or deleted into later wheels.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import importlib.util
import inspect
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from abbild.testing.backends import backend_unavailable

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The distributions, by folder (relative to the checkout): abbild, and each driver.
DIST_DIRS = [pathlib.Path(".")] + sorted(p.parent.relative_to(ROOT) for p in ROOT.glob("drivers/*/setup.cfg"))


def dist_name(folder: pathlib.Path) -> str:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / folder / "setup.cfg")
    return cfg["metadata"]["name"]


DISTS = sorted(dist_name(d) for d in DIST_DIRS)

# Optional features: modules a distribution's code imports without requiring them, each
# with the extra that declares it. Their imports must be lazy (inside the function that
# needs them): every module must still import without them.
OPTIONAL_IMPORTS = {
    # Keystone tokens (flavor = keystone; auth_strategy = keystone on either side of the
    # registry): the code says to pip install 'abbild[keystone]' when they are missing.
    # Certificates of signed images in Barbican ([image_signature] certificate_source =
    # key_manager): start-up says to pip install castellan when it is missing.
    "abbild": {"keystonemiddleware": "keystone", "keystoneauth1": "keystone", "castellan": "barbican"},
}

# Modules that may fail to import, for the lack of one module only: (package, module).
NEEDS_MORE = {
    # The drivers' conformance suite and backend helpers, for test modules: pytest runs
    # whatever imports them (each driver's test extra declares it).
    "abbild": [("abbild.testing", "pytest")],
}

# Modules that are not on PyPI, so cannot be declared: Ceph's Python bindings come with
# Ceph (Debian's python3-rados, python3-rbd). The venv gets these modules only, linked
# from where tools/ceph-up.sh made them importable for the tests' Python.
SYSTEM_MODULES = {"abbild-rbd": ("rados", "rbd")}

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less what would point a Python at this one's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return {**env, **extra}


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """Run *args*; on failure, fail the test with what it printed."""
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=900,
        env=kwargs.pop("env", clean_env()),
        **kwargs,
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_checkout(dest: pathlib.Path) -> pathlib.Path:
    """Copy the checkout as git sees it to *dest*: tracked files as they are now (others'
    uncommitted changes included, unlike a clone) and new files that are not ignored; no
    build artefacts, no egg-info, nothing ignored. What a fresh clone would hold once
    the work in progress is committed."""
    names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, names.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build_requires(projects) -> list[str]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    found = set()
    for project in projects:
        if (project / "pyproject.toml").exists():
            with open(project / "pyproject.toml", "rb") as f:
                found.update(tomllib.load(f)["build-system"]["requires"])
    return sorted(found)


@contextlib.contextmanager
def run_lock(tmp_path_factory, name: str):
    """A folder shared by every xdist worker of this test run, held exclusively."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder; each worker's is below it
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield base / name


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> pathlib.Path:
    """Wheels of every distribution of the checkout and of everything they require."""
    with run_lock(tmp_path_factory, "wheelhouse") as work:
        house = work / "wheels"
        if (work / "done").exists():
            return house
        shutil.rmtree(work, ignore_errors=True)  # what a worker that failed left
        src = copy_checkout(work / "src")
        projects = [src / d for d in DIST_DIRS]
        # One venv holds the build requirements, and builds every wheel: pip's isolated
        # builds would install them again for each.
        builder = work / "builder"
        run([sys.executable, "-m", "venv", "--without-pip", builder])
        run([*PIP, "--python", builder / "bin/python", "install", "-q", *build_requires(projects)])
        run(
            [
                *PIP,
                "--python",
                builder / "bin/python",
                "wheel",
                "-q",
                "--no-build-isolation",
                "--no-deps",
                "-w",
                work / "own",
                *projects,
            ]
        )
        # The wheels, and those of what they require, resolved from the index, together.
        run([*PIP, "wheel", "-q", "-w", house, *(work / "own").glob("*.whl")])
        (work / "done").touch()
        return house


@pytest.fixture(scope="module")
def wheel_names(wheelhouse):
    [wheel] = wheelhouse.glob("abbild-[0-9]*.whl")
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


def test_wheel_has_the_shipped_metadefs(wheel_names):
    shipped = sorted(p.name for p in (ROOT / "etc/metadefs").glob("*.json"))
    assert shipped
    in_wheel = sorted(n.removeprefix("abbild_cmd/metadefs_files/") for n in wheel_names if "metadefs_files/" in n)
    assert in_wheel == shipped


def test_installed_abbild_loads_its_shipped_metadefs(wheelhouse, tmp_path):
    """``abbild db load-metadefs`` without --path, from a wheel (no checkout to fall back
    on): the definitions come from the installed package."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    run(
        [*PIP, "--python", venv / "bin/python", "install", "-q", "--no-compile", "--no-index"]
        + ["--find-links", wheelhouse, "abbild"]
    )
    data = tmp_path / "data"
    args = [venv / "bin/abbild", "db", "load-metadefs", "--data-dir", data]
    out = run(args, cwd=tmp_path).stdout
    shipped = len(list((ROOT / "etc/metadefs").glob("*.json")))
    assert f"{shipped} namespace(s) from " in out and "site-packages/abbild_cmd/metadefs_files" in out, out
    assert f": {shipped} created" in out, out
    assert f": {shipped} skipped" in run(args, cwd=tmp_path).stdout  # loaded once


def test_wheel_has_no_folder_names(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    packages = {"abbild", "abbild_api", "abbild_paste", "abbild_registry", "abbild_cmd"}
    assert tops <= packages | {n for n in tops if n.endswith(".dist-info")}


def probe(dist: str, optional: list, needs_more: list, result: str) -> None:
    """Run in the distribution's venv (so: the standard library only). Imports every
    module of *dist*, loads its entry points, and finds every top-level module its files
    import anywhere; writes what went wrong to *result* (JSON). See OPTIONAL_IMPORTS and
    NEEDS_MORE for *optional* and *needs_more*."""
    import ast
    import importlib
    import importlib.metadata
    import importlib.util
    import json
    import traceback

    def may_lack(module, name):
        return any((module + ".").startswith(package + ".") and name == lacking for package, lacking in needs_more)

    distribution = importlib.metadata.distribution(dist)
    files = [f for f in distribution.files if f.suffix == ".py"]
    present = {str(f) for f in files}
    imported, problems = [], []
    for f in sorted(files, key=str):
        parts = f.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        # A file in a folder that is no package (alembic's migrations) is loaded by path.
        in_package = all("/".join(parts[:i]) + "/__init__.py" in present for i in range(1, len(parts)))
        if in_package:
            try:
                importlib.import_module(name)
                imported.append(name)
            except ModuleNotFoundError as exc:
                if not may_lack(name, (exc.name or "").split(".")[0]):
                    problems.append(f"import {name}: {exc}")
            except Exception:
                problems.append(f"import {name}: {traceback.format_exc()}")
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                wanted = [node.module]
            else:
                continue
            for top in {w.split(".")[0] for w in wanted}:
                if importlib.util.find_spec(top) is None and top not in optional and not may_lack(name, top):
                    problems.append(f"{f} line {node.lineno} imports {top}, which {dist} does not require")
    for ep in distribution.entry_points:
        try:
            ep.load()
        except ModuleNotFoundError as exc:
            problems.append(f"entry point {ep.group} {ep.name} = {ep.value}: {exc}")
        except Exception:
            problems.append(f"entry point {ep.group} {ep.name} = {ep.value}: {traceback.format_exc()}")
    with open(result, "w") as out:
        json.dump({"imported": imported, "problems": problems, "requires": distribution.requires or []}, out)


@pytest.mark.parametrize("dist", DISTS)
def test_a_distribution_works_with_what_it_declares(dist, wheelhouse, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])  # the main pip installs into it
    run(
        [
            *PIP,
            "--python",
            venv / "bin/python",
            "install",
            "-q",
            "--no-compile",
            "--no-index",
            "--find-links",
            wheelhouse,
            dist,
        ]
    )
    site = pathlib.Path(
        run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    for module in SYSTEM_MODULES.get(dist, ()):
        spec = importlib.util.find_spec(module)
        if spec is None:
            backend_unavailable(f"{dist} needs {module}, which this Python cannot import: run tools/ceph-up.sh")
        origin = pathlib.Path(spec.origin).resolve()
        (site / origin.name).symlink_to(origin)
    # The WSGI module builds the application when imported (what mod_wsgi wants): a
    # configuration with nothing in it from another distribution.
    (tmp_path / "abbild-api.conf").write_text(
        # web-download needs the http driver, and the staging area a driver: the core's own
        f"[DEFAULT]\nenabled_backends = mem:memory\ndefault_backend = mem\n"
        "enabled_import_methods = glance-direct, copy-image\n[os_glance_staging_store]\ndriver = memory\n"
        f"[database]\nconnection = sqlite:///{tmp_path}/abbild.sqlite\n[paste_deploy]\nflavor = noauth\n"
    )
    optional = OPTIONAL_IMPORTS.get(dist, {})
    result = tmp_path / "result.json"
    args = (dist, list(optional), NEEDS_MORE.get(dist, []), str(result))
    code = f"{inspect.getsource(probe)}\nprobe{args!r}\n"
    # -I: neither the working directory nor PYTHONPATH nor the user's site-packages.
    run([venv / "bin/python", "-I", "-c", code], cwd=tmp_path, env=clean_env(ABBILD_CONFIG_DIR=str(tmp_path)))
    found = json.loads(result.read_text())
    assert not found["problems"], "\n".join(found["problems"])
    assert found["imported"], f"{dist} installed no module"
    for name, extra in optional.items():
        declared = [r for r in found["requires"] if re.match(rf"{re.escape(name)}\b", r, re.I)]
        assert any(f'extra == "{extra}"' in r for r in declared), f"{name}: not in {dist}[{extra}]"
