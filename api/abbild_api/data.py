"""``/v2/images/{id}/file``: upload and download of image data, streamed."""

from __future__ import annotations

import re

import webob
import webob.exc as exc

from abbild.errors import Invalid
from abbild.streams import CHUNK_SIZE, read_chunks
from abbild_api.http import image_cache, no_content

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_LEGACY_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(?:\d+|\*)$")


def upload(app, req, image_id):
    content_type = req.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type != "application/octet-stream":
        raise exc.HTTPUnsupportedMediaType(
            explanation=f"Image data must be sent as application/octet-stream, not {content_type or '(none)'}."
        )
    declared = req.headers.get("x-openstack-image-size")
    if declared is not None:
        if not declared.isdigit():
            raise Invalid(f"x-openstack-image-size must be a number of bytes, not {declared!r}.")
        declared = int(declared)
    else:
        declared = req.content_length
    # Read the raw input: the server de-chunks chunked bodies, and only Content-Length
    # (never the declared size) may bound what we read from the socket.
    body = read_chunks(req.environ["wsgi.input"], req.content_length)
    app.service.uploads.upload(
        image_id,
        body,
        declared_size=declared,
        viewer=app.context(req).viewer,
        store_name=req.headers.get("X-Image-Meta-Store") or None,
    )
    return no_content()


def _requested_range(req, size: int) -> tuple[int, int] | None:
    """(offset, length) of a Range (or legacy Content-Range) request, or None."""
    header = req.headers.get("Range")
    if header is None:
        legacy = req.headers.get("Content-Range")
        if legacy is None:
            return None
        m = _LEGACY_RANGE.match(legacy.strip())
        if not m:
            raise _unsatisfiable(size)
        first, last = int(m.group(1)), int(m.group(2))
        if last >= size:  # unlike a Range, Glance never clips a legacy Content-Range
            raise _unsatisfiable(size)
    else:
        if "," in header:
            raise Invalid("Multiple ranges are not supported; ask for one range at a time.")
        m = _RANGE.match(header.strip())
        if not m or not (m.group(1) or m.group(2)):
            raise _unsatisfiable(size)
        if not m.group(1):  # suffix: the last N bytes
            n = int(m.group(2))
            if n == 0:
                raise _unsatisfiable(size)
            return max(0, size - n), min(n, size)
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise _unsatisfiable(size)
    last = min(last, size - 1)
    return first, last - first + 1


def _unsatisfiable(size: int) -> exc.HTTPException:
    return exc.HTTPRequestRangeNotSatisfiable(
        explanation="The requested range is not satisfiable.", headers={"Content-Range": f"bytes */{size}"}
    )


class _FileWindow:
    """*length* bytes of a real file from its current position. Exposes ``fileno`` so
    the WSGI server's file wrapper can ``sendfile`` it; ``read`` keeps servers that
    iterate instead within the window."""

    def __init__(self, f, length: int) -> None:
        self._f, self._left = f, length

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        # mod_wsgi sends from the descriptor only when it can learn where the window
        # starts; the length comes from Content-Length.
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) if n else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


def download(app, req, image_id):
    prefer = [p.strip() for p in req.GET.get("prefer", "").split(",") if p.strip()]
    wrapper = req.environ.get("wsgi.file_wrapper")
    dl = app.service.download(
        image_id,
        app.context(req).viewer,
        lambda size: _requested_range(req, size),
        zero_copy=wrapper is not None,
        prefer=prefer,
        cache=image_cache(req),
    )
    if dl is None:
        return no_content()
    if dl.file is not None:
        app_iter = wrapper(_FileWindow(dl.file, dl.length), CHUNK_SIZE)
    else:
        app_iter = dl.chunks
    resp = webob.Response(app_iter=app_iter, content_type="application/octet-stream", content_length=dl.length)
    if dl.image.checksum:
        resp.headers["Content-MD5"] = dl.image.checksum
    if dl.partial:
        resp.status = 206
        resp.headers["Content-Range"] = f"bytes {dl.offset}-{dl.offset + dl.length - 1}/{dl.image.size or 0}"
    return resp
