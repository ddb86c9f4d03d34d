"""A loaded pipeline parses its configuration once: the app and every filter share one
ConfigOpts, so options a plugin registers (from ``abbild_configure``) reach the filters.
A plain ``paste.deploy.loadapp`` of a shipped ini still works: its factories parse the
files they are given."""

from __future__ import annotations

import sys
import textwrap

import pytest
import webob
from paste.deploy import loadapp

from abbild import config
from abbild import registry_wire as wire
from abbild_paste import pipeline
from abbild_registry.pipeline import SHIPPED_INI as REGISTRY_INI
from abbild_registry.pipeline import load_registry_app

PLUGIN = """
from oslo_config import cfg

from abbild import config, hookimpl

built = []  # (the probe filter's conf, the app it wraps)


@hookimpl
def abbild_configure(conf):
    conf.register_opt(cfg.StrOpt("greeting", default="unset"), group="probe_plugin")


def probe_filter_factory(global_conf, **local_conf):
    conf = config.for_pipeline(global_conf)
    greeting = conf.probe_plugin.greeting  # read when the filter is built, as filters do

    def make(app):
        built.append((conf, app))

        def middleware(environ, start_response):
            def start(status, headers, exc_info=None):
                return start_response(status, [*headers, ("X-Probe-Greeting", greeting)], exc_info)

            return app(environ, start)

        return middleware

    return make
"""

PROBE_INI = """
[pipeline:abbild-api-probe]
pipeline = http_proxy_to_wsgi request_id healthcheck versions noauth probe api

[app:api]
use = egg:abbild#main

[filter:http_proxy_to_wsgi]
use = egg:abbild#http_proxy_to_wsgi

[filter:request_id]
use = egg:abbild#request_id

[filter:healthcheck]
use = egg:abbild#healthcheck

[filter:versions]
use = egg:abbild#versions

[filter:noauth]
use = egg:abbild#noauth

[filter:probe]
paste.filter_factory = abbild_probe_plugin:probe_filter_factory
"""


def _api_config(tmp_path, text: str = "") -> str:
    path = tmp_path / "abbild-api.conf"
    path.write_text(
        f"[database]\nconnection = sqlite:///{tmp_path}/abbild.sqlite\n"
        f"[DEFAULT]\nenabled_backends = local:filesystem\ndefault_backend = local\n"
        f"[local]\ndatadir = {tmp_path}/images\n" + textwrap.dedent(text)
    )
    return str(path)


@pytest.fixture
def probe_plugin(tmp_path, monkeypatch):
    """An installed plugin (an ``abbild.plugins`` entry point) that registers an option
    and ships a paste filter reading it."""
    site = tmp_path / "site"
    dist = site / "abbild_probe_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: abbild-probe-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[abbild.plugins]\nprobe = abbild_probe_plugin\n")
    (site / "abbild_probe_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("abbild_probe_plugin", None)


@pytest.fixture
def confs_handed_out(monkeypatch):
    """Every configuration a factory asked for, and how many times files were parsed."""
    handed, parsed = [], []
    for_pipeline, load = config.for_pipeline, config.load

    def recording_for_pipeline(global_conf):
        handed.append(for_pipeline(global_conf))
        return handed[-1]

    def counting_load(*args, **kwargs):
        parsed.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(config, "for_pipeline", recording_for_pipeline)
    monkeypatch.setattr(config, "load", counting_load)
    return handed, parsed


def test_the_keystone_pipeline_parses_once_and_shares_it(tmp_path, confs_handed_out):
    handed, parsed = confs_handed_out
    files = [
        _api_config(
            tmp_path,
            """
        [keystone_authtoken]
        www_authenticate_uri = http://127.0.0.1:5000/v3
        auth_type = password
        auth_url = http://127.0.0.1:5000/v3
        username = abbild
        password = not-asked-for-a-request-without-a-token
        project_name = service
        user_domain_name = Default
        project_domain_name = Default
        [oslo_middleware]
        enable_proxy_headers_parsing = true
        """,
        )
    ]
    app = pipeline.load_api(files, "keystone")
    assert len(parsed) == 1
    # the app, http_proxy_to_wsgi, versions, authtoken and context
    assert len(handed) == 5 and all(conf is handed[0] for conf in handed)
    assert webob.Request.blank("/v2/images").get_response(app).status_int == 401

    handed.clear()
    conf = config.load(files)
    pipeline.load_api(files, "keystone", conf=conf)  # as `abbild serve`, `abbild api` and the WSGI application
    assert len(parsed) == 2 and len(handed) == 5 and all(c is conf for c in handed)


def test_a_plugins_option_reaches_the_filters(tmp_path, probe_plugin):
    import abbild_probe_plugin

    ini = tmp_path / "probe-paste.ini"
    ini.write_text(PROBE_INI)
    files = [
        _api_config(
            tmp_path,
            f"""
        [paste_deploy]
        flavor = probe
        config_file = {ini}
        [probe_plugin]
        greeting = hello from the config file
        """,
        )
    ]
    app = pipeline.load_api(files)
    response = webob.Request.blank("/v2/images", remote_addr="127.0.0.1").get_response(app)
    assert response.status_int == 200
    assert response.headers["X-Probe-Greeting"] == "hello from the config file"
    [(conf, api)] = abbild_probe_plugin.built
    assert api.service.conf is conf


def test_a_plain_loadapp_of_the_shipped_ini_still_works(tmp_path, confs_handed_out):
    handed, parsed = confs_handed_out
    files = _api_config(tmp_path)
    app = loadapp(f"config:{pipeline.SHIPPED_INI}", name="abbild-api-noauth", global_conf={"config_files": files})
    assert webob.Request.blank("/v2/images", remote_addr="127.0.0.1").get_response(app).status_int == 200
    assert len(handed) == 3 and len(parsed) == 3  # the app, http_proxy_to_wsgi and versions parse for themselves


def test_the_registry_pipeline_parses_once_and_shares_it(tmp_path, confs_handed_out):
    handed, parsed = confs_handed_out
    path = tmp_path / "abbild-registry.conf"
    path.write_text(
        f"[database]\nconnection = sqlite:///{tmp_path}/registry.sqlite\n[registry_server]\nauth_strategy = noauth\n"
    )
    app = load_registry_app([str(path)])
    assert len(parsed) == 1
    assert len(handed) == 2 and handed[0] is handed[1]  # the app and the auth filter
    plain = loadapp(f"config:{REGISTRY_INI}", name="abbild-registry", global_conf={"config_files": str(path)})
    for loaded in (app, plain):
        request = webob.Request.blank(
            "/v1/images?limit=1", remote_addr="127.0.0.1", headers={wire.CALLER_HEADER: wire.caller_header(None)}
        )
        assert request.get_response(loaded).status_int == 200
