import pytest

from abbild.errors import NotFound
from abbild.memory import MemoryDriver
from abbild.testing.conformance import DriverConformance, read_all


class TestMemoryConformance(DriverConformance):
    @pytest.fixture
    def driver(self):
        driver = MemoryDriver("scratch")
        driver.configure()
        return driver

    def test_instances_share_nothing(self, driver):
        stored = driver.put("shared", [b"mine"], 4)
        other = MemoryDriver("scratch")
        with pytest.raises(NotFound):
            other.get(stored.uri)
        other.put("shared", [b"theirs"], 6)
        assert read_all(driver, stored.uri) == b"mine"

    def test_uri_of_another_store_is_not_found(self, driver):
        stored = driver.put("k", [b"data"], 4)
        with pytest.raises(NotFound):
            driver.get(stored.uri.replace("memory://scratch/", "memory://elsewhere/"))
