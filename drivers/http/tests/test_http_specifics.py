"""What the conformance suite cannot see: the SSRF guard, redirects, odd servers,
timeouts, TLS and configuration."""

import logging
import socket

import pytest

from abbild.errors import AccessDenied, BackendError, BackendUnavailable, ConfigError, NotFound
from abbild.stores import installed_drivers
from abbild.testing.conformance import read_all

ALLOW_LOOPBACK = {"allowed_networks": ["127.0.0.1/32"]}


@pytest.fixture
def served(image_server):
    image_server.files["img"] = b"0123456789" * 1000
    return image_server


def denied(excinfo, *words):
    message = str(excinfo.value)
    return all(word in message for word in words)


# -- the default refuses the service's own networks ----------------------------------


def test_loopback_is_refused_by_default(make_driver, served):
    driver = make_driver()
    url = served.url("/files/img")
    for operation in (driver.validate_location, driver.size, driver.get):
        with pytest.raises(AccessDenied) as excinfo:
            operation(url)
        assert denied(excinfo, "127.0.0.1", "denied network 127.0.0.0/8", "[web] allowed_networks")
    assert served.requests == []  # refused before any connection


@pytest.mark.parametrize(
    "host, network",
    [
        ("10.1.2.3", "10.0.0.0/8"),
        ("172.16.0.1", "172.16.0.0/12"),
        ("192.168.1.1", "192.168.0.0/16"),
        ("169.254.169.254", "169.254.0.0/16"),  # cloud metadata
        ("100.64.0.1", "100.64.0.0/10"),  # carrier-grade NAT
        ("0.0.0.0", "0.0.0.0/8"),
        ("224.0.0.1", "224.0.0.0/4"),
        ("255.255.255.255", "240.0.0.0/4"),
        ("[::1]", "::/96"),
        ("[::]", "::/96"),
        ("[fe80::1]", "fe80::/10"),
        ("[fd00::1]", "fc00::/7"),
        ("[ff02::1]", "ff00::/8"),
        ("[::ffff:127.0.0.1]", "127.0.0.0/8"),  # IPv4-mapped
        ("[::ffff:169.254.169.254]", "169.254.0.0/16"),
        ("[::ffff:a9fe:a9fe]", "169.254.0.0/16"),  # the same, in hex
        ("2130706433", "127.0.0.0/8"),  # 127.0.0.1 as one decimal number
        ("127.1", "127.0.0.0/8"),
    ],
)
def test_special_addresses_are_refused_by_default(make_driver, host, network):
    with pytest.raises(AccessDenied) as excinfo:
        make_driver().validate_location(f"http://{host}/latest/meta-data/")
    assert denied(excinfo, f"denied network {network}", "allowed_networks")


def test_public_address_is_accepted(make_driver):
    make_driver().validate_location("https://93.184.216.34/images/cirros.img")


def test_host_name_resolving_to_loopback_is_refused(make_driver, served):
    with pytest.raises(AccessDenied) as excinfo:
        make_driver().get(served.url("/files/img", host="localhost"))
    assert denied(excinfo, "(of host localhost)", "denied network")
    assert served.requests == []


def test_every_resolved_address_is_checked(make_driver, fake_dns):
    fake_dns["mirror.test"] = ["93.184.216.34", "10.0.0.7"]
    with pytest.raises(AccessDenied) as excinfo:
        make_driver().validate_location("http://mirror.test/img")
    assert denied(excinfo, "10.0.0.7 (of host mirror.test)", "10.0.0.0/8")


def test_unknown_host_is_unavailable(make_driver, fake_dns):
    with pytest.raises(BackendUnavailable, match="cannot resolve host nowhere.test"):
        make_driver().size("http://nowhere.test/img")


def test_connection_goes_to_the_checked_address(make_driver, served, fake_dns):
    """DNS rebinding: the name answers a harmless address to the check and a metadata
    address afterwards. The request must go to the checked address, once resolved,
    and still say the original name in its Host header."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    fake_dns["images.test"] = lambda: next(answers)
    driver = make_driver(**ALLOW_LOOPBACK)
    assert read_all(driver, served.url("/files/img", host="images.test")) == served.files["img"]
    assert fake_dns["calls"] == ["images.test"]
    [(_, _, headers)] = served.requests
    assert headers["Host"] == f"images.test:{served.port}"


# -- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://127.0.0.2:{port}/files/img",  # loopback, but not the allowed 127.0.0.1
        "http://[::ffff:10.0.0.1]/",
        "file:///etc/passwd",
        "http://admin:secret@127.0.0.1:{port}/files/img",
    ],
)
def test_redirect_into_refused_target_is_refused(make_driver, served, target):
    served.redirects["/away"] = target.format(port=served.port)
    with pytest.raises(AccessDenied) as excinfo:
        make_driver(**ALLOW_LOOPBACK).get(served.url("/away"))
    assert "secret" not in str(excinfo.value)
    assert [path for _, path, _ in served.requests] == ["/away"]


def test_redirects_are_followed(make_driver, served):
    served.redirects["/one"] = served.url("/two")
    served.redirects["/two"] = "/files/img"  # relative
    driver = make_driver(**ALLOW_LOOPBACK)
    assert read_all(driver, served.url("/one"), offset=5, length=10) == served.files["img"][5:15]
    assert driver.size(served.url("/one")) == 10_000


def test_too_many_redirects(make_driver, served):
    served.redirects["/one"] = "/two"
    served.redirects["/two"] = "/files/img"
    driver = make_driver(max_redirects=1, **ALLOW_LOOPBACK)
    with pytest.raises(BackendError, match=r"more than 1 redirects.*\[web\] max_redirects"):
        driver.get(served.url("/one"))
    assert driver.size(served.url("/two")) == 10_000


# -- the other rules ------------------------------------------------------------------


def test_userinfo_is_refused_and_never_shown(make_driver, served, caplog):
    url = served.url("/files/img").replace("://", "://admin:s3cr3t@")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AccessDenied) as excinfo:
            make_driver(**ALLOW_LOOPBACK).get(url)
    assert "user name or password" in str(excinfo.value)
    assert "s3cr3t" not in str(excinfo.value) and "s3cr3t" not in caplog.text
    assert served.requests == []


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/img", "file:///etc/passwd", "gopher://93.184.216.34/", "/img"])
def test_other_schemes_are_refused(make_driver, url):
    with pytest.raises(AccessDenied, match=r"is not allowed.*allowed_schemes"):
        make_driver().validate_location(url)


def test_https_only(make_driver):
    driver = make_driver(allowed_schemes=["https"])
    driver.validate_location("https://93.184.216.34/img")
    with pytest.raises(AccessDenied, match="'http' is not allowed"):
        driver.validate_location("http://93.184.216.34/img")


def test_host_rules(make_driver, fake_dns):
    fake_dns["images.example.com"] = fake_dns["evil.test"] = ["93.184.216.34"]
    driver = make_driver(allowed_hosts=[".example.com"], denied_hosts=["bad.example.com"])
    driver.validate_location("http://IMAGES.example.com./img")
    with pytest.raises(AccessDenied, match=r"not in allowed_hosts.*\[web\] allowed_hosts"):
        driver.validate_location("http://evil.test/img")
    with pytest.raises(AccessDenied, match="is in denied_hosts"):
        driver.validate_location("http://bad.example.com/img")


def test_port_rules(make_driver):
    driver = make_driver(allowed_ports=[80, 443, 8080], denied_ports=[8080])
    driver.validate_location("http://93.184.216.34/img")
    with pytest.raises(AccessDenied, match=r"port 22 is not in allowed_ports"):
        driver.validate_location("http://93.184.216.34:22/img")
    with pytest.raises(AccessDenied, match=r"port 8080 is in denied_ports"):
        driver.validate_location("http://93.184.216.34:8080/img")


def test_allow_list_of_networks(make_driver, served):
    driver = make_driver(denied_networks=["0.0.0.0/0", "::/0"], allowed_networks=["127.0.0.1/32"])
    assert driver.size(served.url("/files/img")) == 10_000
    with pytest.raises(AccessDenied, match="denied network 0.0.0.0/0"):
        driver.validate_location("http://93.184.216.34/img")


def test_most_specific_network_wins(make_driver):
    driver = make_driver(allowed_networks=["10.20.0.0/16"], denied_networks=["10.0.0.0/8", "10.20.30.0/24"])
    driver.validate_location("http://10.20.1.1/img")
    for refused in ("10.1.1.1", "10.20.30.1"):
        with pytest.raises(AccessDenied):
            driver.validate_location(f"http://{refused}/img")


def test_same_range_in_both_lists_is_denied(make_driver):
    with pytest.raises(AccessDenied, match="narrower than 127.0.0.0/8"):
        make_driver(allowed_networks=["127.0.0.0/8"]).validate_location("http://127.0.0.1/img")


# -- servers that answer oddly --------------------------------------------------------


@pytest.mark.parametrize("mode", ["nolength", "nohead", "norange"])
def test_size_without_head_length(loopback_driver, served, mode):
    assert loopback_driver.size(served.url(f"/{mode}/img")) == 10_000


def test_range_ignoring_server_is_skipped_and_cut(loopback_driver, served):
    uri = served.url("/norange/img")
    assert read_all(loopback_driver, uri, offset=9_990) == served.files["img"][9_990:]
    assert read_all(loopback_driver, uri, offset=3, length=4) == b"3456"
    assert served.requests[-1][2]["Range"] == "bytes=3-6"


@pytest.mark.parametrize(
    "status, error",
    [(404, NotFound), (410, NotFound), (403, AccessDenied), (401, AccessDenied), (500, BackendUnavailable),
     (503, BackendUnavailable), (400, BackendError)],
)  # fmt: skip
def test_status_mapping(loopback_driver, served, status, error):
    for operation in (loopback_driver.get, loopback_driver.size):
        with pytest.raises(error):
            operation(served.url(f"/status/{status}"))


def test_unreachable_server_is_unavailable(loopback_driver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}/img"):
            loopback_driver.get(f"http://127.0.0.1:{port}/img")


def test_slow_server_times_out(make_driver, served):
    served.delay = 5
    driver = make_driver(read_timeout=0.2, **ALLOW_LOOPBACK)
    with pytest.raises(BackendUnavailable, match="timed out"):
        driver.get(served.url("/slow/img"))


def test_early_close_drops_the_connection(loopback_driver, served):
    served.files["big"] = b"x" * (8 << 20)
    chunks = loopback_driver.get(served.url("/files/big"))
    next(chunks)
    chunks.close()
    assert list(chunks) == []


# -- TLS ------------------------------------------------------------------------------


def test_tls_verified_against_the_url_host_name(make_driver, tls_server, ca_file):
    driver = make_driver(ca_file=ca_file, **ALLOW_LOOPBACK)
    assert read_all(driver, tls_server.url("/files/img", host="images.test")) == b"secure bytes"


def test_tls_with_unknown_ca_is_refused(make_driver, tls_server):
    with pytest.raises(AccessDenied, match=r"TLS failed.*\[web\] ca_file"):
        make_driver(**ALLOW_LOOPBACK).get(tls_server.url("/files/img", host="images.test"))


def test_tls_certificate_for_another_name_is_refused(make_driver, tls_server, ca_file, fake_dns):
    fake_dns["other.test"] = ["127.0.0.1"]
    with pytest.raises(AccessDenied, match="TLS failed"):
        make_driver(ca_file=ca_file, **ALLOW_LOOPBACK).get(tls_server.url("/files/img", host="other.test"))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_insecure(make_driver, tls_server):
    driver = make_driver(insecure=True, **ALLOW_LOOPBACK)
    assert read_all(driver, tls_server.url("/files/img", host="images.test")) == b"secure bytes"


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"allowed_networks": ["10.0.0.0/33"]}, r"allowed_networks has '10.0.0.0/33'.*\[web\] allowed_networks"),
        ({"denied_networks": ["internal"]}, r"denied_networks has 'internal'"),
        ({"allowed_schemes": ["http", "ftp"]}, r"allowed_schemes has ftp"),
        ({"ca_file": "/nonexistent/ca.pem"}, r"ca_file '/nonexistent/ca.pem' is not a file"),
        ({"ca_file": __file__, "insecure": True}, r"both ca_file and insecure"),
    ],
)
def test_bad_config_is_config_error(make_driver, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_driver(**overrides)


def test_entry_point_and_read_only(make_driver):
    assert installed_drivers()["http"] == "abbild_http.driver:HTTPDriver"
    driver = make_driver()
    assert driver.check().startswith("ok")
    with pytest.raises(NotImplementedError):
        driver.put("k", [b"x"], 1)
