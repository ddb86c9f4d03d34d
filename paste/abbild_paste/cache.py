"""The ``cache`` filter: this node's image cache (``image_cache_dir``) for the api behind it.

It builds the node's :class:`abbild.cache.ImageCache` once per process, starts the
periodic pruner, cleaner and prefetcher (:class:`abbild.cache.CacheRunner`), and hands
the cache to every request in its environ. The service decides what a request does with
it (``abbild.service.ImageService.download``): the filter itself never answers, so a
cached image is authorized exactly as an uncached one.
"""

from __future__ import annotations

import logging
import threading
import weakref

from abbild import config
from abbild.errors import ConfigError

LOG = logging.getLogger(__name__)

# This process's runners, for a graceful shutdown to wait for (stop_runners).
_runners: weakref.WeakSet = weakref.WeakSet()


def filter_factory(global_conf, **local_conf):
    from abbild.cache import CacheRunner, ImageCache
    from abbild.service import IMAGE_CACHE_KEY, load_registry

    conf = config.for_pipeline(global_conf)
    if not conf.image_cache_dir:
        raise ConfigError(
            "the cache filter needs image_cache_dir, this node's cache directory, in [DEFAULT] of the config; "
            "or run a flavour without +cache"
        )

    def make(app):
        service = getattr(app, "service", None)
        if service is None:
            raise ConfigError(
                "the cache filter must be the last filter of its pipeline, right before the api app "
                f"(it came before {type(app).__name__})"
            )
        # A registry of its own: the cache index is the service's business, never the
        # caller's (an http registry sends the caller's identity with the service's calls).
        cache = ImageCache.from_config(conf, load_registry(conf))
        # Shutdown sets the background pool's `closing`: no new cache work starts after it.
        runner = CacheRunner(cache, service.read_for_cache, conf, service.jobs.closing)
        _runners.add(runner)
        runner.start()
        LOG.info("image cache of node %s in %s", cache.node, cache.directory)

        def middleware(environ, start_response):
            environ[IMAGE_CACHE_KEY] = cache
            return app(environ, start_response)

        middleware.cache = cache
        middleware.runner = runner
        return middleware

    return make


def stop_runners(timeout: float) -> None:
    """Stop this process's cache runners (graceful shutdown), waiting at most *timeout*
    seconds in all for a task in progress to end."""
    runners = list(_runners)
    threads = [threading.Thread(target=r.stop, daemon=True) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
