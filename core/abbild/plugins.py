"""The plugin manager. Built-in behaviour is registered exactly like third-party plugins."""

from __future__ import annotations

import functools
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


NOTIFICATION_PREFIXES = ("abbild_image_", "abbild_task_", "abbild_metadef_")


class PluginManager(pluggy.PluginManager):
    """pluggy's, with every plugin isolated in the lifecycle notifications: a failing
    implementation is logged with the plugin's and the hook's name and the others still
    run, since a broken notifier must not fail the request that committed the change.
    (A pluggy wrapper could only see the first exception; the rest would not run.)"""

    def register(self, plugin, name=None):
        plugin_name = super().register(plugin, name)
        for caller in self.get_hookcallers(plugin) or ():
            if caller.name.startswith(NOTIFICATION_PREFIXES):
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        impl.function = _isolated(impl.function, impl.plugin_name, caller.name)  # type: ignore[misc]
        return plugin_name


def _isolated(function, plugin_name: str, hook_name: str):
    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:
            LOG.exception("plugin %s failed in %s", plugin_name, hook_name)

    return call


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the specs, the built-ins and (optionally) every
    installed plugin of the ``abbild.plugins`` entry-point group.

    ``ABBILD_TRACE_HOOKS=1`` logs every hook call with its arguments and results.
    """
    pm = PluginManager("abbild")
    pm.add_hookspecs(hookspecs)
    pm.register(DefaultStoreSelection(), name="abbild.default-store")
    from abbild.import_plugins import ImportStepsPlugin  # it imports hookimpl from here

    pm.register(ImportStepsPlugin(), name="abbild.import-steps")
    from abbild.formats import FormatInspection  # likewise

    pm.register(FormatInspection(), name="abbild.formats")
    from abbild.signatures import SignatureVerification  # likewise

    pm.register(SignatureVerification(), name="abbild.signatures")
    from abbild.notifications import Setup  # likewise; registers the notifier when configured

    pm.register(Setup(pm), name="abbild.notifications-setup")
    if load_entrypoints:
        pm.load_setuptools_entrypoints("abbild.plugins")
    pm.check_pending()
    if os.environ.get("ABBILD_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs) -> None:
    """Call a notification hook on every plugin (through pluggy, so its tracing and
    monitoring see it); a plugin manager of :func:`get_plugin_manager` isolates the
    plugins from each other."""
    getattr(pm.hook, hook_name)(**kwargs)
