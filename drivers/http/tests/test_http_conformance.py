import os

import pytest

from abbild.testing.conformance import DriverConformance, MiB, new_key


class TestHTTPConformance(DriverConformance):
    """The shared suite against a Range-capable server. The store is read-only, so
    ``existing`` places the object on the server instead of calling ``put``."""

    mode = "files"

    @pytest.fixture
    def driver(self, loopback_driver):
        return loopback_driver

    @pytest.fixture
    def existing(self, image_server):
        name, payload = new_key(), os.urandom(2 * MiB + 12345)
        image_server.files[name] = payload
        return image_server.url(f"/{self.mode}/{name}"), payload


class TestHTTPConformanceRangeIgnored(TestHTTPConformance):
    """The same against a server that ignores Range and always sends everything."""

    mode = "norange"


class TestHTTPConformanceNoLength(TestHTTPConformance):
    """The same against a server that tells no length on HEAD (nor on GET)."""

    mode = "nolength"
