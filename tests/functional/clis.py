"""The command-line clients (``glance``, ``openstack``) as the functional tests run them.

Every command runs in a process of its own, with its own argv, environment, working
directory, stdin (/dev/null) and captured output, and goes to the server over HTTP, as
a user's command does. The process is forked from a runner that has imported the
clients already: importing openstackclient alone takes 1.5 s of a 2 s command, and the
suite runs several hundred commands. The forked process calls the console script's own
entry point (``openstackclient.shell:main``, ``glanceclient.shell:main``), as the
script would.

Run as a script, this file is that runner: ``python clis.py SOCKET`` preloads the
clients, says ``ready`` on stdout, forks one process per connection to SOCKET, and
exits when its stdin closes (the test process went away).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

TIMEOUT = 120  # seconds, for one command
FORKED = ("glance", "openstack")  # the console scripts the runner has preloaded


def executable(name: str) -> str:
    """The console script next to this interpreter (not a pyenv shim), else the one on PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name)


def run(argv, env, ok=True) -> subprocess.CompletedProcess:
    """Run the command *argv* with *env*, its output captured as text; with *ok*, the
    test fails unless it exits with 0."""
    if os.path.basename(argv[0]) in FORKED:
        proc = _runner().run(list(argv), dict(env))
    else:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if ok and proc.returncode != 0:
        import pytest

        pytest.fail(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class _Runner:
    """The test process's side: one runner process, started on first use."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="abbild-clis-")
        self.socket = os.path.join(self.dir, "runner.sock")
        home = os.path.join(self.dir, "home")  # what the clients see at import time
        os.mkdir(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = home
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.socket],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.wait(timeout=TIMEOUT)
            raise RuntimeError(f"the command runner exited with {self.proc.returncode}")
        atexit.register(self.stop)

    def run(self, argv: list[str], env: dict) -> subprocess.CompletedProcess:
        out = tempfile.NamedTemporaryFile(dir=self.dir, prefix="out-", delete=False)
        err = tempfile.NamedTemporaryFile(dir=self.dir, prefix="err-", delete=False)
        out.close(), err.close()
        request = {"argv": argv, "env": env, "cwd": os.getcwd(), "stdout": out.name, "stderr": err.name}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT)
                conn.connect(self.socket)
                conn.sendall(json.dumps(request).encode() + b"\n")
                replies = conn.makefile("r")
                pid = _reply(replies, "pid", argv)
                try:
                    returncode = _reply(replies, "returncode", argv)
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(argv, TIMEOUT) from None
            return subprocess.CompletedProcess(argv, returncode, _read(out.name), _read(err.name))
        finally:
            os.unlink(out.name), os.unlink(err.name)

    def stop(self) -> None:
        self.proc.stdin.close()  # the runner's signal to exit
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


_lock = threading.Lock()
_started: _Runner | None = None


def _runner() -> _Runner:
    global _started
    with _lock:
        if _started is None or _started.proc.poll() is not None:
            _started = _Runner()
        return _started


def _reply(replies, name: str, argv) -> int:
    line = replies.readline()
    if not line:
        raise RuntimeError(f"the process running {' '.join(argv)} died before it told its {name}")
    return json.loads(line)[name]


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# -- the runner ---------------------------------------------------------------------------


def _preload() -> dict:
    """Import what the clients import, before any fork: :returns: their entry points."""
    from importlib.metadata import entry_points

    import keystoneauth1.loading

    keystoneauth1.loading.get_available_plugin_loaders()
    for group in ("openstack.cli.base", "openstack.image.v2"):  # the commands the tests run
        for ep in entry_points(group=group):
            try:
                ep.load()
            except Exception:  # noqa: BLE001 - a command that cannot load fails when it runs
                pass
    import glanceclient.v2.client  # noqa: F401
    import glanceclient.v2.shell  # noqa: F401

    return {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name in FORKED}


def _serve(path: str) -> None:
    import selectors

    scripts = _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the commands' processes reap themselves
    print("ready", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                return  # stdin closed: the test process is done
            conn, _ = listener.accept()
            sys.stdout.flush(), sys.stderr.flush()
            if os.fork() == 0:
                listener.close()
                _command(conn, scripts)  # never returns
            conn.close()


def _command(conn: socket.socket, scripts: dict) -> None:
    """In the forked process: run one command, send its exit status, exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        request = json.loads(conn.makefile("r").readline())
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, target, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY),
            (2, request["stderr"], os.O_WRONLY),
        ):
            opened = os.open(target, flags)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = request["argv"]
        main = scripts[os.path.basename(sys.argv[0])].load()
        returncode = _exit_status(main)
        sys.stdout.flush(), sys.stderr.flush()
        conn.sendall(json.dumps({"returncode": returncode}).encode() + b"\n")
    finally:
        os._exit(0)


def _exit_status(main) -> int:
    """What ``sys.exit(main())`` in the console script would exit with."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - the interpreter would print it and exit with 1
        import traceback

        traceback.print_exc()
        return 1
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve(sys.argv[1])
