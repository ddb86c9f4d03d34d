import pytest

from abbild.testing.conformance import DriverConformance

pytestmark = pytest.mark.backend("ceph")


class TestRBDConformance(DriverConformance):
    @pytest.fixture
    def driver(self, shared_driver):
        return shared_driver
