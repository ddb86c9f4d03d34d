"""Functional-test fixtures: a real ``abbild serve`` on a free loopback port, once per
test session (and xdist worker), stopped afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An ``abbild serve`` subprocess in its own process group."""

    def __init__(self, data_dir, *args: str) -> None:
        self.data_dir = str(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.data_dir, f"serve-{self.port}.log")

    def start(self, timeout: float = 30) -> "Server":
        os.makedirs(self.data_dir, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "abbild.cli", "serve", "--port", str(self.port), *self.args]
                + ([] if "--config-file" in self.args else ["--data-dir", self.data_dir]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
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
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("abbild")).start()
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
    for srv in servers:
        srv.stop()


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
    for srv in servers:
        srv.stop()
