"""Building a service's configuration: no global CONF, one ConfigOpts per service."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import uuid
import weakref
from collections.abc import Sequence

from oslo_config import cfg

from abbild import logging_setup, opts

CONFIG_DIR_ENV = "ABBILD_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/etc/abbild"


def config_dir() -> str:
    """Where production config lives: ``$ABBILD_CONFIG_DIR``, default ``/etc/abbild``
    (Glance's ``OS_GLANCE_CONFIG_DIR``)."""
    return os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR


def service_config_file(service: str) -> str:
    """``<config dir>/<service>.conf``, for example ``/etc/abbild/abbild-api.conf``.

    :raises abbild.errors.ConfigError: the file does not exist.
    """
    from abbild.errors import ConfigError

    path = os.path.join(config_dir(), f"{service}.conf")
    if not os.path.isfile(path):
        raise ConfigError(
            f"{path} does not exist; create it (etc/{service}.conf.sample lists every option), "
            f"point {CONFIG_DIR_ENV} at the directory holding it, or give the command "
            f"--config-file"
        )
    return path


def service_config_files(service: str, given: Sequence[str] | None = None) -> list[str]:
    """The config files of a production command or application (``abbild api``,
    ``abbild registry``, ``abbild db``, ``abbild stores``, the WSGI application): those
    given (``--config-file``), else ``<config dir>/<service>.conf``. Never a default
    database: a command that silently used one would report success on the wrong data.

    :raises abbild.errors.ConfigError: none given and that file does not exist.
    """
    return list(given) if given else [service_config_file(service)]


@functools.lru_cache(maxsize=1024)  # asked on every request, by the noauth filter
def is_loopback_address(address: str | None) -> bool:
    """Whether a client's address (``REMOTE_ADDR``) is this machine's loopback."""
    try:
        ip = ipaddress.ip_address((address or "").strip("[]").split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """True when every address *host* (a name, or an address, bracketed or not)
    resolves to is a loopback address: only this machine reaches it."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
        return is_loopback_address(host)
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(is_loopback_address(a) for a in addresses)


def refuse_noauth_beyond_loopback(host: str, what: str) -> None:
    """:raises abbild.errors.ConfigError: *what* would serve *host* without
    authentication, and *host* is not loopback-only."""
    from abbild.errors import ConfigError

    if not is_loopback(host):
        raise ConfigError(
            f"{what} will not listen on {host} without authentication (noauth): anyone who reaches "
            f"it would be an administrator. Listen on 127.0.0.1, or choose another auth flavour: "
            f"keystone, or trusted-headers behind a gateway"
        )


def load(config_files: Sequence[str] = (), *, project: str = "abbild") -> cfg.ConfigOpts:
    """Parse *config_files* (in order; later files win) into a fresh ConfigOpts with
    the core options registered.

    :raises abbild.errors.ConfigError: a file is missing or unparsable.
    """
    from abbild.errors import ConfigError

    for path in config_files:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} does not exist")
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    logging_setup.register_opts(conf)  # before parsing: oslo.log's options include CLI ones
    try:
        conf(args=[], project=project, default_config_files=list(config_files), default_config_dirs=[])
    except cfg.Error as exc:
        raise ConfigError(str(exc)) from exc
    return conf


# The configurations of the paste pipelines being loaded in this process, by the token
# their loader put into global_conf: PasteDeploy passes factories strings only. Weak, so
# an entry lives as long as the pipeline's app holds its conf, and no longer.
_PIPELINE_CONFS: weakref.WeakValueDictionary[str, cfg.ConfigOpts] = weakref.WeakValueDictionary()
PIPELINE_CONF_KEY = "abbild_conf"


def pipeline_global_conf(conf: cfg.ConfigOpts, config_files: Sequence[str]) -> dict[str, str]:
    """The ``global_conf`` for ``paste.deploy.loadapp`` that hands *conf*, parsed from
    *config_files*, to every factory of the pipeline through :func:`for_pipeline`."""
    token = uuid.uuid4().hex
    _PIPELINE_CONFS[token] = conf
    return {"config_files": ",".join(os.path.abspath(f) for f in config_files), PIPELINE_CONF_KEY: token}


def for_pipeline(global_conf) -> cfg.ConfigOpts:
    """The configuration a paste factory works with: the one its pipeline's loader
    parsed (see :func:`pipeline_global_conf`), so the app and every filter share one
    object, and options registered on it (by plugins, from ``abbild_configure``, when
    the app is built: PasteDeploy builds a pipeline's app before its filters) reach the
    filters. A pipeline loaded by a plain ``loadapp`` gets its ``config_files`` parsed.
    """
    conf = _PIPELINE_CONFS.get(global_conf.get(PIPELINE_CONF_KEY) or "")
    if conf is not None:
        return conf
    return load([f for f in (global_conf.get("config_files") or "").split(",") if f])


EMBEDDED_CONFIG = """\
# Written by `abbild serve` for the embedded default: SQLite and a local data
# directory, no authentication. Edit it, or point --config-file at your own.

[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
node_staging_uri = file://{data_dir}/staging

[database]
connection = sqlite:///{data_dir}/abbild.sqlite

[paste_deploy]
flavor = noauth

[local]
description = Images in {data_dir}/images
datadir = {data_dir}/images

[image_signature]
# The certificates of signed images, as <img_signature_certificate_uuid>.pem files.
certificate_dir = {data_dir}/certificates
"""


def embedded_config_file(data_dir: str) -> str:
    """Create *data_dir* and its config file (if missing); return the file's path."""
    data_dir = os.path.abspath(data_dir)
    os.makedirs(os.path.join(data_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(data_dir, "certificates"), exist_ok=True)
    path = os.path.join(data_dir, "abbild-api.conf")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(EMBEDDED_CONFIG.format(data_dir=data_dir))
    return path
