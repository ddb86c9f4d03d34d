"""Functional-test fixtures: a real ``abbild serve`` on a free loopback port, once per
test session (and xdist worker), stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.functional import stores

# ABBILD_TEST_REGISTRY=http runs every API server with ``registry = http``, talking to
# its own ``abbild registry`` process (signed requests, the same database the embedded
# registry would use), so the whole suite also covers the private registry service.
REGISTRY = os.environ.get("ABBILD_TEST_REGISTRY", "sql")
REGISTRY_SECRET = os.urandom(16).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, what: str, read_log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{read_log()}")
        try:
            with urllib.request.urlopen(url + "/healthcheck", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout}s:\n{read_log()}")


def _stop_groups(procs, sig=signal.SIGTERM) -> None:
    """Signal the process groups of *procs* all at once, then wait for each (SIGKILL
    after 30 s): a gunicorn master takes about half a second to stop its worker, and a
    session's teardown stops dozens of servers."""
    running = [proc for proc in procs if proc is not None and proc.poll() is None]
    for proc in running:
        os.killpg(proc.pid, sig)
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def stop_servers(servers) -> None:
    """Stop *servers* (:class:`Server`) together: the API processes first, then the
    registries they used, so that no API outlives its registry."""
    _stop_groups([srv.proc for srv in servers])
    _stop_groups([srv.registry.proc for srv in servers if srv.registry is not None])


class ApiProcess:
    """An ``abbild api`` process set up like a production host: *config* becomes
    ``abbild-api.conf`` in *base*, found through ``ABBILD_CONFIG_DIR``. Give it the
    ``bind_port`` of *port*, and ``log_file = <base>/abbild-api.log`` for :meth:`log`."""

    def __init__(self, base, port: int, config: str, timeout: float = 60) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.url = f"http://127.0.0.1:{port}"
        (base / "abbild-api.conf").write_text(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abbild_cmd.cli", "api"],
            env=dict(os.environ, ABBILD_CONFIG_DIR=str(base)),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(self.proc, self.url, timeout, "abbild api", self.log)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthcheck", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        path = self.base / "abbild-api.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig=signal.SIGTERM) -> None:
        _stop_groups([self.proc], sig)


class RegistryProcess:
    """An ``abbild registry`` subprocess serving the database of *config_files*, with
    the session's shared secret; ``start()`` again after ``kill()`` reuses its port."""

    def __init__(self, data_dir, config_files, secret: str = REGISTRY_SECRET) -> None:
        self.data_dir = str(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secret
        self.conf = os.path.join(self.data_dir, f"registry-{self.port}.conf")
        with open(self.conf, "w") as f:
            f.write(f"[registry_server]\nshared_secret = {secret}\n")
        self.config_files = [*config_files, self.conf]
        self.log = os.path.join(self.data_dir, f"registry-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.client_options = ""  # more [registry_client] lines for client_config()

    def client_config(self) -> str:
        """A config file that points an API server at this registry."""
        path = os.path.join(self.data_dir, f"registry-client-{self.port}.conf")
        with open(path, "w") as f:
            f.write(
                f"[DEFAULT]\nregistry = http\n\n[registry_client]\nurl = {self.url}\n"
                f"shared_secret = {self.secret}\n{self.client_options}"
            )
        return path

    def start(self, timeout: float = 30) -> RegistryProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "abbild_cmd.cli",
                    "registry",
                    "--port",
                    str(self.port),
                    *(a for f in self.config_files for a in ("--config-file", f)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_healthy(self.proc, self.url, timeout, "abbild registry", self.read_log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        _stop_groups([self.proc], signal.SIGKILL)

    def stop(self) -> None:
        _stop_groups([self.proc])


class Server:
    """An ``abbild serve`` subprocess in its own process group."""

    def __init__(self, data_dir, *args: str) -> None:
        self.data_dir = str(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.data_dir, f"serve-{self.port}.log")
        self.registry: RegistryProcess | None = None

    def _with_registry(self, args: list[str]) -> list[str]:
        """*args* for ``registry = http``: the server's own config files, then one that
        points it at a registry process serving the database they name."""
        from abbild import config

        if "--config-file" not in args:
            args = [*args, "--config-file", config.embedded_config_file(self.data_dir)]
        files = [args[i + 1] for i, a in enumerate(args) if a == "--config-file"]
        if self.registry is None:
            self.registry = RegistryProcess(self.data_dir, files)
        if self.registry.proc is None or self.registry.proc.poll() is not None:
            self.registry.start()
        return [*args, "--config-file", self.registry.client_config()]

    def start(self, timeout: float = 30) -> Server:
        os.makedirs(self.data_dir, exist_ok=True)
        args = list(self.args)
        if REGISTRY == "http":
            args = self._with_registry(args)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "abbild_cmd.cli", "serve", "--port", str(self.port), *args]
                + ([] if "--config-file" in args else ["--data-dir", self.data_dir]),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"abbild serve exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthcheck", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"abbild serve did not answer within {timeout}s:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill the whole process group (gunicorn's master and workers)."""
        _stop_groups([self.proc], sig)

    def stop(self) -> None:
        stop_servers([self])


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The session's server: the embedded default, or with ``ABBILD_TEST_STORE`` as its
    default store (see tests/functional/stores.py)."""
    base = tmp_path_factory.mktemp("abbild")
    with stores.default_store_config(str(base)) as store_config:
        args = ()
        if store_config is not None:
            conf = base / "abbild-api.conf"
            conf.write_text(f"{store_config}\n[database]\nconnection = sqlite:///{base}/abbild.sqlite\n")
            args = ("--config-file", str(conf))
        srv = Server(base, *args).start()
        if store_config is not None:
            with urllib.request.urlopen(srv.url + "/v2/info/stores/detail", timeout=10) as resp:
                [store] = json.load(resp)["stores"]
            assert store["type"] == stores.STORE, store
        yield srv
        srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """Servers a test starts (and may kill) itself; all stopped afterwards."""
    servers = []

    def make(*args, data_dir=None):
        srv = Server(data_dir or tmp_path, *args)
        servers.append(srv)
        return srv

    yield make
    stop_servers(servers)


@pytest.fixture
def make_registry(tmp_path):
    """``abbild registry`` processes a test starts (and may kill) itself:
    ``make_registry(data_dir, config_files)``; all stopped afterwards."""
    registries = []

    def make(data_dir, config_files):
        registry = RegistryProcess(data_dir, config_files)
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.stop()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory):
    """Start a server with its own config file, for a module's lifetime or longer:
    ``server_factory(name, config_text)``; ``{dir}`` in the text is its own directory."""
    servers = []

    def make(name: str, config_text: str) -> Server:
        base = tmp_path_factory.mktemp(name)
        conf = base / "abbild-api.conf"
        conf.write_text(config_text.format(dir=base))
        srv = Server(base, "--config-file", str(conf)).start()
        servers.append(srv)
        return srv

    yield make
    stop_servers(servers)


@pytest.fixture
def project():
    """A fresh project id, for tests whose callers are described by trusted headers."""
    import uuid

    return f"p-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def server_on_database(backend: str, base) -> Iterator[tuple[Server, list[str], str]]:
    """An ``abbild serve`` (SQLite config and the filesystem store in *base*) on a fresh,
    migrated database of *backend* (``tests.conftest.SQL_BACKENDS``): the server, its
    config files and the database URL."""
    from tests.conftest import _sql_database, _sql_migrate
    from tests.functional.helpers import server_config

    with _sql_database(backend, base) as database:
        _sql_migrate(database)
        api_conf, db_conf = base / "abbild-api.conf", base / "database.conf"
        api_conf.write_text(server_config().format(dir=base))
        db_conf.write_text(f"[database]\nconnection = {database}\n")  # the later file wins
        srv = Server(base, "--config-file", str(api_conf), "--config-file", str(db_conf)).start()
        try:
            yield srv, [str(api_conf), str(db_conf)], database
        finally:
            srv.stop()
