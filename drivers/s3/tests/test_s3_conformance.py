import pytest

from abbild.testing.conformance import DriverConformance

pytestmark = pytest.mark.backend("ceph")


class TestS3Conformance(DriverConformance):
    @pytest.fixture
    def driver(self, shared_driver):
        return shared_driver
