"""Loading the abbild-api pipeline for a given configuration."""

from __future__ import annotations

import configparser
import os
from collections.abc import Sequence

from paste.deploy import loadapp

from abbild import config
from abbild.errors import ConfigError

SHIPPED_INI = os.path.join(os.path.dirname(__file__), "abbild-api-paste.ini")
PREFIX = "abbild-api-"
FLAVORS = (
    "keystone (Keystone tokens, [keystone_authtoken])",
    "trusted-headers (a gateway in front authenticates callers)",
    "noauth (every caller an administrator; loopback clients only)",
)
# A flavour with this node's image cache: keystone+cache, trusted-headers+cache, noauth+cache.
CACHE_SUFFIX = "+cache"
CACHE_FILTER = "cache"


def with_cache(conf, flavor: str) -> str:
    """*flavor*, with the cache when ``image_cache_dir`` turns it on (``abbild serve``
    picks the flavour itself)."""
    if conf.image_cache_dir and not flavor.endswith(CACHE_SUFFIX):
        return flavor + CACHE_SUFFIX
    return flavor


def flavor_of(conf, flavor: str | None = None) -> str:
    """The auth flavour to run: *flavor*, else ``[paste_deploy] flavor``.

    :raises abbild.errors.ConfigError: neither names one. Nothing guesses one: a
        missing or misspelt option must not make every caller an administrator.
    """
    flavor = flavor or conf.paste_deploy.flavor
    if not flavor:
        raise ConfigError("[paste_deploy] flavor is not set: set it to one of " + "; ".join(FLAVORS))
    return flavor


def check(conf, config_files: Sequence[str], flavor: str) -> str:
    """Check that the pipeline of *flavor* exists and can be built here, before any
    request would find out.

    :returns: the paste ini to load it from.
    :raises abbild.errors.ConfigError: no such pipeline; keystone without
        keystonemiddleware installed, or without a usable ``[keystone_authtoken]``;
        ``image_cache_dir`` without the cache filter, or the other way round.
    """
    ini = conf.paste_deploy.config_file or _ini_beside(config_files) or SHIPPED_INI
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with open(ini) as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"paste ini {ini}: {exc}") from exc
    names = {section.partition(":")[2]: section for section in parser.sections()}
    if PREFIX + flavor not in names:
        raise ConfigError(
            f"[paste_deploy] flavor = {flavor}: {ini} has no pipeline {PREFIX}{flavor}; "
            f"its flavours are: {_flavours(names)}"
        )
    pipeline = parser[names[PREFIX + flavor]].get("pipeline", "").split()
    _check_cache(conf, flavor, pipeline)
    if "authtoken" in pipeline:
        try:
            import keystonemiddleware  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"[paste_deploy] flavor = {flavor} needs keystonemiddleware: pip install 'abbild[keystone]'"
            ) from None
        section = names.get("authtoken", "filter:authtoken")
        _check_authtoken(config_files, flavor, dict(parser[section]) if parser.has_section(section) else {})
    return ini


def _flavours(names) -> str:
    """The flavours of a paste ini's pipelines, each ``+cache`` variant said once."""
    known = sorted(name[len(PREFIX) :] for name in names if name.startswith(PREFIX))
    cached = [name for name in known if name.endswith(CACHE_SUFFIX)]
    plain = [name for name in known if name not in cached]
    if not known:
        return "none"
    if cached and all(name + CACHE_SUFFIX in cached for name in plain) and len(cached) == len(plain):
        return f"{', '.join(plain)} (each also as <flavour>{CACHE_SUFFIX}, with the image cache)"
    return ", ".join(known)


def _check_cache(conf, flavor: str, pipeline: list[str]) -> None:
    """The cache runs exactly where ``image_cache_dir`` is set: a cache directory that no
    filter uses would fill nothing and advertise a cache API that answers 404."""
    cached = CACHE_FILTER in pipeline
    plain = flavor.removesuffix(CACHE_SUFFIX)
    if conf.image_cache_dir and not cached:
        raise ConfigError(
            f"image_cache_dir = {conf.image_cache_dir} turns on the image cache, but the pipeline of "
            f"[paste_deploy] flavor = {flavor} has no cache filter: set flavor = {plain}{CACHE_SUFFIX}, "
            "or unset image_cache_dir"
        )
    if cached and not conf.image_cache_dir:
        raise ConfigError(
            f"[paste_deploy] flavor = {flavor} runs the image cache, but image_cache_dir is not set: set it "
            f"(in [DEFAULT]) to this node's cache directory, or set flavor = {plain}"
        )
    if cached and pipeline.index(CACHE_FILTER) != len(pipeline) - 2:
        raise ConfigError(
            f"[paste_deploy] flavor = {flavor}: the cache filter must be the last filter of the pipeline, "
            f"right before the app ({' '.join(pipeline)})"
        )


AUTHTOKEN_GROUP = "keystone_authtoken"


def _check_authtoken(config_files: Sequence[str], flavor: str, paste_options: dict) -> None:
    """keystonemiddleware starts without a usable ``[keystone_authtoken]`` and then
    answers every request 500; refuse to start instead, naming what is missing.

    Options in the paste ini's ``[filter:authtoken]`` count too: keystonemiddleware
    reads them first.
    """
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading
    from keystonemiddleware import auth_token
    from oslo_config import cfg

    # A private ConfigOpts: registering keystonemiddleware's options here must not
    # change the service's own.
    conf = cfg.ConfigOpts()
    for group, group_opts in auth_token.list_opts():
        conf.register_opts(group_opts, group=group)
    loading.register_auth_conf_options(conf, AUTHTOKEN_GROUP)
    try:
        conf(args=[], project="abbild", default_config_files=list(config_files), default_config_dirs=[])
    except cfg.Error as exc:
        raise ConfigError(str(exc)) from exc
    section = conf[AUTHTOKEN_GROUP]
    missing = []
    if not (paste_options.get("www_authenticate_uri") or section.www_authenticate_uri):
        missing.append("www_authenticate_uri (Keystone's public URL, where clients get tokens)")
    if paste_options.get("auth_type"):
        pass  # the plugin's options are in the paste ini as well; keystonemiddleware checks them
    elif not section.auth_type:
        missing.append(
            "auth_type (password, with auth_url, username, password, project_name, user_domain_name "
            "and project_domain_name of the service user abbild validates tokens as)"
        )
    else:
        try:
            loading.load_auth_from_conf_options(conf, AUTHTOKEN_GROUP)
        except ks_exc.MissingRequiredOptions as exc:
            missing += [opt.dest for opt in exc.options]
        except ks_exc.NoMatchingPlugin:
            raise ConfigError(
                f"[{AUTHTOKEN_GROUP}] auth_type = {section.auth_type}: no such keystoneauth plugin "
                "(password is the usual one)"
            ) from None
    if missing:
        raise ConfigError(
            f"[paste_deploy] flavor = {flavor}: [{AUTHTOKEN_GROUP}] in {', '.join(config_files)} "
            f"lacks {'; '.join(missing)}. Without them every request would fail"
        )


def load_api(config_files: Sequence[str], flavor: str | None = None, conf=None):
    """The WSGI app of the pipeline ``abbild-api-<flavor>``; the flavour defaults to
    ``[paste_deploy] flavor``. The app and every filter share one configuration:
    *conf*, if the caller parsed *config_files* already, else parsed here.

    :raises abbild.errors.ConfigError: no flavour, or not one that can run.
    """
    if conf is None:
        conf = config.load(config_files)
    flavor = flavor_of(conf, flavor)
    ini = check(conf, config_files, flavor)
    return loadapp(
        f"config:{os.path.abspath(ini)}",
        name=PREFIX + flavor,
        global_conf=config.pipeline_global_conf(conf, config_files),
    )


def _ini_beside(config_files: Sequence[str]) -> str | None:
    """An ``abbild-api-paste.ini`` next to a config file (the last one first), the way
    ``/etc/abbild`` holds both."""
    for path in reversed(config_files):
        ini = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(SHIPPED_INI))
        if os.path.isfile(ini):
            return ini
    return None
