"""CPU seconds per GiB of each stage of an upload, measured in-process on the same
bytes: request body reading (gunicorn's parser, and abbild's fast path where the
server offers it), chunked decoding, the hand-off to the hash threads, the O_DIRECT
write, and md5+sha512 themselves for reference.

    python3 bench/upload_stages.py --size-mib 512 --rounds 3

Each figure is the CPU time of the thread(s) doing that stage only (a sender thread
feeds the socket), the best of the rounds; the machine is shared, so compare figures
of the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import tempfile
import threading
import time

from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from abbild import streams

MiB = 1 << 20
GiB = 1 << 30
BLOCK = os.urandom(MiB)


class _Req:  # what gunicorn's ChunkedReader asks of its request
    limit_request_field_size = 8190
    max_buffer_headers = 8190 * 32
    trailers = None

    def parse_headers(self, data, from_trailer=False):
        return []


def _chunked_stream(chunk: int) -> bytes:
    """1 MiB of data framed as chunks of *chunk* bytes (no last chunk)."""
    return b"".join(b"%x\r\n" % chunk + BLOCK[i : i + chunk] + b"\r\n" for i in range(0, MiB, chunk))


def _feed(sock: socket.socket, size: int, chunk: int | None) -> None:
    frame = memoryview(_chunked_stream(chunk) if chunk else BLOCK)
    try:
        for _ in range(size // MiB):
            sock.sendall(frame)
        if chunk:
            sock.sendall(b"0\r\n\r\n")
    finally:
        sock.shutdown(socket.SHUT_WR)


def _body(sock: socket.socket, size: int, chunked: bool) -> Body:
    unreader = SocketUnreader(sock)
    return Body(ChunkedReader(_Req(), unreader) if chunked else LengthReader(unreader, size))


def read_body(size: int, chunk: int | None, fast: bool, consume) -> float:
    """CPU s/GiB of the process but the sender thread (hash threads included): the
    body of *size* bytes through ``streams.read_chunks`` (what the API calls), each
    chunk given to *consume*."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
    sender_cpu = []

    def feed():
        t0 = time.thread_time()
        try:
            _feed(a, size, chunk)
        finally:
            sender_cpu.append(time.thread_time() - t0)

    body = _body(b, size, chunk is not None)
    if fast:
        from abbild_cmd.server import FastBody

        body = FastBody(body)
    sender = threading.Thread(target=feed)
    cpu0 = time.process_time()
    sender.start()
    n = consume(streams.read_chunks(body, None if chunk else size))
    sender.join()
    cpu = time.process_time() - cpu0 - sender_cpu[0]
    assert n == size, (n, size)
    return cpu * GiB / size


def count(chunks) -> int:
    return sum(len(c) for c in chunks)


def hash_serial(size: int) -> float:
    md5, sha = hashlib.md5(), hashlib.sha512()
    t0 = time.thread_time()
    for _ in range(size // MiB):
        md5.update(BLOCK)
        sha.update(BLOCK)
    return (time.thread_time() - t0) * GiB / size


def image_stream(size: int, lent: bool) -> float:
    """Process CPU s/GiB of ImageStream (hash threads included) over ready chunks."""
    stream = streams.ImageStream(BLOCK for _ in range(size // MiB))
    it = stream.lent() if lent else iter(stream)
    t0 = time.process_time()
    for _ in it:
        pass
    return (time.process_time() - t0) * GiB / size


def write_file(size: int, tmpdir: str, aligned: bool) -> float:
    try:
        from abbild_filesystem.writer import Writer
    except ImportError:
        from abbild_filesystem.driver import _Writer as Writer
    import mmap

    if aligned:
        buf = mmap.mmap(-1, MiB)
        buf[:] = BLOCK
        block = memoryview(buf)
    else:
        block = BLOCK
    fd, path = tempfile.mkstemp(dir=tmpdir)
    try:
        writer = Writer(fd, direct=True)
        t0 = time.thread_time()
        for _ in range(size // MiB):
            writer.write(block)
        writer.finish()
        return (time.thread_time() - t0) * GiB / size
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args()
    size = args.size_mib * MiB
    try:
        import abbild_cmd.server as server

        fast = hasattr(server, "FastBody")
    except ImportError:
        fast = False
    has_lent = hasattr(streams.ImageStream, "lent")
    stages = {
        "md5+sha512 serial (reference)": lambda: hash_serial(size),
        "gunicorn body, Content-Length": lambda: read_body(size, None, False, count),
        "gunicorn body, chunked 64 KiB": lambda: read_body(size, 64 << 10, False, count),
        "gunicorn body, chunked 1 MiB": lambda: read_body(size, MiB, False, count),
        "ImageStream hand-off + hashes": lambda: image_stream(size, False),
        "O_DIRECT write, bytes chunks": lambda: write_file(size, args.tmpdir, False),
        "O_DIRECT write, aligned chunks": lambda: write_file(size, args.tmpdir, True),
    }
    if fast:
        stages["fast body, Content-Length"] = lambda: read_body(size, None, True, count)
        stages["fast body, chunked 64 KiB"] = lambda: read_body(size, 64 << 10, True, count)
    if fast and has_lent:

        def lent_body(chunk):
            def consume(chunks):
                return count(streams.ImageStream(chunks, hash_algo=None, md5=False).lent())

            return lambda: read_body(size, chunk, True, consume)

        stages["fast body into ring, CL"] = lent_body(None)
        stages["fast body into ring, chunked 64K"] = lent_body(64 << 10)

    def whole(chunk, fast_path, tmpdir=args.tmpdir):
        """Body, ImageStream (md5+sha512) and the O_DIRECT write, as an upload runs."""

        def consume(chunks):
            from abbild_filesystem import driver as fs

            writer = getattr(fs, "Writer", None) or fs._Writer
            fd, path = tempfile.mkstemp(dir=tmpdir)
            try:
                stream = streams.ImageStream(chunks)
                w = writer(fd, direct=True)
                it = stream.lent() if fast_path and has_lent else iter(stream)
                for c in it:
                    w.write(c)
                return w.finish()
            finally:
                os.close(fd)
                os.unlink(path)

        return lambda: read_body(size, chunk, fast_path, consume)

    stages["whole upload, gunicorn body, CL"] = whole(None, False)
    stages["whole upload, gunicorn body, chunked 64K"] = whole(64 << 10, False)
    if fast:
        stages["whole upload, fast body, CL"] = whole(None, True)
        stages["whole upload, fast body, chunked 64K"] = whole(64 << 10, True)
    if has_lent:
        stages["ImageStream.lent(), plain chunks + hashes"] = lambda: image_stream(size, True)
    results: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, stage in stages.items():
            results[name].append(stage())
    print(f"{'stage':<36} {'CPU s/GiB best':>14}  all rounds")
    for name, values in results.items():
        print(f"{name:<36} {min(values):14.3f}  {' '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
