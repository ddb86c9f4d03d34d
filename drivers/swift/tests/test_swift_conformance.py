import pytest

from abbild.testing.conformance import DriverConformance

pytestmark = pytest.mark.backend("swift")


class TestSwiftConformance(DriverConformance):
    """The shared suite three times: SLO with tempauth in one container, DLO with
    tempauth spread over several containers, and SLO with Keystone v3 tokens."""

    @pytest.fixture(params=["tempauth-slo", "tempauth-dlo-containers", "keystone-slo"])
    def driver(self, request, make_driver):
        if request.param == "tempauth-slo":
            return make_driver()
        if request.param == "tempauth-dlo-containers":
            return make_driver(large_object_manifest="dlo", multiple_containers_seed=3)
        request.getfixturevalue("keystone_raw")  # removes this session's containers at the end
        return make_driver(**request.getfixturevalue("keystone_options"))
