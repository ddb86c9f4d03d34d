"""The progress bar of the commands that move image data (``abbild cache prefetch``,
``abbild replicate``)."""

from __future__ import annotations

import time

MIB = 1 << 20


class ProgressBar:
    """Progress through images on *stream*: called with ``(image_id, done, total)`` as
    bytes move; a bar with bytes and rate redrawn in place on a terminal, one line per
    image otherwise (logs stay readable). Call :meth:`done` at the end."""

    WIDTH = 30

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.current: str | None = None
        self.started = 0.0
        self.last: tuple[str, int, int] | None = None

    def __call__(self, image_id: str, done: int, total: int) -> None:
        if self.current is not None and image_id != self.current:
            self._finish_line()
        if image_id != self.current:
            self.current, self.started = image_id, time.monotonic()
        self.last = (image_id, done, total)
        if self.tty:
            self.stream.write("\r" + self._line(image_id, done, total))
            self.stream.flush()

    def _line(self, image_id: str, done: int, total: int) -> str:
        share = min(done / total, 1.0) if total else 1.0
        filled = int(share * self.WIDTH)
        elapsed = time.monotonic() - self.started
        rate = done / elapsed / MIB if elapsed > 0 else 0.0
        return (
            f"{image_id} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%} "
            f"{done / MIB:.1f}/{total / MIB:.1f} MiB {rate:.1f} MiB/s"
        )

    def _finish_line(self) -> None:
        if self.last is None:
            return
        if self.tty:
            self.stream.write("\n")
        else:
            self.stream.write(self._line(*self.last) + "\n")
        self.stream.flush()
        self.last = None

    def done(self) -> None:
        self._finish_line()
        self.current = None
