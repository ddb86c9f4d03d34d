"""``/v2/images/{id}/file``: upload and download of image data, streamed."""

from __future__ import annotations

import re
from collections.abc import Iterator

import webob
import webob.exc as exc

from abbild.errors import Invalid
from abbild.plugins import notify
from abbild.streams import CHUNK_SIZE, read_chunks
from abbild_api.http import image_cache, no_content

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_LEGACY_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(?:\d+|\*)$")


def image_body(req) -> tuple[Iterator[bytes], int | None]:
    """The image data of an upload or a stage, and the size the client declared.

    :raises webob.exc.HTTPUnsupportedMediaType: not ``application/octet-stream``.
    :raises abbild.errors.Invalid: ``x-openstack-image-size`` is no number.
    """
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
    return read_chunks(req.environ["wsgi.input"], req.content_length), declared


def upload(app, req, image_id):
    body, declared = image_body(req)
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


class DownloadCutShort(Exception):
    """What ended a download that sent less than it promised, when no exception did
    (the client went away: the server stopped iterating and closed the response)."""


class _Sent:
    """The download's chunks as they go out, counted: when the server closes the
    response, the plugins hear how many bytes went out and whether all of them did
    (``abbild_image_sent``, Glance's ``image.send``). The chunks pass through as they
    are: no copy."""

    def __init__(self, chunks, ended) -> None:
        self._chunks, self._ended = chunks, ended
        self._iter = iter(chunks)
        self.sent = 0
        self._error: Exception | None = None

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._iter)
        except StopIteration:
            raise
        except Exception as exc:
            self._error = exc
            raise
        self.sent += len(chunk)
        return chunk

    def close(self) -> None:
        try:
            if hasattr(self._chunks, "close"):
                self._chunks.close()
        finally:
            if self._ended is not None:
                self._ended(self.sent, self._error)
                self._ended = None


class _FileWindow:
    """*length* bytes of a real file from its current position. Exposes ``fileno`` so
    the WSGI server's file wrapper can ``sendfile`` it; ``read`` keeps servers that
    iterate instead within the window.

    *ended* hears, once the server closed it, how many bytes went out: those read, or
    where the server's ``socket.sendfile`` left the file (it seeks there on return, and
    after an error too), or, from a server that sends from the descriptor without
    either (mod_wsgi), the whole window."""

    def __init__(self, f, length: int, ended=None) -> None:
        self._f, self._left = f, length
        self._start, self._length, self._ended = f.tell(), length, ended
        self._sent: int | None = None  # None: the server said nothing of it

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        # mod_wsgi sends from the descriptor only when it can learn where the window
        # starts; the length comes from Content-Length.
        return self._f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        pos = self._f.seek(pos, whence)
        self._sent = pos - self._start
        self._left = self._length - self._sent
        return pos

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) if n else b""
        self._left -= len(data)
        self._sent = self._length - self._left
        return data

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            if self._ended is not None:
                self._ended(self._length if self._sent is None else self._sent, None)
                self._ended = None


def download(app, req, image_id):
    prefer = [p.strip() for p in req.GET.get("prefer", "").split(",") if p.strip()]
    wrapper = req.environ.get("wsgi.file_wrapper")
    viewer = app.context(req).viewer
    dl = app.service.download(
        image_id,
        viewer,
        lambda size: _requested_range(req, size),
        zero_copy=wrapper is not None,
        prefer=prefer,
        cache=image_cache(req),
    )
    if dl is None:
        return no_content()

    def ended(sent: int, error: Exception | None) -> None:
        if error is None and sent != dl.length:
            error = DownloadCutShort(f"the download of image {image_id} ended after {sent} of {dl.length} bytes")
        notify(app.service.plugins, "abbild_image_sent", image=dl.image, bytes_sent=sent, viewer=viewer, error=error)

    if dl.file is not None:
        # A store's file may read ahead of the sender (Driver.open_local): sendfile
        # of a file that is not in the page cache then goes at the disk's speed.
        read_ahead = getattr(dl.file, "read_ahead", None)
        if read_ahead is not None:
            read_ahead(dl.length)
        app_iter = wrapper(_FileWindow(dl.file, dl.length, ended), CHUNK_SIZE)
    else:
        app_iter = _Sent(dl.chunks, ended)
    resp = webob.Response(app_iter=app_iter, content_type="application/octet-stream", content_length=dl.length)
    if dl.image.checksum:
        resp.headers["Content-MD5"] = dl.image.checksum
    if dl.partial:
        resp.status = 206
        resp.headers["Content-Range"] = f"bytes {dl.offset}-{dl.offset + dl.length - 1}/{dl.image.size or 0}"
    return resp
