"""Small request/response helpers shared by the handlers."""

from __future__ import annotations

import json

import webob
import webob.exc as exc

JSON = "application/json"
_BODY_ENCODINGS = {"chunked", "compress", "deflate", "gzip", "identity"}


def has_body(req: webob.Request) -> bool:
    if req.content_length:
        return True
    te = req.headers.get("Transfer-Encoding", "").lower()
    return req.method in ("POST", "PUT", "PATCH") and any(t.strip() in _BODY_ENCODINGS for t in te.split(","))


def reject_body(req: webob.Request) -> None:
    if has_body(req):
        raise exc.HTTPBadRequest(explanation="A body is not expected with this request.")


def read_json(req: webob.Request, *, kind=(dict,)):
    if not has_body(req):
        raise exc.HTTPBadRequest(explanation="Body expected in request.")
    try:
        value = json.loads(req.body)
    except ValueError:
        raise exc.HTTPBadRequest(explanation="Malformed JSON in request body.") from None
    if not isinstance(value, kind):
        raise exc.HTTPBadRequest(explanation="Request body must be a JSON " + " or ".join(
            {dict: "object", list: "array"}[k] for k in kind))
    return value


def json_response(value, status: int = 200, **headers) -> webob.Response:
    body = json.dumps(value, ensure_ascii=False).encode()
    resp = webob.Response(body=body, status=status, content_type=JSON, charset="UTF-8")
    for name, header in headers.items():
        resp.headers[name.replace("_", "-")] = header
    return resp


def no_content(status: int = 204) -> webob.Response:
    """An empty answer: 204, or 202 for work that goes on after it."""
    resp = webob.Response(status=status)
    del resp.content_type
    return resp
