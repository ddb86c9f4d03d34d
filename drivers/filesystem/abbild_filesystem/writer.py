"""The write path of the filesystem store: a stream of chunks into a file, with
O_DIRECT where the filesystem allows it."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os

ALIGN = 4096


def page_aligned(chunk) -> bool:
    """Whether O_DIRECT can write *chunk* as it is: its memory starts on a page
    boundary and its length is a whole number of pages (an upload's buffers in
    :meth:`abbild.streams.ImageStream.lent` are)."""
    if len(chunk) % ALIGN or not isinstance(chunk, memoryview) or chunk.readonly or not chunk.contiguous:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(chunk)) % ALIGN == 0


class Writer:
    """Writes a stream of chunks to *fd*, with O_DIRECT where the filesystem allows.

    O_DIRECT wants block-aligned memory, lengths and offsets. A page-aligned chunk of
    whole pages goes to the disk straight from the caller's memory; other chunks are
    gathered in a page-aligned buffer (made when first needed) and written a full
    buffer at a time. Only the unaligned tail of the file goes through the page cache.
    """

    BUFFER = 4 << 20

    def __init__(self, fd: int, direct: bool) -> None:
        self.fd = fd
        self.written = 0
        self.direct = direct and hasattr(os, "O_DIRECT") and self._set_direct(True)
        self.buffer: mmap.mmap | None = None
        self.fill = 0

    def _set_direct(self, on: bool) -> bool:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
            return False
        return on

    def write(self, chunk) -> None:
        if not self.direct:
            self.written += _write_all(self.fd, chunk)
            return
        if not self.fill and page_aligned(chunk):
            self._write_direct(chunk)
            return
        if self.buffer is None:
            self.buffer = mmap.mmap(-1, self.BUFFER)  # mmap memory is page-aligned
            self.view = memoryview(self.buffer)
        data = memoryview(chunk).cast("B")
        while data:
            n = min(len(data), self.BUFFER - self.fill)
            self.view[self.fill : self.fill + n] = data[:n]
            self.fill += n
            data = data[n:]
            if self.fill == self.BUFFER:
                self._flush(self.BUFFER)

    def _write_direct(self, data) -> None:
        try:
            self.written += _write_all(self.fd, data)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self.written:
                raise
            # The filesystem accepted the flag but not the write: go buffered.
            self.direct = self._set_direct(False)
            self.written += _write_all(self.fd, data)

    def _flush(self, length: int) -> None:
        self._write_direct(self.view[:length])
        self.view[: self.fill - length] = self.view[length : self.fill]
        self.fill -= length

    def finish(self) -> int:
        """Write what is buffered; :returns: the bytes written in all."""
        if self.buffer is not None:
            aligned = self.fill - self.fill % ALIGN if self.direct else self.fill
            if aligned:
                self._flush(aligned)
            if self.fill:
                self._set_direct(False)
                self.written += _write_all(self.fd, self.view[: self.fill])
        self.close()
        return self.written

    def close(self) -> None:
        """Let go of the buffer (what it still holds is not written). It is not closed
        here: after a failed write, the exception's traceback still holds a slice of it;
        the memory goes with the last reference."""
        if self.buffer is not None:
            self.view.release()
            self.buffer = self.view = None
            self.fill = 0


def _write_all(fd: int, chunk) -> int:
    """Write all of *chunk*; ``os.write`` may write less than asked."""
    view = memoryview(chunk).cast("B")
    size = view.nbytes
    while view:
        view = view[os.write(fd, view) :]
    return size
