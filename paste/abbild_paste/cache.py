"""The ``cache`` filter: this node's image cache (``image_cache_dir``) for the api behind it.

It builds the node's :class:`abbild.cache.ImageCache` once per process, starts the
periodic pruner, cleaner and prefetcher (:meth:`abbild.cache.ImageCache.schedule`), and hands
the cache to every request in its environ. The service decides what a request does with
it (``abbild.service.ImageService.download``): the filter itself never answers, so a
cached image is authorized exactly as an uncached one.
"""

from __future__ import annotations

import logging

from abbild import config
from abbild.errors import ConfigError

LOG = logging.getLogger(__name__)


def filter_factory(global_conf, **local_conf):
    from abbild.cache import ImageCache
    from abbild.periodic import Periodic, holder
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
        # Shutdown sets the background pool's `closing`: no new cache work starts after
        # it, and abbild.periodic.stop_all waits for the work in progress.
        periodic = Periodic(cache.registry, holder(), service.jobs.closing)
        cache.schedule(periodic, service.read_for_cache)
        periodic.start()
        LOG.info("image cache of node %s in %s", cache.node, cache.directory)

        def middleware(environ, start_response):
            environ[IMAGE_CACHE_KEY] = cache
            return app(environ, start_response)

        middleware.cache = cache
        return middleware

    return make
