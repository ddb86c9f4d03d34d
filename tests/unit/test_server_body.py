"""The embedded server's FastBody: a request body read with recv_into, de-chunked
where it is chunked, hands out exactly the body's bytes, fails as gunicorn's reader
fails, and leaves gunicorn's parser where the next request starts."""

import hashlib
import io
import os
import socket
import threading

import pytest
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkExtension, InvalidChunkSize, NoMoreData
from gunicorn.http.unreader import SocketUnreader

from abbild import streams
from abbild.errors import SizeMismatch
from abbild.streams import ImageStream, read_chunks
from abbild_cmd.server import FastBody


class _Request:  # what gunicorn's ChunkedReader asks of its request
    limit_request_field_size = 8190
    max_buffer_headers = 8190 * 32
    trailers = None

    def parse_headers(self, data, from_trailer=False):
        return [tuple(line.split(b": ", 1)) for line in data.split(b"\r\n")]


@pytest.fixture
def connection():
    """(client socket, server-side unreader); what the client sends goes in a thread,
    so that sends larger than the socket buffers do not block the test."""
    client, server = socket.socketpair()
    senders = []

    def send(data: bytes, close: bool = True) -> None:
        def run():
            try:
                client.sendall(data)
                if close:
                    client.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        senders.append(t)

    yield send, SocketUnreader(server)
    client.close()
    server.close()
    for t in senders:
        t.join(5)


def chunked(data: bytes, sizes, extension: bytes = b"", trailers: bytes = b"") -> bytes:
    out, pos, turn = [], 0, 0
    while pos < len(data):
        n = sizes[turn % len(sizes)]
        turn += 1
        out.append(b"%x%s\r\n" % (len(data[pos : pos + n]), extension) + data[pos : pos + n] + b"\r\n")
        pos += n
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


def fast_body(unreader, length=None, ahead: bytes = b""):
    if ahead:
        unreader.unread(ahead)  # what came in with the request head
    reader = ChunkedReader(_Request(), unreader) if length is None else LengthReader(unreader, length)
    return FastBody(Body(reader))


def lent_upload(body, length=None):
    stream = ImageStream(read_chunks(body, length))
    data = b"".join(bytes(c) for c in stream.lent())
    return data, stream


@pytest.mark.parametrize("size", [0, 1, 65536, (2 << 20) + 4097, (5 << 20) + 3])
def test_content_length_body_is_read_exactly_with_pipelined_bytes_left_for_gunicorn(connection, size):
    send, unreader = connection
    data = os.urandom(size)
    head_part = data[:1000]  # some of the body came with the head
    send(data[1000:] + b"NEXT REQUEST")
    body = fast_body(unreader, size, ahead=head_part)
    got, stream = lent_upload(body, size)
    assert got == data
    assert stream.os_hash_value == hashlib.sha512(data).hexdigest()
    assert stream.checksum == hashlib.md5(data).hexdigest()
    assert body.reader.length == 0
    assert body.read(1024) == b""  # gunicorn's drain finds nothing left
    assert unreader.read() == b"NEXT REQUEST"


@pytest.mark.parametrize(
    "sizes", [[65536], [1], [3, 70000, 1 << 20, 17], [(3 << 20) + 1]], ids=["64k", "1-byte", "mixed", "3m+1"]
)
def test_chunked_body_is_dechunked_with_trailers_and_pipelined_bytes_left_for_gunicorn(connection, sizes):
    send, unreader = connection
    data = os.urandom(sum(sizes) * 2 + 5 if sizes != [1] else 3000)
    wire = chunked(data, sizes, trailers=b"X-Trailer: yes\r\n")
    send(wire[50:] + b"NEXT")
    body = fast_body(unreader, ahead=wire[:50])
    got, stream = lent_upload(body)
    assert got == data
    assert stream.os_hash_value == hashlib.sha512(data).hexdigest()
    assert body.reader.req.trailers == [(b"X-Trailer", b"yes")]
    assert body.failed is False
    assert body.read(1024) == b""
    assert unreader.read() == b"NEXT"


def test_chunk_extensions_are_accepted(connection):
    send, unreader = connection
    data = os.urandom(100_000)
    send(chunked(data, [30000], extension=b' ; name="value"'))
    assert lent_upload(fast_body(unreader))[0] == data


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"zz\r\nabc", InvalidChunkSize),
        (b"3\r\nabcXY0\r\n\r\n", ChunkMissingTerminator),
        (b"3;\rx\r\nabc\r\n0\r\n\r\n", InvalidChunkExtension),
        (b"3; =\r\nabc\r\n0\r\n\r\n", InvalidChunkExtension),
        (b"a" * 9000, InvalidChunkSize),
        (b"10\r\nabc", NoMoreData),
        (b"3\r\nabc\r\n", NoMoreData),
    ],
    ids=["bad-size", "no-crlf", "bare-cr", "bad-extension", "endless-line", "cut-in-a-chunk", "no-last-chunk"],
)
def test_bad_chunked_bodies_fail_as_gunicorn_fails_and_the_connection_is_not_reused(connection, wire, error):
    send, unreader = connection
    send(wire)
    body = fast_body(unreader)
    with pytest.raises(error):
        lent_upload(body)
    assert body.failed is True


def test_a_short_content_length_body_is_a_size_mismatch(connection):
    send, unreader = connection
    send(os.urandom(1000))  # then the client goes away
    with pytest.raises(SizeMismatch):
        stream = ImageStream(read_chunks(fast_body(unreader, 5000), 5000), declared_size=5000)
        list(stream.lent())


def test_an_upload_stopped_midway_leaves_a_chunked_connection_unusable(connection):
    send, unreader = connection
    send(chunked(os.urandom(streams.RING_BUFFER_SIZE * 3), [65536]), close=False)
    body = fast_body(unreader)
    it = ImageStream(read_chunks(body)).lent()
    next(it)
    it.close()
    assert body.failed is True  # gunicorn closes the connection instead of guessing


def test_a_body_gunicorn_began_to_read_stays_gunicorns(connection):
    send, unreader = connection
    data = os.urandom(200_000)
    send(chunked(data, [5000]))
    body = fast_body(unreader)
    first = body.read(10)  # gunicorn's own read() first
    rest = bytearray(len(data))
    n = 0
    while got := body.readinto(memoryview(rest)[n:]):
        n += got
    assert first + bytes(rest[:n]) == data


def test_other_wsgi_inputs_are_read_plainly():
    data = os.urandom(300_000)
    stream = ImageStream(read_chunks(io.BufferedReader(io.BytesIO(data)), len(data)))
    assert b"".join(bytes(c) for c in stream.lent()) == data
