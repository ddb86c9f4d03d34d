import pytest

from abbild.testing.conformance import DriverConformance


class TestFilesystemConformance(DriverConformance):
    @pytest.fixture
    def configured(self, make_driver):
        return make_driver()

    @pytest.fixture
    def driver(self, configured):
        return configured[0]

    @pytest.fixture
    def capabilities(self, configured):
        return configured[1]
