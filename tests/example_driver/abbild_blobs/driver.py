"""Image data as chunked rows in one SQLite file: the example third-party driver.

It shows everything a driver needs: options in its own config group, ``configure``
failing with a message that names the fix, streaming ``put`` that leaves nothing
behind on failure, ``get`` that raises NotFound before its first chunk, ranges, and
``discard`` for crash recovery. The conformance suite is its whole test.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator

from oslo_config import cfg

from abbild.driver import Capability, Driver, StoredObject
from abbild.errors import AlreadyExists, ConfigError, NotFound

CHUNK = 1 << 20


class BlobDriver(Driver):
    """URIs are ``blobs://<store>/<key>``; rows are ``(key, seq, data)`` of at most 1 MiB."""

    schemes = ("blobs",)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ
    options = [cfg.StrOpt("path", help="The SQLite file that holds the data. Required.")]

    def configure(self) -> Capability:
        if not self.conf.path:
            raise ConfigError(f"store {self.store_name!r}: set [{self.store_name}] path to a SQLite file")
        if not os.path.isdir(os.path.dirname(os.path.abspath(self.conf.path))):
            raise ConfigError(f"store {self.store_name!r}: the folder of path {self.conf.path} does not exist")
        self._local = threading.local()  # sqlite3 connections stay in their thread
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS chunks (key TEXT, seq INTEGER, data BLOB, PRIMARY KEY (key, seq))")
        return type(self).capabilities

    def _db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(self.conf.path, timeout=30, isolation_level=None)
        return self._local.db

    def _key(self, uri: str) -> str:
        prefix = f"blobs://{self.store_name}/"
        if not uri.startswith(prefix):
            raise NotFound(uri)
        return urllib.parse.unquote(uri[len(prefix) :])

    def size(self, uri: str) -> int:
        row = (
            self._db()
            .execute("SELECT count(*), sum(length(data)) FROM chunks WHERE key = ?", (self._key(uri),))
            .fetchone()
        )
        if not row[0]:
            raise NotFound(uri)
        return row[1]

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        total = self.size(uri)  # NotFound now, before the API answers
        end = total if length is None else min(total, offset + length)
        return self._read(self._key(uri), offset, end)

    def _read(self, key: str, start: int, end: int) -> Iterator[bytes]:
        first = start // CHUNK
        rows = (
            self._db()
            .execute("SELECT seq, data FROM chunks WHERE key = ? AND seq >= ? ORDER BY seq", (key, first))
            .fetchall()
        )
        for seq, data in rows:
            lo, hi = max(start - seq * CHUNK, 0), min(end - seq * CHUNK, len(data))
            if lo < hi:
                yield bytes(data[lo:hi])

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM chunks WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(key)
            seq, total, buffer = 0, 0, bytearray()
            for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= CHUNK:
                    db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (key, seq, bytes(buffer[:CHUNK])))
                    del buffer[:CHUNK]
                    seq += 1
            if buffer or seq == 0:
                db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (key, seq, bytes(buffer)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")  # a failed upload leaves no rows
            raise
        return StoredObject(uri=f"blobs://{self.store_name}/{urllib.parse.quote(key, safe='')}", size=total)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(NotFound):  # deleting what is not there is no error
            self._db().execute("DELETE FROM chunks WHERE key = ?", (self._key(uri),))

    def discard(self, key: str) -> None:
        self._db().execute("DELETE FROM chunks WHERE key = ?", (key,))
