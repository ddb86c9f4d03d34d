"""The read side of the filesystem store: files that read ahead of whoever sends them.

A download is sent with ``sendfile`` straight from the page cache. When the file is
not cached (the store writes with O_DIRECT, so a fresh upload never is), sendfile
waits on the kernel's readahead one window at a time and gets about half of what the
disk delivers. :class:`ReadAheadFile` keeps the sender fed: a thread reads the
download's window into the page cache ahead of it, by ``sendfile`` to ``/dev/null``
from a descriptor of its own (no copy into the process, and its own readahead state,
so the two sequential readers do not disturb each other's readahead).

Chosen by measurement (bench/README.md), against:

- O_DIRECT reads on a thread, yielded as chunks: no faster on a cold file, a copy of
  every byte through the process, and nothing lands in the page cache: every download
  of an image would read the disk again. Read-ahead fills the cache, so the next
  download of the image is a warm one, zero-copy at page-cache speed.
- ``posix_fadvise(WILLNEED)`` steps: as fast cold, but the kernel caches what it reads
  that way in 4 KiB pages instead of large folios, and every later warm sendfile of the
  file then takes about twice the CPU. A real read caches large folios.

On a file that is cached already the thread reads nothing: before each step it asks
for the step's last byte with RWF_NOWAIT (a read that may not wait for the disk), and
skips the step when it is there. So cold and warm files take the same path.
It reads ahead of the sender without knowing where the sender is (sendfile does not
tell), bounded by the download's window: for a client slower than the disk, the
window is in the page cache (evictable, not the process's memory) before it is sent.
"""

from __future__ import annotations

import io
import os
import threading

# What the read-ahead reads per call: big enough for large disk requests, small enough
# that close() (which waits for the call in progress) returns at once.
STEP = 8 << 20

_ADVISE = hasattr(os, "posix_fadvise")
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # 0: no way to ask, every step is read
_SELF_FD = "/proc/self/fd"  # reopens the same file: a descriptor with its own readahead


class ReadAheadFile(io.FileIO):
    """A file opened for reading (unbuffered, like ``open(path, "rb", buffering=0)``)
    that can read ahead of its reader: see :meth:`read_ahead`.

    It is a real file: ``fileno`` for sendfile, ``read``/``seek``/``tell`` for
    everything else. ``close`` stops the read-ahead before the descriptor goes.
    """

    def __init__(self, name, mode="r", closefd=True, opener=None) -> None:
        super().__init__(name, mode, closefd, opener)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if _ADVISE:
            # Doubles the kernel's readahead window for this descriptor: helps every
            # reader, read_ahead or not (imports, the cache's prefetcher).
            _advise(self.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read_ahead(self, length: int) -> None:
        """Have the next *length* bytes from the current position read into the page
        cache in the background, ahead of whoever reads or sends them. Best effort:
        where the platform cannot (no /proc, no sendfile to /dev/null), nothing
        happens. One read-ahead per file; a second call does nothing."""
        if self._thread is not None or length <= 0 or not os.path.isdir(_SELF_FD):
            return
        start = self.tell()
        self._thread = threading.Thread(
            target=self._read_ahead, args=(start, start + length), name="abbild-read-ahead", daemon=True
        )
        self._thread.start()

    def _read_ahead(self, offset: int, end: int) -> None:
        try:
            # close() joins this thread before it closes self.fileno().
            fd = os.open(f"{_SELF_FD}/{self.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            return
        try:
            if _ADVISE:
                _advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            probe = bytearray(1)
            while offset < end and not self._stop.is_set():
                n = min(STEP, end - offset)
                if _cached(fd, probe, offset + n - 1):
                    offset += n  # a warm step: no need to splice it (0.03 s CPU per GiB)
                    continue
                sent = os.sendfile(sink, fd, offset, n)
                if not sent:
                    return  # the file ended early (truncated): the sender will see it too
                offset += sent
        except OSError:
            return  # advisory: the sender meets the same error and reports it
        finally:
            os.close(sink)
            os.close(fd)

    def close(self) -> None:
        thread = getattr(self, "_thread", None)  # None too when __init__ failed
        if thread is not None:
            self._stop.set()
            thread.join()  # waits for one STEP at most
            self._thread = None
        super().close()


def _cached(fd: int, probe: bytearray, offset: int) -> bool:
    """Whether the byte at *offset* is in the page cache: a read that may not wait for
    the disk. (On a miss it starts the kernel's readahead there: it is read next anyway.)"""
    if not _NOWAIT:
        return False
    try:
        return os.preadv(fd, [probe], offset, _NOWAIT) > 0
    except OSError:  # BlockingIOError: not cached; others: the filesystem cannot tell
        return False


def _advise(fd: int, offset: int, length: int, advice: int) -> bool:
    """:returns: whether the kernel took the advice (some filesystems refuse it)."""
    try:
        os.posix_fadvise(fd, offset, length, advice)
    except OSError:
        return False
    return True


def open_for_reading(path: str) -> ReadAheadFile:
    """Open *path* for reading; a symlink put in its place is not followed."""
    return ReadAheadFile(path, "r", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
