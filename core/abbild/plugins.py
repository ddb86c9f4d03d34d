"""The plugin manager. Built-in behaviour is registered exactly like third-party plugins."""

from __future__ import annotations

import logging
import os
import sys

import pluggy

from abbild import hookspecs

LOG = logging.getLogger(__name__)
hookimpl = pluggy.HookimplMarker("abbild")


class DefaultStoreSelection:
    """Built-in: uploads go to ``default_backend`` unless a plugin chose otherwise."""

    def __init__(self) -> None:
        self.default: str | None = None

    @hookimpl(trylast=True)
    def abbild_configure(self, conf):
        self.default = conf.default_backend

    @hookimpl(trylast=True)
    def abbild_select_store(self, image, stores):
        return self.default if self.default in stores else next(iter(stores), None)


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the specs, the built-ins and (optionally) every
    installed plugin of the ``abbild.plugins`` entry-point group.

    ``ABBILD_TRACE_HOOKS=1`` logs every hook call with its arguments and results.
    """
    pm = pluggy.PluginManager("abbild")
    pm.add_hookspecs(hookspecs)
    pm.register(DefaultStoreSelection(), name="abbild.default-store")
    if load_entrypoints:
        pm.load_setuptools_entrypoints("abbild.plugins")
    pm.check_pending()
    if os.environ.get("ABBILD_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs) -> None:
    """Call a notification hook on every plugin, each isolated from the others:
    a failing plugin is logged by name and the rest still run."""
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception:
            LOG.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
