"""The README's first command, run as a new user runs it: in a fresh clone, with a fresh
venv (``python3 -m venv``: no system site-packages), ``make serve``. It installs abbild
and the filesystem driver with only what they declare (a runtime dependency that only
the test extras brought once made it die with ModuleNotFoundError) and serves the
embedded default, SQLite and a local directory, which a real client then uses.

The clone is a copy of the checkout (see ``copy_checkout``), so the editable install
``make serve`` makes goes into the copy and the new venv only, never into the checkout
or the environment the tests run in.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from glanceclient import Client, exc

from tests.test_packaging import ROOT, clean_env, copy_checkout, run

MiB = 1 << 20

# README.md shows Client("2", endpoint=...), which glanceclient calls deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")


def readme_first_command() -> list[str]:
    """The first command of the README's quick start, without its comment."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## Quick start\n.*?^```sh\n(.*?)^```", readme, re.M | re.S)
    assert block, "README.md has no quick start with a sh block"
    return block.group(1).splitlines()[0].split("#")[0].split()


def free_port() -> int:
    """A free loopback port below the ephemeral range. The server binds it only once make
    serve has installed everything, half a minute or more later, and meanwhile the other
    tests' connections take their local ports from the ephemeral range."""
    ephemeral = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(ephemeral // 2, ephemeral)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def build_artefacts() -> set[str]:
    """What a build leaves behind that ``git status`` shows in the checkout (that is, what
    .gitignore lets through, to be committed by mistake)."""
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT).stdout
    return {
        line[3:]
        for line in status.splitlines()
        if line.startswith("?? ")
        and re.search(r"(^|/)(build|dist|\.eggs|__editable__[^/]*)/|\.(egg|dist)-info/|\.whl$", line[3:])
    }


def group_members(pgid: int) -> list[str]:
    """The live processes of process group *pgid* (zombies waiting for whichever init
    adopted them do not run)."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{stat.parent.name}: {cmdline}")
    return found


def wait_healthy(proc: subprocess.Popen, url: str, log: pathlib.Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"make serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "/healthcheck", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"make serve did not answer within {timeout}s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> list[str]:
    """Stop the process group (make, the server and its workers) with SIGTERM; returns
    what still ran a minute later, killed then."""
    with_signal = signal.SIGTERM
    for _ in range(2):
        try:
            os.killpg(proc.pid, with_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 60
        while (left := group_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not left:
            break
        with_signal = signal.SIGKILL
    proc.wait(timeout=10)
    return left


def use_it(url: str, data_dir: pathlib.Path) -> None:
    """Create, upload, download, delete with python-glanceclient, as the README shows."""
    glance = Client("2", endpoint=url, token="x")
    data = os.urandom(3 * MiB + 123)
    image = glance.images.create(name="quickstart", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(data))
    got = glance.images.get(image.id)
    assert (got.status, got.size, got.checksum) == ("active", len(data), hashlib.md5(data).hexdigest())
    stored = [p for p in (data_dir / "images").rglob("*") if p.is_file()]
    assert [p.stat().st_size for p in stored] == [len(data)]  # the local directory holds it
    assert b"".join(glance.images.data(image.id)) == data  # glanceclient checks the md5 too
    glance.images.delete(image.id)
    with pytest.raises(exc.HTTPNotFound):
        glance.images.get(image.id)
    assert not stored[0].exists()


def test_make_serve_in_a_fresh_clone_and_venv(tmp_path):
    artefacts_before = build_artefacts()
    clone = copy_checkout(tmp_path / "abbild")
    venv = clone / ".venv"  # as the README says
    run([sys.executable, "-m", "venv", venv])
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    command = readme_first_command()
    assert command == ["make", "serve"]
    port, data_dir = free_port(), tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "make-serve.log"
    # As after `. venv/bin/activate`; PYTHON names the venv's interpreter all the same.
    env = clean_env(PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, f"PYTHON={venv / 'bin/python'}", f"ARGS=--port {port} --data-dir {data_dir}"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # It installs first: resolving and downloading abbild's requirements takes most of it.
        wait_healthy(proc, url, log, timeout=480)
        assert (data_dir / "abbild.sqlite").is_file()
        use_it(url, data_dir)
    finally:
        left = stop(proc)
    assert not left, f"still running after the server was stopped: {left}"
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # The tests' own environment still imports the checkout, and the checkout holds no
    # new build artefacts.
    elsewhere = tmp_path / "elsewhere"  # a folder without an abbild/ in it
    elsewhere.mkdir()
    here = run([sys.executable, "-c", "import abbild; print(abbild.__file__)"], cwd=elsewhere).stdout.strip()
    assert here == str(ROOT / "core/abbild/__init__.py")
    assert build_artefacts() <= artefacts_before
