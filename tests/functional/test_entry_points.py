"""The production entry points (``abbild api``, the WSGI application for mod_wsgi)
never fail open: without an explicit auth flavour, with a misspelt one, or with
``noauth`` where others could reach it, they refuse to start; ``noauth`` answers
loopback clients only, whatever server runs it. ``abbild serve`` keeps its embedded
default (noauth on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import webob

from tests.functional.conftest import free_port

KEYSTONE_WITHOUT_FLAVOR = """
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
auth_url = http://127.0.0.1:5000/v3
"""


def _config(tmp_path, text: str) -> str:
    port = free_port()
    path = tmp_path / "abbild-api.conf"
    path.write_text(f"[DEFAULT]\nbind_port = {port}\nworkers = 1\n[database]\n"
                    f"connection = sqlite:///{tmp_path}/abbild.sqlite\n[local]\ndatadir = {tmp_path}/images\n"
                    + text)  # fmt: skip
    return str(path)


def _refused(args, env=None) -> str:
    """Run an entry point that must refuse to start; returns what it said."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert proc.returncode != 0, f"it started:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr  # oslo.log writes to stdout


@pytest.mark.parametrize(
    "text, message",
    [
        (KEYSTONE_WITHOUT_FLAVOR, "[paste_deploy] flavor is not set"),
        ("[paste_deploy]\nflavour = keystone\n", "[paste_deploy] flavor is not set"),  # the option misspelt
        ("[paste_deploy]\nflavor = keystnoe\n", "no pipeline abbild-api-keystnoe; its flavours are: keystone, noauth, "
                                                "trusted-headers"),
        ("[DEFAULT]\nbind_host = 0.0.0.0\n[paste_deploy]\nflavor = noauth\n", "will not listen on 0.0.0.0 without "
                                                                                "authentication"),
    ],
)
def test_abbild_api_refuses_to_start(tmp_path, text, message):
    said = _refused(["-m", "abbild_cmd.cli", "api", "--config-file", _config(tmp_path, text)])
    assert message in said


def test_the_wsgi_application_refuses_to_load_without_a_flavor(tmp_path):
    _config(tmp_path, KEYSTONE_WITHOUT_FLAVOR)
    said = _refused(["-c", "import abbild_cmd.wsgi"], env={"ABBILD_CONFIG_DIR": str(tmp_path)})
    assert "[paste_deploy] flavor is not set" in said


def test_abbild_serve_keeps_noauth_to_loopback(tmp_path):
    said = _refused(["-m", "abbild_cmd.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
                     "--data-dir", str(tmp_path)])  # fmt: skip
    assert "will not listen on 0.0.0.0 without authentication" in said


def test_noauth_answers_loopback_clients_only(tmp_path):
    """mod_wsgi or uWSGI listen wherever they are told: the noauth filter itself refuses
    a client from another machine."""
    from abbild_paste.pipeline import load_api

    app = load_api([_config(tmp_path, "[paste_deploy]\nflavor = noauth\n")])
    remote = webob.Request.blank("/v2/images", remote_addr="192.0.2.7").get_response(app)
    assert remote.status_int == 403 and b"own machine only" in remote.body
    public = webob.Request.blank("/v2/images", method="POST", remote_addr="192.0.2.7", json={"visibility": "public"})
    assert public.get_response(app).status_int == 403
    local = webob.Request.blank("/v2/images", remote_addr="127.0.0.1").get_response(app)
    assert local.status_int == 200
