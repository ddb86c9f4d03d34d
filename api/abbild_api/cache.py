"""``/v2/cache``: this node's image cache, managed as Glance's cache API (2.14, 2.16 and
2.18's clean and prune). Each node answers for its own cache; ``/v2/cache/nodes/{id}``
names every node that holds an image (the index is shared). Administrators only, by
default (policies ``cache_*``); 404 on a node without a cache."""

from __future__ import annotations

import datetime
import logging
import threading
import weakref

import webob.exc as exc

from abbild.errors import Busy, ImageNotFound, Invalid, TooManyJobs
from abbild.image import Status
from abbild_api.http import image_cache, json_response, no_content, reject_body

LOG = logging.getLogger(__name__)

CLEAR_TARGETS = {"": "", "cache": "cache", "queue": "queue"}


def _cache(app, req, action: str, target: dict | None = None):
    """This node's cache, once the caller may do *action*.

    :raises abbild.errors.Forbidden: the caller may not.
    :raises webob.exc.HTTPNotFound: this node runs no cache.
    """
    app.service.policy.authorize(action, app.context(req).viewer, target)
    cache = image_cache(req)
    if cache is None:
        raise exc.HTTPNotFound(
            explanation="Caching via API is not supported at this site: this node has no image cache (image_cache_dir)."
        )
    return cache


def _image(app, req, image_id: str):
    """The image, if the caller may see it, else None."""
    try:
        return app.service.get(image_id, app.context(req).viewer)
    except ImageNotFound:
        return None


def _target(image) -> dict:
    return {"project_id": image.owner, "owner": image.owner, "visibility": image.visibility} if image else {}


def _epoch(when: datetime.datetime | None) -> float:
    """Seconds since the epoch, as Glance lists them (0: never)."""
    if when is None:
        return 0.0
    if when.tzinfo is None:  # the registry keeps UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def cache_state(cache) -> dict:
    """The cached and queued images of *cache*, as Glance lists them."""
    return {
        "cached_images": [
            {
                "image_id": entry.image_id,
                "hits": entry.hits,
                "last_accessed": _epoch(entry.last_accessed),
                "last_modified": _epoch(entry.last_modified),
                "size": entry.size,
            }
            for entry in cache.cached()
        ],
        "queued_images": [entry.image_id for entry in cache.queued()],
    }


def state(app, req):
    """``GET /v2/cache``: this node's cached and queued images."""
    reject_body(req)
    return json_response(cache_state(_cache(app, req, "cache_list")))


def clear(app, req):
    """``DELETE /v2/cache``: everything, or what ``x-image-cache-clear-target`` names."""
    reject_body(req)
    cache = _cache(app, req, "cache_delete")
    target = req.headers.get("x-image-cache-clear-target", "").strip().lower()
    if target not in CLEAR_TARGETS:
        raise Invalid(f"x-image-cache-clear-target must be 'cache', 'queue' or empty (both), not {target!r}.")
    cache.clear(CLEAR_TARGETS[target])
    return no_content()


def queue(app, req, image_id):
    """``PUT /v2/cache/{image_id}``: queue an active image, and fetch it now (202)."""
    reject_body(req)
    image = _image(app, req, image_id)
    if image is None:
        raise ImageNotFound(image_id)
    cache = _cache(app, req, "cache_image", _target(image))
    if image.status is not Status.ACTIVE:
        raise Invalid(f"Only images with status active can be targeted for queueing; {image_id} is {image.status}.")
    cache.queue(image_id)
    _prefetch_soon(app.service, cache)
    return no_content(202)


def delete(app, req, image_id):
    """``DELETE /v2/cache/{image_id}``: out of this node's cache and queue."""
    reject_body(req)
    image = _image(app, req, image_id)
    cache = _cache(app, req, "cache_delete", _target(image))
    if not cache.remove(image_id) and image is None:
        raise ImageNotFound(image_id)
    return no_content()


def nodes(app, req, image_id):
    """``GET /v2/cache/nodes/{image_id}``: the nodes whose caches hold the image."""
    reject_body(req)
    image = _image(app, req, image_id)
    if image is None:
        raise ImageNotFound(image_id)
    cache = _cache(app, req, "list_cached_nodes", _target(image))
    entries = cache.registry.cache_entries(image_id=image_id)
    return json_response(sorted({entry.node for entry in entries if entry.state == "cached"}))


def clean(app, req):
    """``POST /v2/cache/clean`` (2.18): stalled, invalid, orphaned and deleted images' files out."""
    reject_body(req)
    cache = _cache(app, req, "cache_clean")
    LOG.info("cache clean: %s", cache.clean())
    resp = no_content(200)
    resp.content_length = 0
    return resp


def prune(app, req):
    """``POST /v2/cache/prune`` (2.18): least recently used images out, down to
    ``image_cache_max_size``."""
    reject_body(req)
    cache = _cache(app, req, "cache_prune")
    result = cache.prune()
    return json_response(
        {"total_files_pruned": result["total_files_pruned"], "total_bytes_pruned": result["total_bytes_pruned"]}
    )


class _Prefetcher:
    """At most one prefetch of a cache at a time in this process, and at most one
    waiting behind it: it takes whatever was queued in the meantime."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = False


_prefetchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_prefetchers_lock = threading.Lock()


def _prefetch_soon(service, cache) -> None:
    with _prefetchers_lock:
        prefetcher = _prefetchers.setdefault(cache, _Prefetcher())
        if prefetcher.waiting:
            return
        prefetcher.waiting = True

    def prefetch() -> None:
        # This process's prefetches one after the other, and the node's other processes
        # (their periodic prefetcher) hold the node's lock of the task while they run.
        with prefetcher.lock, cache.lock("prefetch"):
            with _prefetchers_lock:
                prefetcher.waiting = False
            LOG.info("cache: prefetched %s", cache.prefetch(service.read_for_cache, stopping=service.jobs.closing))

    try:
        service.jobs.submit(prefetch)
    except (Busy, TooManyJobs) as error:
        with _prefetchers_lock:
            prefetcher.waiting = False
        # The image stays queued: the periodic prefetcher (or `abbild cache prefetch`) takes it.
        LOG.warning("cache: no room to prefetch now (%s); the queue waits for the next prefetch run", error)
