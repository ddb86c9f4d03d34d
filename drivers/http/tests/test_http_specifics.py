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


# Every range of IANA's IPv4 and IPv6 special-purpose address registries that is not
# globally reachable, with an address in it, and multicast.
SPECIAL_PURPOSE = [
    ("0.0.0.0/8", "0.1.2.3"),
    ("10.0.0.0/8", "10.0.0.1"),
    ("100.64.0.0/10", "100.127.255.254"),
    ("127.0.0.0/8", "127.255.0.1"),
    ("169.254.0.0/16", "169.254.0.1"),
    ("172.16.0.0/12", "172.31.0.1"),
    ("192.0.0.0/24", "192.0.0.8"),  # IPv4 dummy address
    ("192.0.0.0/24", "192.0.0.170"),  # NAT64/DNS64 discovery
    ("192.0.2.0/24", "192.0.2.1"),
    ("192.88.99.0/24", "192.88.99.1"),
    ("192.168.0.0/16", "192.168.255.1"),
    ("198.18.0.0/15", "198.19.0.1"),
    ("198.51.100.0/24", "198.51.100.1"),
    ("203.0.113.0/24", "203.0.113.1"),
    ("224.0.0.0/4", "239.255.255.250"),
    ("240.0.0.0/4", "240.0.0.1"),
    ("::/96", "[::1]"),
    ("64:ff9b:1::/48", "[64:ff9b:1::5db8:d822]"),
    ("100::/64", "[100::1]"),
    ("100:0:0:1::/64", "[100:0:0:1::1]"),
    ("2001::/23", "[2001:2::1]"),  # benchmarking
    ("2001::/23", "[2001:10::1]"),  # ORCHID
    ("2001:db8::/32", "[2001:db8::1]"),
    ("3fff::/20", "[3fff::1]"),
    ("5f00::/16", "[5f00::1]"),
    ("fc00::/7", "[fc00::1]"),
    ("fe80::/10", "[fe80::1]"),
    ("fec0::/10", "[fec0::1]"),
    ("ff00::/8", "[ff0e::1]"),
]


@pytest.mark.parametrize("network, host", SPECIAL_PURPOSE, ids=[h for _, h in SPECIAL_PURPOSE])
def test_every_special_purpose_range_is_refused_by_default(make_driver, network, host):
    with pytest.raises(AccessDenied) as excinfo:
        make_driver().validate_location(f"http://{host}/img")
    assert denied(excinfo, f"denied network {network}")


# IPv6 addresses that lead to an IPv4 address: packets to them are translated or
# tunnelled to that address, so it is checked too.
NAT64_METADATA = "64:ff9b::a9fe:a9fe"  # 169.254.169.254 through a NAT64 gateway
SIXTOFOUR_PRIVATE = "2002:a00:1::1"  # behind the 6to4 router 10.0.0.1
TEREDO_PRIVATE_SERVER = "2001:0:a00:1::a247:27dd"  # server 10.0.0.1, client 93.184.216.34
TEREDO_PRIVATE_CLIENT = "2001:0:5db8:d822::f5ff:fffe"  # server 93.184.216.34, client 10.0.0.1 (inverted)
TEREDO_PUBLIC = "2001:0:5db8:d822::a247:27dd"  # server and client 93.184.216.34
ALLOW_TEREDO = {"allowed_networks": ["2001::/32"]}  # inside the denied 2001::/23


@pytest.mark.parametrize(
    "address, overrides, refusal",
    [
        (NAT64_METADATA, {}, "169.254.169.254 (NAT64 in 64:ff9b::a9fe:a9fe"),
        ("64:ff9b::10.0.0.1", {}, "10.0.0.1 (NAT64 in 64:ff9b::a00:1"),
        ("64:ff9b::7f00:1", {}, "127.0.0.1 (NAT64 in 64:ff9b::7f00:1"),
        (SIXTOFOUR_PRIVATE, {}, "10.0.0.1 (6to4 in 2002:a00:1::1"),
        ("2002:a9fe:a9fe::", {}, "169.254.169.254 (6to4 in 2002:a9fe:a9fe::"),
        (TEREDO_PRIVATE_SERVER, ALLOW_TEREDO, "10.0.0.1 (Teredo server in 2001:0:a00:1::a247:27dd"),
        (TEREDO_PRIVATE_CLIENT, ALLOW_TEREDO, "10.0.0.1 (Teredo client in 2001:0:5db8:d822::f5ff:fffe"),
        (TEREDO_PUBLIC, {}, "2001::/23"),  # Teredo is refused by default as it is
        ("::10.0.0.1", {"denied_networks": ["10.0.0.0/8"]}, "10.0.0.1 (IPv4-compatible in ::a00:1"),
        ("::ffff:10.0.0.1", {"denied_networks": ["10.0.0.0/8"]}, "10.0.0.1 (IPv4-mapped in ::ffff:a00:1"),
    ],
)
def test_ipv6_addresses_leading_to_refused_ipv4_are_refused(make_driver, fake_dns, address, overrides, refusal):
    driver = make_driver(**overrides)
    with pytest.raises(AccessDenied) as excinfo:
        driver.validate_location(f"http://[{address}]/img")
    assert denied(excinfo, refusal, "allowed_networks")
    fake_dns["translated.test"] = [address]  # the same through DNS (a DNS64 answer, say)
    with pytest.raises(AccessDenied) as excinfo:
        driver.validate_location("http://translated.test/img")
    assert denied(excinfo, refusal.rstrip(")") + " of host translated.test)" if "(" in refusal else refusal)


@pytest.mark.parametrize(
    "address, overrides",
    [
        ("64:ff9b::5db8:d822", {}),  # 93.184.216.34
        ("2002:5db8:d822::1", {}),
        (TEREDO_PUBLIC, ALLOW_TEREDO),
        ("::ffff:5db8:d822", {}),
    ],
)
def test_ipv6_addresses_leading_to_public_ipv4_are_accepted(make_driver, fake_dns, address, overrides):
    driver = make_driver(**overrides)
    driver.validate_location(f"http://[{address}]/img")
    fake_dns["translated.test"] = [address]
    driver.validate_location("http://translated.test/img")


def test_allowed_networks_apply_to_the_embedded_ipv4(make_driver):
    driver = make_driver(allowed_networks=["10.20.0.0/16"])
    driver.validate_location("http://[64:ff9b::10.20.1.1]/img")
    driver.validate_location("http://[2002:a14:101::1]/img")
    with pytest.raises(AccessDenied, match=r"10\.30\.1\.1 \(NAT64 in 64:ff9b::a1e:101\) is in denied network"):
        driver.validate_location("http://[64:ff9b::10.30.1.1]/img")


def test_the_ipv6_form_itself_can_still_be_denied(make_driver):
    """An operator without NAT64 may refuse its prefix: the translated IPv4 address
    being public does not let the IPv6 address through."""
    from abbild_http.opts import DEFAULT_DENIED_NETWORKS

    driver = make_driver(denied_networks=[*DEFAULT_DENIED_NETWORKS, "64:ff9b::/96", "2002::/16"])
    for address in ("64:ff9b::5db8:d822", "2002:5db8:d822::1"):
        with pytest.raises(AccessDenied, match=rf"address {address} is in denied network"):
            driver.validate_location(f"http://[{address}]/img")


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


@pytest.mark.parametrize("odd", ["²", "1²", "³³"])
def test_content_length_of_non_ascii_digits_is_no_length(loopback_driver, served, odd):
    """str.isdigit() is true for "²" but int() refuses it: such a length must count as
    none (the size then comes from a Range request), not crash the request."""
    served.odd_length = odd
    uri = served.url("/oddlength/img")
    assert loopback_driver.size(uri) == 10_000
    assert read_all(loopback_driver, uri) == served.files["img"]
    assert read_all(loopback_driver, uri, offset=5, length=3) == b"567"
    assert [method for method, _, _ in served.requests[:2]] == ["HEAD", "GET"]


def test_range_ignoring_server_is_skipped_and_cut(loopback_driver, served):
    uri = served.url("/norange/img")
    assert read_all(loopback_driver, uri, offset=9_990) == served.files["img"][9_990:]
    assert read_all(loopback_driver, uri, offset=3, length=4) == b"3456"
    assert served.requests[-1][2]["Range"] == "bytes=3-6"


@pytest.mark.parametrize(
    "status, error",
    [
        (404, NotFound),
        (410, NotFound),
        (403, AccessDenied),
        (401, AccessDenied),
        (500, BackendUnavailable),
        (503, BackendUnavailable),
        (400, BackendError),
    ],
)
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


def test_body_cut_short_is_backend_unavailable(loopback_driver, served):
    chunks = loopback_driver.get(served.url("/short/img"))
    with pytest.raises(BackendUnavailable, match="download failed"):
        list(chunks)
    assert list(chunks) == []
    chunks.close()  # the failure closed it already: closing again is harmless


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
