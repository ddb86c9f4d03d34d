import pytest

from abbild.testing.conformance import DriverConformance


class TestVMwareConformance(DriverConformance):
    """The shared suite against the fake vSphere server (see fake_vsphere.py), over TLS."""

    @pytest.fixture
    def driver(self, make_driver):
        return make_driver()
