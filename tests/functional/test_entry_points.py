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
    path.write_text(
        f"[DEFAULT]\nbind_port = {port}\nworkers = 1\n[database]\n"
        f"connection = sqlite:///{tmp_path}/abbild.sqlite\n[local]\ndatadir = {tmp_path}/images\n" + text
    )
    return str(path)


def _refused(args, env=None) -> str:
    """Run an entry point that must refuse to start; returns what it said."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    assert proc.returncode != 0, f"it started:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr  # oslo.log writes to stdout


@pytest.mark.parametrize(
    "text, message",
    [
        (KEYSTONE_WITHOUT_FLAVOR, "[paste_deploy] flavor is not set"),
        ("[paste_deploy]\nflavour = keystone\n", "[paste_deploy] flavor is not set"),  # the option misspelt
        (
            "[paste_deploy]\nflavor = keystnoe\n",
            "no pipeline abbild-api-keystnoe; its flavours are: keystone, noauth, trusted-headers",
        ),
        (
            "[DEFAULT]\nbind_host = 0.0.0.0\n[paste_deploy]\nflavor = noauth\n",
            "will not listen on 0.0.0.0 without authentication",
        ),
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
    said = _refused(
        ["-m", "abbild_cmd.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path)]
    )
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


# -- keystone needs a usable [keystone_authtoken] ---------------------------------------------

UNUSABLE_AUTHTOKEN = [
    # keystonemiddleware would start with these and answer every request 500
    ("", ["www_authenticate_uri", "auth_type"]),
    (
        "[keystone_authtoken]\nwww_authenticate_uri = http://127.0.0.1:5000/v3\nauth_url = http://127.0.0.1:5000/v3\n",
        ["auth_type"],
    ),
    (
        "[keystone_authtoken]\nauth_type = password\nusername = abbild\npassword = x\n",
        ["www_authenticate_uri", "auth_url"],
    ),
]
ENTRY_POINTS = {
    "abbild api": lambda conf: ["-m", "abbild_cmd.cli", "api", "--config-file", conf],
    "abbild serve": lambda conf: ["-m", "abbild_cmd.cli", "serve", "--port", str(free_port()), "--config-file", conf],
    "wsgi": lambda conf: ["-c", "import abbild_cmd.wsgi"],
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("text, missing", UNUSABLE_AUTHTOKEN, ids=["no-section", "no-auth_type", "no-urls"])
def test_keystone_flavour_refuses_to_start_without_a_usable_authtoken_section(tmp_path, entry_point, text, missing):
    conf = _config(tmp_path, "[paste_deploy]\nflavor = keystone\n" + text)
    said = _refused(ENTRY_POINTS[entry_point](conf), env={"ABBILD_CONFIG_DIR": str(tmp_path)})
    assert "flavor = keystone: [keystone_authtoken]" in said
    lacks = said.split(" lacks ", 1)[1].split(". Without them")[0]
    for name in missing:
        assert name in lacks
    assert ("www_authenticate_uri" in lacks) == ("www_authenticate_uri" in missing)


def test_keystone_flavour_names_an_unknown_auth_plugin(tmp_path):
    conf = _config(
        tmp_path,
        "[paste_deploy]\nflavor = keystone\n[keystone_authtoken]\n"
        "www_authenticate_uri = http://127.0.0.1:5000/v3\nauth_type = pasword\n",
    )
    said = _refused(ENTRY_POINTS["abbild api"](conf))
    assert "auth_type = pasword: no such keystoneauth plugin" in said


# -- one config-discovery rule: --config-file, else $ABBILD_CONFIG_DIR/abbild-<service>.conf --


def _cli(args, tmp_path, config_dir, **kwargs) -> subprocess.CompletedProcess:
    """The abbild command with a private home (where the embedded default would go)."""
    home = tmp_path / "home"
    env = {**os.environ, "ABBILD_CONFIG_DIR": str(config_dir), "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    return subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", *args], capture_output=True, text=True, timeout=60, env=env, **kwargs
    )


@pytest.mark.parametrize(
    "command, service",
    [
        (["db", "sync"], "abbild-api"),
        (["db", "version"], "abbild-api"),
        (["stores"], "abbild-api"),
        (["api"], "abbild-api"),
        (["registry", "--port", "1"], "abbild-registry"),
    ],
)
def test_service_commands_want_their_config_file(tmp_path, command, service):
    """Without --config-file a service command reads $ABBILD_CONFIG_DIR/<service>.conf, and
    without that file it refuses: it never falls back to the embedded default."""
    empty = tmp_path / "etc"
    empty.mkdir()
    proc = _cli(command, tmp_path, empty)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{empty}/{service}.conf does not exist" in proc.stderr
    assert not (tmp_path / "home").exists(), "an embedded default was created"


def test_db_sync_migrates_the_database_of_the_config_dir_and_says_which(tmp_path):
    _config(tmp_path, "[paste_deploy]\nflavor = noauth\n")
    synced = _cli(["db", "sync"], tmp_path, tmp_path)
    assert synced.returncode == 0, synced.stderr
    url = f"sqlite:///{tmp_path}/abbild.sqlite"
    assert synced.stdout.startswith(f"{url}: created at revision ")
    assert f"config: {tmp_path}/abbild-api.conf" in synced.stdout
    assert (tmp_path / "abbild.sqlite").exists()
    revision = synced.stdout.split("revision ", 1)[1].split()[0]
    again = _cli(["db", "sync"], tmp_path, tmp_path)
    assert again.stdout.startswith(f"{url}: at revision {revision} ")
    assert _cli(["db", "version"], tmp_path, tmp_path).stdout.strip() == f"{url}: revision {revision}"
    assert not (tmp_path / "home").exists(), "an embedded default was created"


def test_db_sync_of_the_embedded_default_only_when_asked(tmp_path):
    data = tmp_path / "embedded"
    synced = _cli(["db", "sync", "--data-dir", str(data)], tmp_path, tmp_path / "nowhere")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith(f"sqlite:///{data}/abbild.sqlite: ")
    both = _cli(
        ["db", "sync", "--data-dir", str(data), "--config-file", str(data / "abbild-api.conf")], tmp_path, tmp_path
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_stores_reads_the_config_dir(tmp_path):
    _config(
        tmp_path,
        f"[DEFAULT]\nenabled_backends = here:filesystem\ndefault_backend = here\n[here]\ndatadir = {tmp_path}/here\n",
    )
    proc = _cli(["stores"], tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "here (default): driver=filesystem" in proc.stdout


def test_registry_reads_the_config_dir(tmp_path):
    """It gets as far as its own checks on the config it found."""
    (tmp_path / "abbild-registry.conf").write_text(
        f"[database]\nconnection = sqlite:///{tmp_path}/r.sqlite\n[registry_server]\nauth_strategy = noauth\n"
    )
    proc = _cli(["registry", "--host", "0.0.0.0", "--port", "1"], tmp_path, tmp_path)
    assert proc.returncode == 2 and "will not listen on 0.0.0.0 without authentication" in proc.stderr


@pytest.mark.parametrize(
    "ini, drain",
    [
        (None, "{config_dir}/healthcheck_disable"),  # the shipped pipelines
        ("disable_by_file_path = drain-me", "{config_dir}/drain-me"),
        ("disable_by_file_path = {tmp}/elsewhere", "{tmp}/elsewhere"),
    ],
)
def test_the_drain_file_lives_in_the_config_dir(tmp_path, monkeypatch, ini, drain):
    from abbild_paste.pipeline import SHIPPED_INI, load_api

    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    monkeypatch.setenv("ABBILD_CONFIG_DIR", str(config_dir))
    conf = _config(config_dir, "[paste_deploy]\nflavor = noauth\n")
    if ini:
        shipped = open(SHIPPED_INI).read()
        assert "# disable_by_file_path = " in shipped
        edited = shipped.replace("# disable_by_file_path = /run/abbild/drain", ini.format(tmp=tmp_path))
        (config_dir / "abbild-api-paste.ini").write_text(edited)
    app = load_api([conf])
    drain = drain.format(config_dir=config_dir, tmp=tmp_path)

    def health() -> int:
        return webob.Request.blank("/healthcheck", remote_addr="127.0.0.1").get_response(app).status_int

    assert health() == 200
    open(drain, "w").close()
    assert health() == 503
    os.unlink(drain)
    assert health() == 200
