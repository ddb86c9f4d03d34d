"""Interoperable import: ``PUT /v2/images/{id}/stage`` and ``POST /v2/images/{id}/import``
(the work is :mod:`abbild.imports`)."""

from __future__ import annotations

import logging

import requests
import webob
import webob.exc as exc

from abbild.imports import STAGE_HOST
from abbild_api.data import image_body
from abbild_api.http import no_content, read_json

LOG = logging.getLogger(__name__)

# How long a node waits for the node that staged an image's data (as Glance).
PROXY_TIMEOUT = 60
# Headers a passed-on import keeps: who calls (a Keystone token, or a gateway's trusted
# headers), and what it asks for.
_FORWARDED = (
    "X-Auth-Token",
    "X-Identity-Status",
    "X-User-Id",
    "X-Project-Id",
    "X-Roles",
    "X-Image-Meta-Store",
    "X-Openstack-Request-Id",
)


def stage(app, req, image_id):
    if "glance-direct" not in app.service.imports.methods:
        raise exc.HTTPNotFound(
            explanation="The glance-direct import method is not enabled here, so data cannot be staged; "
            "see /v2/info/import."
        )
    body, declared = image_body(req)
    app.service.imports.stage(image_id, body, declared_size=declared, viewer=app.context(req).viewer)
    return no_content()


def import_(app, req, image_id):
    body = read_json(req)
    ctx = app.context(req)
    imports = app.service.imports
    request = imports.parse(body, req.headers.get("X-Image-Meta-Store") or None, ctx.viewer, ctx.request_id)
    if request.method == "glance-direct" and not imports.staging.shared:
        image = app.service.get(image_id, ctx.viewer)
        host = image.properties.get(STAGE_HOST)
        if host and host.rstrip("/") != imports.node and not req.headers.get("X-Abbild-Proxied"):
            return _pass_on(req, host, image_id, body)
    imports.start(image_id, request)
    return webob.Response(status=202, content_type=None)


def _pass_on(req, host: str, image_id: str, body: dict) -> webob.Response:
    """Send the import to the node that staged the data (only it can read them), as
    Glance does; its answer is ours. A node that cannot be reached: 504; any other
    failure of the request: 502."""
    headers = {name: req.headers[name] for name in _FORWARDED if name in req.headers}
    headers["X-Abbild-Proxied"] = "1"  # one hop at most, whatever the nodes think of each other
    url = f"{host.rstrip('/')}/v2/images/{image_id}/import"
    try:
        answer = requests.post(url, json=body, headers=headers, timeout=PROXY_TIMEOUT)  # the body was read
    except requests.ConnectionError as error:
        LOG.warning("image %s: the node %s that staged its data cannot be reached: %s", image_id, host, error)
        raise exc.HTTPGatewayTimeout(
            explanation=f"The data of image {image_id} is staged on another node ({host}), which cannot be "
            "reached now; try again later."
        ) from None
    except requests.RequestException as error:
        LOG.warning("image %s: passing the import on to %s failed: %s", image_id, host, error)
        raise exc.HTTPBadGateway(
            explanation=f"The data of image {image_id} is staged on another node ({host}), whose answer "
            "did not arrive; try again later."
        ) from None
    resp = webob.Response(status=answer.status_code, body=answer.content)
    resp.content_type = answer.headers.get("Content-Type") or None
    return resp
