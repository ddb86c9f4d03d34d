"""The ``glance-download`` import method: an image of another region's image service
(abbild or Glance), downloaded into staging, as Glance's does it for federated
multi-region clouds. Opt-in: add it to ``enabled_import_methods``.

The request names the remote image and region::

    {"method": {"name": "glance-download", "glance_image_id": "<uuid>",
                "glance_region": "RegionTwo", "glance_service_interface": "public"}}

Everything remote happens with the caller's own Keystone token, as in Glance: the
remote region decides what the caller may read there, so nobody imports an image they
could not download themselves. The remote endpoint comes from the token's service
catalog (Keystone at ``[keystone_authtoken] www_authenticate_uri``): the operator's
catalog, never a URL the user chose, so no web-download guard is needed. The import
copies the remote image's properties named by ``[glance_download_properties]
extra_properties``; its data is checked against the remote image's size and hash.

The token reaches the background import from the request that started it: the import
engine hands :func:`fetch` the same request body :func:`validate` saw, and nothing else
of the request, so :func:`validate` keeps the caller's token for that body, in this
process only (never in the task's input, which the task API shows and the database
keeps).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from abbild import caller
from abbild.errors import Invalid, SizeLimitExceeded
from abbild.image import Image
from abbild.registry import Viewer
from abbild.streams import CHUNK_SIZE

if TYPE_CHECKING:
    from abbild.service import ImageService

LOG = logging.getLogger(__name__)

NAME = "glance-download"
INTERFACES = ("public", "internal", "admin")
# Seconds to connect, and to wait for the next bytes, from the remote image service.
TIMEOUT = (10, 60)
# How long a validated request's token waits for its import to start: Keystone's
# default token lifetime, past which the token would be refused anyway.
PENDING_SECONDS = 3600


class RemoteImageError(Invalid):
    """The remote region cannot give this image: the import fails with the reason."""


# -- the caller's token, from the request to the background import ----------------------------


class _Pending:
    """What one glance-download import hands on from one step to the next, keyed by
    the request body's identity (the body itself is held, so its id cannot be reused
    meanwhile); entries older than PENDING_SECONDS (an import refused after
    validation, or failed before it asked for its properties) are dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[dict, object, float]] = {}

    def put(self, body: dict, value) -> None:
        now = time.monotonic()
        with self._lock:
            for key, entry in list(self._entries.items()):
                if now - entry[2] > PENDING_SECONDS:
                    del self._entries[key]
            self._entries[id(body)] = (body, value, now)

    def take(self, body: dict):
        """The value put for *body*, removed; ``None`` if there is none."""
        with self._lock:
            entry = self._entries.pop(id(body), None)
        return entry[1] if entry is not None and entry[0] is body else None


# The caller's (token, project id), from validate to fetch.
_tokens = _Pending()
# The remote image's properties to copy, from fetch to properties.
_found = _Pending()


# -- validate (during the request) -------------------------------------------------------------


def validate(service: ImageService, body: dict) -> None:
    """Check the ``method`` part of a glance-download request and keep the caller's
    token for the import; fills in ``glance_service_interface`` (``public``) as Glance.

    :raises abbild.errors.Invalid: (400) a field is missing or wrong, or the request
        carries no Keystone token.
    """
    method = body["method"]
    region = method.get("glance_region")
    if not isinstance(region, str) or not region.strip():
        raise Invalid("glance-download needs the region to download from in method.glance_region.")
    image_id = method.get("glance_image_id")
    if not isinstance(image_id, str) or not image_id:
        raise Invalid("glance-download needs the id of the image to download in method.glance_image_id.")
    try:
        uuid.UUID(image_id)
    except ValueError:
        raise Invalid(f"method.glance_image_id {image_id!r} is not an image id (a UUID).") from None
    interface = method.setdefault("glance_service_interface", "public")
    if interface not in INTERFACES:
        raise Invalid(f"method.glance_service_interface must be one of {', '.join(INTERFACES)}, not {interface!r}.")
    token = caller.auth_token()
    if not token:
        raise Invalid(
            "glance-download downloads with your Keystone token, and this request has none: the "
            "service must authenticate callers with Keystone ([paste_deploy] flavor = keystone)."
        )
    viewer = caller.current()
    _tokens.put(body, (token, viewer.project_id if viewer else None))


# -- fetch (in the background import) -------------------------------------------------------------


def _keystone_url(conf) -> str:
    try:
        url = conf.keystone_authtoken.www_authenticate_uri
    except Exception:  # the group or option is missing: keystonemiddleware never ran here
        url = None
    if not url:
        raise RemoteImageError(
            "glance-download needs Keystone: set [keystone_authtoken] www_authenticate_uri "
            "(and run the keystone flavour) so the other region can be found in the service catalog"
        )
    return url if re.search(r"/v3/?$", url) else url.rstrip("/") + "/v3"


class _Remote:
    """The other region's image service, reached with the caller's token."""

    def __init__(self, conf, region: str, interface: str, token: str, project_id: str | None) -> None:
        from keystoneauth1 import exceptions as ks_exc
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        auth = v3.Token(auth_url=_keystone_url(conf), token=token, project_id=project_id, reauthenticate=False)
        self.session = session.Session(auth=auth, timeout=TIMEOUT[1])
        self.region = region
        try:
            url = self.session.get_endpoint(service_type="image", interface=interface, region_name=region)
        except ks_exc.Unauthorized as exc:
            raise RemoteImageError(f"Keystone refused the token for glance-download: {exc}") from exc
        except ks_exc.EndpointNotFound:
            url = None
        except ks_exc.ClientException as exc:
            raise RemoteImageError(f"Keystone could not be asked for region {region}'s image service: {exc}") from exc
        if not url:
            raise RemoteImageError(
                f"The service catalog has no {interface} image service endpoint in region {region}; "
                f"check method.glance_region and method.glance_service_interface"
            )
        if not url.startswith(("http://", "https://")):
            raise RemoteImageError(f"Region {region}'s image service endpoint is no http(s) URL")
        # Catalogs hold the service's root or its /v2; Glance strips the version too.
        self.base = re.sub(r"/v2(\.\d+)?/?$", "", url.rstrip("/"))

    def get(self, path: str, **kwargs):
        from keystoneauth1 import exceptions as ks_exc

        try:
            # redirect=False: the catalog names the service; a redirect elsewhere is refused.
            return self.session.get(
                self.base + path, raise_exc=False, redirect=False, connect_retries=2, timeout=TIMEOUT, **kwargs
            )
        except ks_exc.ClientException as exc:
            raise RemoteImageError(f"Region {self.region}'s image service did not answer: {exc}") from exc

    def image(self, image_id: str) -> dict:
        resp = self.get(f"/v2/images/{image_id}")
        if resp.status_code == 404:
            raise RemoteImageError(f"Region {self.region} has no image {image_id} that you may see")
        if resp.status_code != 200:
            raise RemoteImageError(
                f"Region {self.region}'s image service answered {resp.status_code} for image {image_id}"
            )
        return resp.json()


def fetch(service: ImageService, image: Image, body: dict, viewer: Viewer | None) -> Iterator[bytes]:
    """The remote image's data, checked on the way: its size and hash must be the
    remote image's (a closeable iterator; closing it closes the connection).

    :raises RemoteImageError: (an :class:`~abbild.errors.Invalid`) the remote image
        cannot be imported; the message says why.
    """
    kept = _tokens.take(body)
    if kept is None:
        raise RemoteImageError(
            "This glance-download import lost the caller's token (the service restarted, or the "
            "import waited too long to start); import the image again"
        )
    token, project_id = kept
    method = body["method"]
    remote = _Remote(service.conf, method["glance_region"], method["glance_service_interface"], token, project_id)
    remote_id = method["glance_image_id"]
    meta = remote.image(remote_id)
    if meta.get("status") != "active":
        raise RemoteImageError(f"Image {remote_id} in region {remote.region} is {meta.get('status')}, not active")
    for attr in ("disk_format", "container_format"):
        if meta.get(attr) != getattr(image, attr):
            # Glance copies them; here the image keeps those its owner gave it, so they must agree.
            raise RemoteImageError(
                f"Image {remote_id} in region {remote.region} has {attr} {meta.get(attr)}, this image "
                f"{getattr(image, attr)}; create the image with {attr} {meta.get(attr)}"
            )
    max_size, limit_name = service.uploads.limit(image)
    size = meta.get("size")
    if isinstance(size, int) and size > max_size:
        raise SizeLimitExceeded(max_size, limit_name)
    prefixes = tuple(service.conf.glance_download_properties.extra_properties)
    copied = {
        key: str(value)
        for key, value in meta.items()
        if key.startswith(prefixes) and not key.startswith("os_glance") and isinstance(value, str | int | float)
    }
    _found.put(body, copied)
    resp = remote.get(f"/v2/images/{remote_id}/file", stream=True, headers={"Accept": "application/octet-stream"})
    if resp.status_code != 200:
        resp.close()
        raise RemoteImageError(
            f"Region {remote.region}'s image service answered {resp.status_code} to the download of image {remote_id}"
        )
    return _checked(resp, meta, remote.region)


def _checked(resp, meta: dict, region: str) -> Iterator[bytes]:
    algo, expected = meta.get("os_hash_algo"), meta.get("os_hash_value")
    if not (algo and expected and algo in hashlib.algorithms_available):
        algo, expected = "md5", meta.get("checksum")
    digest = hashlib.new(algo) if expected else None
    count = 0
    try:
        for chunk in resp.iter_content(CHUNK_SIZE):
            if chunk:
                count += len(chunk)
                if digest:
                    digest.update(chunk)
                yield chunk
    finally:
        resp.close()
    if isinstance(meta.get("size"), int) and count != meta["size"]:
        raise RemoteImageError(f"Region {region} sent {count} bytes of image {meta['id']}, not its {meta['size']}")
    if digest and digest.hexdigest() != expected:
        raise RemoteImageError(f"The data region {region} sent does not match image {meta['id']}'s {algo}")


def properties(service: ImageService, image: Image, body: dict, viewer: Viewer | None) -> dict[str, str]:
    """The remote image's properties named by ``[glance_download_properties]
    extra_properties`` (after :func:`fetch`)."""
    return _found.take(body) or {}
