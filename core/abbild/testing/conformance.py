"""The store driver conformance suite.

A driver's test module subclasses :class:`DriverConformance` and overrides the
``driver`` fixture; every test below then runs against that driver::

    from abbild.testing.conformance import DriverConformance

    class TestS3Conformance(DriverConformance):
        @pytest.fixture
        def driver(self, s3_conf):
            driver = S3Driver("cold", s3_conf)
            driver.configure()
            return driver

Tests are grouped by capability and skip, naming what is missing, when the
``capabilities`` fixture lacks it. The suite uses only the public driver
interface; a driver adds its specifics (file handles, ACLs, ...) in its own tests.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import time
import urllib.parse
import uuid

import pytest

from abbild.driver import Capability, Driver, StoredObject
from abbild.errors import AlreadyExists, NotFound

READ, WRITE, DELETE, RANGE_READ = Capability.READ, Capability.WRITE, Capability.DELETE, Capability.RANGE_READ
LIST = Capability.LIST
MiB = 1 << 20


def requires(*needed: Capability):
    """Mark a test as needing every capability in *needed*; it skips otherwise."""
    flags = functools.reduce(operator.or_, needed)

    def mark(test):
        test.abbild_requires = flags
        return test

    return mark


def new_key() -> str:
    """A key no other test uses, valid for every driver (letters, digits and ``-``)."""
    return f"conformance-{uuid.uuid4().hex}"


def read_all(driver: Driver, uri: str, offset: int = 0, length: int | None = None) -> bytes:
    """Read through ``driver.get``, checking the chunk contract on the way."""
    chunks = list(driver.get(uri, offset=offset, length=length))
    for chunk in chunks:
        assert isinstance(chunk, bytes), f"get yielded {type(chunk).__name__}, not bytes"
        assert chunk, "get yielded an empty chunk"
    return b"".join(chunks)


def _names(flags: Capability) -> str:
    return "|".join(c.name for c in (READ, WRITE, DELETE, RANGE_READ, LIST) if c in flags) or "NONE"


class Boom(Exception):
    """Raised by a test's upload iterator; must reach the caller unchanged."""


class BaseBoom(BaseException):
    """Like :class:`Boom`, outside ``Exception`` (as ``KeyboardInterrupt`` is)."""


def failing_chunks(exc: BaseException, good: int = 3):
    """Yield *good* chunks, then raise *exc*: an upload whose client went away."""
    for _ in range(good):
        yield os.urandom(64 * 1024 + 1)
    raise exc


class DriverConformance:
    """Behaviour every store driver shares. Not named ``Test*``: pytest collects it
    only through a subclass that provides a driver."""

    # -- fixtures a driver's test class overrides --------------------------------------

    @pytest.fixture
    def driver(self) -> Driver:
        """A driver instance, already configured (``configure()`` was called)."""
        raise NotImplementedError("override the 'driver' fixture")

    @pytest.fixture
    def capabilities(self, driver: Driver) -> Capability:
        """The effective capabilities. The default, the class's upper bound, is right
        for a fully working backend; override it with what ``configure()`` returned
        when that may be less (for example a read-only datadir)."""
        return type(driver).capabilities

    @pytest.fixture
    def existing(self, driver: Driver, capabilities: Capability) -> tuple[str, bytes]:
        """``(uri, payload)`` of an object already in the store. The default stores one
        through ``put``; read-only drivers override this to point at their fixture data.
        The payload spans several 1 MiB chunks, with an odd tail."""
        if WRITE not in capabilities:
            pytest.skip("store is read-only: override the 'existing' fixture to provide an object")
        payload = os.urandom(2 * MiB + 12345)
        return driver.put(new_key(), [payload[:MiB], payload[MiB:]], len(payload)).uri, payload

    @pytest.fixture
    def missing_uri(self, existing: tuple[str, bytes]) -> str:
        """A well-formed URI of this store with no object behind it."""
        return f"{existing[0]}-missing-{uuid.uuid4().hex}"

    @pytest.fixture(autouse=True)
    def _skip_without_capabilities(self, request, capabilities: Capability) -> None:
        needed = getattr(request.function, "abbild_requires", Capability.NONE)
        missing = needed & ~capabilities
        if missing:
            pytest.skip(f"store lacks {_names(missing)} (effective capabilities: {_names(capabilities)})")

    # -- general ------------------------------------------------------------------------

    def test_capabilities_within_upper_bound(self, driver, capabilities):
        assert capabilities in type(driver).capabilities

    def test_uri_uses_own_scheme(self, driver, existing):
        assert urllib.parse.urlsplit(existing[0]).scheme in driver.schemes

    def test_uri_has_no_userinfo(self, existing):
        parts = urllib.parse.urlsplit(existing[0])
        assert parts.username is None and parts.password is None
        assert "@" not in parts.netloc

    # -- READ ---------------------------------------------------------------------------

    @requires(READ)
    def test_read_round_trip(self, driver, existing):
        uri, payload = existing
        assert read_all(driver, uri) == payload

    @requires(READ)
    def test_read_size(self, driver, existing):
        uri, payload = existing
        assert driver.size(uri) == len(payload)

    @requires(READ)
    def test_read_missing_raises_not_found_on_call(self, driver, missing_uri):
        # On the call itself, not on the first chunk: the API must know before it
        # sends the response headers.
        with pytest.raises(NotFound) as excinfo:
            driver.get(missing_uri)
        assert excinfo.value.uri == missing_uri

    @requires(READ)
    def test_size_missing_raises_not_found(self, driver, missing_uri):
        with pytest.raises(NotFound):
            driver.size(missing_uri)

    # -- RANGE_READ ---------------------------------------------------------------------

    @requires(READ, RANGE_READ)
    def test_range_offset_only(self, driver, existing):
        uri, payload = existing
        offset = len(payload) // 2 + 1
        assert read_all(driver, uri, offset=offset) == payload[offset:]

    @requires(READ, RANGE_READ)
    def test_range_offset_and_length(self, driver, existing):
        uri, payload = existing
        offset, length = len(payload) // 3, len(payload) // 3
        assert read_all(driver, uri, offset=offset, length=length) == payload[offset : offset + length]

    @requires(READ, RANGE_READ)
    def test_range_length_from_start(self, driver, existing):
        uri, payload = existing
        assert read_all(driver, uri, length=7) == payload[:7]

    @requires(READ, RANGE_READ)
    def test_range_length_past_end(self, driver, existing):
        uri, payload = existing
        offset = len(payload) - 5
        assert read_all(driver, uri, offset=offset, length=len(payload)) == payload[offset:]

    @requires(READ, RANGE_READ)
    def test_range_offset_at_end_returns_nothing(self, driver, existing):
        uri, payload = existing
        assert read_all(driver, uri, offset=len(payload)) == b""
        assert read_all(driver, uri, offset=len(payload), length=10) == b""

    # -- WRITE --------------------------------------------------------------------------

    @requires(WRITE)
    def test_put_returns_exact_size(self, driver):
        payload = os.urandom(100_003)
        stored = driver.put(new_key(), [payload], len(payload))
        assert isinstance(stored, StoredObject)
        assert stored.size == len(payload)

    @requires(WRITE)
    def test_put_same_key_twice_raises_already_exists(self, driver, capabilities):
        key = new_key()
        stored = driver.put(key, [b"first"], 5)
        with pytest.raises(AlreadyExists) as excinfo:
            driver.put(key, [b"second"], 6)
        assert excinfo.value.key == key
        if READ in capabilities:
            assert read_all(driver, stored.uri) == b"first"

    @requires(WRITE, READ)
    def test_put_odd_and_empty_chunks(self, driver):
        chunks = [b"", b"x", b"", os.urandom(65537), b"yz", os.urandom(3), b""]
        payload = b"".join(chunks)
        stored = driver.put(new_key(), chunks, len(payload))
        assert stored.size == len(payload)
        assert read_all(driver, stored.uri) == payload

    @requires(WRITE, READ)
    def test_put_unknown_size(self, driver):
        chunks = [os.urandom(1000), os.urandom(77)]
        stored = driver.put(new_key(), iter(chunks), None)
        assert stored.size == 1077
        assert read_all(driver, stored.uri) == b"".join(chunks)

    @requires(WRITE, READ)
    def test_put_empty_object(self, driver):
        stored = driver.put(new_key(), iter([]), 0)
        assert stored.size == 0
        assert driver.size(stored.uri) == 0
        assert list(driver.get(stored.uri)) == []

    @pytest.mark.parametrize("exc_type", [Boom, BaseBoom])
    @requires(WRITE, READ)
    def test_put_failing_iterator_leaves_nothing(self, driver, exc_type):
        key, exc = new_key(), exc_type("client went away")
        with pytest.raises(exc_type) as excinfo:
            driver.put(key, failing_chunks(exc), None)
        assert excinfo.value is exc  # propagated as it is, not wrapped
        # Nothing of the failed put survives: the key is free and holds only new data.
        stored = driver.put(key, [b"again"], 5)
        assert stored.size == 5
        assert read_all(driver, stored.uri) == b"again"

    @requires(WRITE, READ)
    def test_put_large_object(self, driver):
        sent, count = hashlib.sha256(), 9
        chunks = [os.urandom(MiB) for _ in range(count)] + [b"tail"]
        for chunk in chunks:
            sent.update(chunk)
        total = count * MiB + 4
        stored = driver.put(new_key(), iter(chunks), total)
        del chunks  # let the read-back below be the only copy in memory
        assert stored.size == total
        assert driver.size(stored.uri) == total
        received = hashlib.sha256()
        for chunk in driver.get(stored.uri):
            received.update(chunk)
        assert received.hexdigest() == sent.hexdigest()

    # -- DELETE -------------------------------------------------------------------------

    @requires(WRITE, DELETE, READ)
    def test_delete(self, driver):
        stored = driver.put(new_key(), [b"doomed"], 6)
        assert driver.delete(stored.uri) is None
        with pytest.raises(NotFound):
            driver.get(stored.uri)
        with pytest.raises(NotFound):
            driver.size(stored.uri)
        assert driver.delete(stored.uri) is None, "deleting again is not an error"

    @requires(DELETE, READ)
    def test_delete_missing_is_not_an_error(self, driver, existing, missing_uri):
        uri, payload = existing
        assert driver.delete(missing_uri) is None
        with pytest.raises(NotFound):
            driver.size(missing_uri)
        assert read_all(driver, uri) == payload, "deleting a missing object touched another"

    # -- early close --------------------------------------------------------------------

    @requires(READ)
    def test_close_before_first_chunk(self, driver, existing):
        uri, payload = existing
        driver.get(uri).close()
        assert read_all(driver, uri) == payload

    @requires(READ)
    def test_close_after_first_chunk(self, driver, existing):
        uri, payload = existing
        chunks = driver.get(uri)
        first = next(chunks)
        chunks.close()
        assert first and payload.startswith(first)
        assert list(chunks) == [], "a closed stream yielded more chunks"

    @requires(READ)
    def test_close_after_the_end_is_harmless(self, driver, existing):
        uri, payload = existing
        chunks = driver.get(uri)
        assert b"".join(chunks) == payload
        chunks.close()
        chunks.close()
        assert list(chunks) == []

    @requires(READ, WRITE, DELETE)
    def test_close_early_then_delete_and_put_again(self, driver):
        key, payload = new_key(), os.urandom(3 * MiB)
        uri = driver.put(key, [payload], len(payload)).uri
        chunks = driver.get(uri)
        next(chunks)
        chunks.close()
        driver.delete(uri)
        stored = driver.put(key, [b"fresh"], 5)
        assert read_all(driver, stored.uri) == b"fresh"

    # -- discard ------------------------------------------------------------------------

    @requires(WRITE, READ)
    def test_discard_after_failed_put(self, driver):
        key = new_key()
        with pytest.raises(Boom):
            driver.put(key, failing_chunks(Boom()), None)
        driver.discard(key)
        stored = driver.put(key, [b"after discard"], 13)
        assert read_all(driver, stored.uri) == b"after discard"

    @requires(WRITE, READ)
    def test_discard_after_complete_put(self, driver):
        key = new_key()
        old = driver.put(key, [b"complete"], 8)
        driver.discard(key)
        with pytest.raises(NotFound):
            driver.get(old.uri)
        stored = driver.put(key, [b"replacement"], 11)
        assert read_all(driver, stored.uri) == b"replacement"

    @requires(WRITE)
    def test_discard_unknown_key_is_noop(self, driver):
        assert driver.discard(new_key()) is None

    # -- LIST ---------------------------------------------------------------------------

    @requires(LIST, WRITE, DELETE)
    def test_list_objects_lists_what_put_stored(self, driver):
        key, payload = new_key(), os.urandom(100_003)
        before = time.time()
        stored = driver.put(key, [payload], len(payload))
        listed = {obj.key: obj for obj in driver.list_objects()}
        assert key in listed
        assert listed[key].uri == stored.uri
        assert listed[key].size == len(payload)
        # The backend's clock dates it (a minute either way for a backend on another host).
        assert before - 60 <= listed[key].modified <= time.time() + 60
        assert driver.key_of(stored.uri) == key
        driver.delete(stored.uri)
        assert key not in {obj.key for obj in driver.list_objects()}

    @requires(LIST, WRITE)
    def test_list_objects_exact_size_of_a_large_object(self, driver):
        key, size = new_key(), 5 * MiB + 3
        stored = driver.put(key, iter([os.urandom(MiB)] * 5 + [b"end"]), None)
        [listed] = [obj for obj in driver.list_objects() if obj.key == key]
        assert listed.size == size == stored.size

    @requires(LIST, WRITE)
    def test_list_objects_skips_a_failed_put(self, driver):
        key = new_key()
        with pytest.raises(Boom):
            driver.put(key, failing_chunks(Boom()), None)
        try:
            assert key not in {obj.key for obj in driver.list_objects()}
        finally:
            driver.discard(key)

    @requires(LIST)
    def test_key_of_a_uri_of_no_object_here_is_none(self, driver):
        assert driver.key_of("nosuchscheme://somewhere/else") is None
        assert driver.key_of("") is None

    # -- open_local ---------------------------------------------------------------------

    @requires(READ)
    def test_open_local_reads_payload(self, driver, existing):
        uri, payload = existing
        f = driver.open_local(uri)
        if f is None:
            pytest.skip("open_local returned None: the store has no local files")
        with f:
            assert f.read() == payload

    @requires(READ)
    def test_open_local_missing_raises_not_found(self, driver, existing, missing_uri):
        f = driver.open_local(existing[0])
        if f is None:
            pytest.skip("open_local returned None: the store has no local files")
        f.close()
        with pytest.raises(NotFound):
            driver.open_local(missing_uri)
