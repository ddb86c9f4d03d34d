"""docs/deploying.md, run as written on this machine: the production guide cannot drift
from what works.

Its ``bash`` blocks run in order, as root, in one bash process (as an operator runs them
in one shell), with ``set -euo pipefail``; a block whose first line begins with
``# Alternative`` is not run (PostgreSQL instead of MariaDB, systemd instead of Apache).
The settings block of section 0 gets this machine's values, name by name: a setting the
test does not know fails it. Here that means: Debian's apt, Python and Apache with
mod_wsgi, a venv at /opt/abbild/venv with abbild installed from this checkout, the
machine's MariaDB (root through its socket), the shared Keystone of
tools/keystone-up.sh, memcached, and Apache serving abbild on port 9292. The guide's own
checks then upload and download an image as an ordinary user, through Keystone's
catalog, and compare the bytes.

The machine has no systemd: the guide uses ``service ... status || service ... start``
and ``apache2ctl``, which work with and without it. The test may be run again on the
same machine (the guide's blocks create only what is missing). At the end it stops the
Apache and memcached it started and removes the ``image`` service (and so its
endpoints) from Keystone's catalog; the users and projects it made stay. The
mod_wsgi-express Apache of tests/functional/test_apache.py is another server (own
config, pid file and ports 9480+), so both may run at once.

Skips only when not root, and not under CI=true.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploying.md"
PUBLIC_URL = "http://127.0.0.1:9292"
DB_PASSWORD = "guide-db-0a1b2c"
SERVICE_PASSWORD = "guide-service-3d4e5f"
USER, USER_PASSWORD, USER_PROJECT = "abbild-guide-user", "guide-user-6a7b8c", "abbild-guide"
APACHE_PID_FILE = "/var/run/apache2/apache2.pid"
SETTING = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass
class Block:
    line: int  # of the first line inside the fence
    language: str
    text: str

    @property
    def runs(self) -> bool:
        return self.language == "bash" and not self.text.lstrip().startswith("# Alternative")


def blocks(path: Path = GUIDE) -> list[Block]:
    found, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if current is None and line.startswith("```"):
            current = Block(number + 1, line[3:].strip(), "")
        elif current is not None and line.startswith("```"):
            found.append(current)
            current = None
        elif current is not None:
            current.text += line + "\n"
    assert current is None, f"{path}: unclosed fence at line {current.line - 1}"
    return found


def heading(block: Block) -> str:
    above = GUIDE.read_text().splitlines()[: block.line - 1]
    return next((line for line in reversed(above) if line.startswith("## ")), "")


def settings_block(guide: list[Block]) -> Block:
    """The first block that runs: section 0's settings."""
    first = next(b for b in guide if b.runs)
    assert heading(first) == "## 0. Site settings", f"the first bash block is under {heading(first)!r}"
    return first


def fill_settings(block: Block, values: dict[str, str]) -> str:
    """The settings block with each ``NAME=value`` line given this machine's value."""
    lines, names = [], []
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        setting = SETTING.match(line)
        assert setting, f"docs/deploying.md: section 0 holds only NAME=value lines and comments, not {line!r}"
        name = setting.group(1)
        assert name in values, f"docs/deploying.md: setting {name} is new: give it a value in {__file__}"
        names.append(name)
        lines.append(f"{name}={shlex.quote(values[name])}")
    assert sorted(names) == sorted(values), f"settings the guide no longer has: {sorted(set(values) - set(names))}"
    return "\n".join(lines) + "\n"


def script(guide: list[Block], values: dict[str, str]) -> str:
    settings = settings_block(guide)
    parts = ["set -euo pipefail\n"]
    for block in guide:
        if not block.runs:
            continue
        text = fill_settings(block, values) if block is settings else block.text
        parts.append(f"echo '>>> docs/deploying.md line {block.line}' >&2\n{text}")
    return "\n".join(parts)


def test_the_guide_has_few_alternatives_and_they_are_marked():
    guide = blocks()
    skipped = [b for b in guide if b.language == "bash" and not b.runs]
    assert 1 <= len(skipped) <= 3, [b.line for b in skipped]
    # Every shell block is a bash block (so it runs or is marked as an alternative).
    assert not [b.line for b in guide if b.language in ("sh", "shell", "console", "")]
    assert settings_block(guide).runs


# -- the run ---------------------------------------------------------------------------------


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _running(pid_file: str) -> bool:
    try:
        pid = int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists()


def _memcached_running() -> bool:
    return subprocess.run(["service", "memcached", "status"], capture_output=True).returncode == 0


def _keystone_env() -> dict[str, str]:
    up = subprocess.run(["bash", ROOT / "tools" / "keystone-up.sh"], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        _unavailable(f"Keystone could not be started (tools/keystone-up.sh):\n{up.stderr[-3000:]}")
    found = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
    return {k: shlex.split(v)[0] if v else "" for k, v in found.items()}


def _user_openrc(path: Path, keystone: dict[str, str]) -> None:
    """An ordinary user's credentials: role member in a project of their own."""
    from tests.functional import keystone as ks

    ks.ensure_user(USER, USER_PASSWORD, USER_PROJECT, ["member"])
    values = {
        **{k: v for k, v in keystone.items() if k.startswith("OS_")},
        "OS_USERNAME": USER,
        "OS_PASSWORD": USER_PASSWORD,
        "OS_PROJECT_NAME": USER_PROJECT,
    }
    path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))


def _remove_catalog_entry() -> None:
    """Other tests find abbild by URL, never through the catalog; still, leave Keystone's
    catalog as it was. Deleting a service deletes its endpoints."""
    from tests.functional import keystone as ks

    services = ks.admin_client().services
    for service in services.list(type="image"):
        services.delete(service)


def _apache_errors() -> str:
    try:
        return (
            "\n--- /var/log/apache2/abbild-api-error.log ---\n"
            + Path("/var/log/apache2/abbild-api-error.log").read_text()[-3000:]
        )
    except OSError:
        return ""


def _memcached_items() -> int:
    with socket.create_connection(("127.0.0.1", 11211), timeout=5) as conn:
        conn.sendall(b"stats\r\n")
        stats = b""
        while not stats.endswith(b"END\r\n"):
            chunk = conn.recv(65536)
            assert chunk, f"memcached closed the connection after {stats!r}"
            stats += chunk
    return int(re.search(rb"STAT total_items (\d+)", stats).group(1))


def _run(script_path: Path, env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run the guide; again (it is idempotent) while another apt-get holds apt's lock."""
    for attempt in range(4):
        with open(log, "w") as out:
            proc = subprocess.run(
                ["bash", str(script_path)],
                env=env,
                cwd=script_path.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=900,
            )
        said = log.read_text()
        if proc.returncode == 0 or "Could not get lock /var/lib/" not in said or attempt == 3:
            return proc.returncode, said
        time.sleep(15)


def test_the_guide_runs_as_written(tmp_path):
    if os.geteuid() != 0:
        _unavailable("the guide is run as root (apt-get, /etc, /opt)")
    keystone = _keystone_env()
    os.environ.setdefault("KEYSTONE_DIR", keystone.get("KEYSTONE_DIR", "/tmp/abbild-keystone"))
    _user_openrc(tmp_path / "user-openrc", keystone)
    values = {
        "ABBILD_SRC": str(ROOT),
        "ABBILD_PUBLIC_URL": PUBLIC_URL,
        "KEYSTONE_URL": keystone["OS_AUTH_URL"],
        "KEYSTONE_REGION": keystone.get("OS_REGION_NAME", "RegionOne"),
        "ADMIN_OPENRC": str(Path(keystone["KEYSTONE_DIR"]) / "env.sh"),
        "USER_OPENRC": str(tmp_path / "user-openrc"),
        "DB_HOST": "127.0.0.1",
        "DB_PASSWORD": DB_PASSWORD,
        "SERVICE_PASSWORD": SERVICE_PASSWORD,
        "MEMCACHED_SERVERS": "127.0.0.1:11211",
    }
    (tmp_path / "guide.sh").write_text(script(blocks(), values))
    # The operator's shell: no OS_* of the caller's (the guide sources its openrc files);
    # `openstack` is the console script beside this interpreter (a pyenv shim may lack it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTEST_", "PYTHON"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        DEBIAN_FRONTEND="noninteractive",
        HOME=str(tmp_path),
    )
    apache_was_running, memcached_was_running = _running(APACHE_PID_FILE), _memcached_running()
    Path("/etc/abbild/healthcheck_disable").unlink(missing_ok=True)  # left by an interrupted run
    api_log = Path("/var/log/abbild/abbild-api.log")
    api_log_start = api_log.stat().st_size if api_log.exists() else 0
    try:
        returncode, said = _run(tmp_path / "guide.sh", env, tmp_path / "guide.log")
        assert returncode == 0, (
            f"docs/deploying.md failed (exit {returncode}); the end of its output:\n" + said[-6000:] + _apache_errors()
        )

        # The guide's last check: `openstack image create --file`, `image save`, `cmp`, as
        # an ordinary user whose client found abbild in Keystone's catalog.
        assert re.search(r"image [0-9a-f-]{36}: the same bytes came back", said), said[-3000:]
        # db sync says which database it migrated, without its password.
        assert "mysql+pymysql://abbild:***@127.0.0.1/abbild?charset=utf8mb4: " in said
        assert "(config: /etc/abbild/abbild-api.conf)" in said
        assert DB_PASSWORD not in said and SERVICE_PASSWORD not in said
        # keystonemiddleware caches tokens in memcached, and does not warn.
        logged = api_log.read_text()[api_log_start:] if api_log.exists() else ""
        assert "in-process token cache" not in logged + _apache_errors()
        assert _memcached_items() > 0, "keystonemiddleware cached nothing in memcached"
        # The service runs as its own user; its config, which holds passwords, is its group's only.
        abbild = pwd.getpwnam("abbild").pw_uid
        assert {Path(p).stat().st_uid for p in (api_log, "/var/lib/abbild/images")} == {abbild}
        mode = Path("/etc/abbild/abbild-api.conf").stat().st_mode
        assert mode & 0o007 == 0 and mode & 0o040
    finally:
        if not apache_was_running:
            subprocess.run(["apache2ctl", "stop"], capture_output=True, timeout=60)
        if not memcached_was_running:
            subprocess.run(["service", "memcached", "stop"], capture_output=True, timeout=60)
        _remove_catalog_entry()
