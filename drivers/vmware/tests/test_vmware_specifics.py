"""What the conformance suite cannot see: the session, datastore choice, URIs, TLS and
configuration. All against the fake vSphere server (fake_vsphere.py)."""

import os

import pytest

from abbild.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    ConfigError,
    NotFound,
    StoreFull,
)
from abbild.stores import installed_drivers
from abbild.testing.conformance import read_all

# -- the session ----------------------------------------------------------------------


def test_logs_in_once_and_reuses_the_cookie(make_driver, vsphere):
    driver = make_driver()
    uri = driver.put("img", [b"data"], 4).uri
    assert read_all(driver, uri) == b"data"
    assert driver.size(uri) == 4
    assert vsphere.logins == 1


def test_expired_session_logs_in_again(make_driver, vsphere):
    driver = make_driver()
    uri = driver.put("img", [b"data"], 4).uri
    vsphere.expire_sessions()
    assert read_all(driver, uri) == b"data"  # 401, login, same request again
    vsphere.expire_sessions()
    assert driver.put("img2", iter([b"more"]), None).size == 4  # the HEAD before the PUT renews it
    assert vsphere.logins == 3


def test_wrong_password_is_access_denied(make_driver, vsphere):
    driver = make_driver(password="not-the-password")
    with pytest.raises(AccessDenied, match=r"refused the login of 'svc-images@vsphere.local'.*\[vcenter\] user"):
        driver.put("img", [b"data"], 4)
    assert "not-the-password" not in str(pytest.raises(AccessDenied, driver.check).value)
    assert not any(method == "PUT" for method, _ in vsphere.requests)


def test_check_logs_in(make_driver, vsphere):
    assert make_driver().check() == "ok: logged in to 127.0.0.1 as svc-images@vsphere.local"
    assert vsphere.logins == 1


# -- datastores -----------------------------------------------------------------------


def test_writes_go_to_the_heaviest_datastore(make_driver, vsphere):
    driver = make_driver(datastores=["dc1:small:10", "dc1:big:100"])
    uri = driver.put("img", [b"data"], 4).uri
    assert uri.endswith("?dcPath=dc1&dsName=big")
    assert ("dc1", "big", "abbild images/img") in vsphere.files


def test_full_datastore_is_passed_over(make_driver, vsphere):
    driver = make_driver(datastores=["dc1:small:100", "dc1:big:10"])
    with pytest.raises(StoreFull, match="datastore small answered 507"):
        driver.put("huge", [os.urandom(1 << 20), b"x"], None)
    assert not vsphere.files  # nothing of the failed upload is left
    uri = driver.put("huge", [os.urandom(1 << 20), b"x"], None).uri
    assert uri.endswith("dsName=big")
    assert driver.put("small-one", [b"x"], 1).uri.endswith("dsName=big")  # still passed over


def test_full_retry_interval_zero_tries_the_heaviest_again(make_driver):
    driver = make_driver(datastores=["dc1:small:100", "dc1:big:10"], full_retry_interval=0)
    with pytest.raises(StoreFull):
        driver.put("huge", [os.urandom((1 << 20) + 1)], (1 << 20) + 1)
    assert driver.put("tiny", [b"x"], 1).uri.endswith("dsName=small")


def test_reads_use_the_datastore_in_the_uri(make_driver, vsphere):
    writer = make_driver(datastores=["dc1:small:1"])
    uri = writer.put("img", [b"on small"], 8).uri
    reader = make_driver(datastores=["dc1:big:1"])
    assert read_all(reader, uri) == b"on small"
    reader.delete(uri)
    assert not vsphere.files


def test_discard_removes_the_key_from_every_datastore(make_driver, vsphere):
    make_driver(datastores=["dc1:small"]).put("img", [b"a"], 1)
    make_driver(datastores=["dc1:big"]).put("img", [b"b"], 1)
    make_driver(datastores=["dc1:big", "dc1:small"]).discard("img")
    assert not vsphere.files


def test_existing_file_is_not_overwritten(make_driver, vsphere):
    driver = make_driver()
    driver.put("img", [b"first"], 5)
    with pytest.raises(AlreadyExists):
        driver.put("img", [b"second"], 6)
    assert vsphere.files[("dc1", "big", "abbild images/img")] == b"first"


# -- URIs and the wire ----------------------------------------------------------------


def test_uri_format(make_driver, vsphere):
    vsphere.capacity[("east/dc 2", "ds&1")] = 100
    uri = make_driver(datastores=["east/dc 2:ds&1:5"], image_dir="/openstack_glance").put("img-1", [b"x"], 1).uri
    assert uri == "vsphere://127.0.0.1/folder/openstack_glance/img-1?dcPath=east%2Fdc%202&dsName=ds%261"


def test_unknown_datastore(make_driver):
    with pytest.raises(NotFound):
        make_driver().size("vsphere://127.0.0.1/folder/abbild%20images/img?dcPath=dc1&dsName=nope")
    with pytest.raises(BackendError, match=r"no datastore 'nope' in datacenter 'dc1'; fix \[vcenter\] datastores"):
        make_driver(datastores=["dc1:nope"]).put("img", [b"x"], 1)


@pytest.mark.parametrize(
    "uri",
    [
        "vsphere://otherhost/folder/x/img?dcPath=dc1&dsName=big",
        "vsphere://127.0.0.1:8443/folder/x/img?dcPath=dc1&dsName=big",
        "vsphere://user:pw@127.0.0.1/folder/x/img?dcPath=dc1&dsName=big",
        "https://127.0.0.1/folder/x/img?dcPath=dc1&dsName=big",
        "vsphere://127.0.0.1/sdk?dcPath=dc1&dsName=big",
        "vsphere://127.0.0.1/folder/x/img?dcPath=dc1",
        "vsphere://127.0.0.1/folder/x/img?dcPath=dc1&dsName=big&dsName=small",
        "vsphere://127.0.0.1/folder/x/../../img?dcPath=dc1&dsName=big",
    ],
)
def test_foreign_uri_is_not_found(make_driver, vsphere, uri):
    driver = make_driver()
    for operation in (driver.get, driver.size):
        with pytest.raises(NotFound):
            operation(uri)
    assert driver.delete(uri) is None  # not a location of this server: nothing to delete
    assert vsphere.requests == []


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "../x", "a b", "a?b", "x" * 256])
def test_bad_key_is_refused(make_driver, vsphere, key):
    with pytest.raises(AccessDenied, match="invalid key"):
        make_driver().put(key, [b"x"], 1)
    assert vsphere.files == {}


def test_unknown_size_is_sent_chunked_and_counted(make_driver, vsphere):
    driver = make_driver()
    stored = driver.put("img", (bytes([i]) * 1000 for i in range(50)), None)
    assert stored.size == 50_000
    assert read_all(driver, stored.uri, offset=1500, length=1000) == b"\x01" * 500 + b"\x02" * 500


def test_server_down_is_unavailable(make_driver, vsphere):
    driver = make_driver()
    uri = driver.put("img", [b"x"], 1).uri
    vsphere.shutdown()
    vsphere.server_close()
    with pytest.raises(BackendUnavailable):
        driver.size(uri)


# -- TLS ------------------------------------------------------------------------------


def test_tls_without_the_ca_is_refused(make_driver):
    with pytest.raises(AccessDenied, match=r"TLS with 127.0.0.1 failed.*\[vcenter\] ca_file"):
        make_driver(ca_file=None).check()


def test_tls_for_another_name_is_refused(make_driver, vsphere, ca):
    # The certificate names 127.0.0.1; "localhost" reaches the same server but must fail.
    with pytest.raises(AccessDenied, match="TLS with localhost failed"):
        make_driver(host="localhost").check()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_insecure(make_driver):
    assert make_driver(ca_file=None, insecure=True).check().startswith("ok")


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"host": None}, r"'host' is not set; set \[vcenter\] host"),
        ({"user": None}, r"'user' is not set"),
        ({"password": None}, r"'password' is not set"),
        ({"datastores": []}, r"'datastores' is empty"),
        ({"datastores": ["dc1"]}, r"entry 'dc1' is not <datacenter path>:<datastore name>"),
        ({"datastores": ["dc1:ds:heavy"]}, r"entry 'dc1:ds:heavy'"),
        ({"ca_file": "/nonexistent.pem"}, r"ca_file '/nonexistent.pem' is not a file"),
        ({"insecure": True}, r"both ca_file and insecure"),
    ],
)
def test_bad_config_is_config_error(make_driver, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_driver(**overrides)


def test_entry_point_and_properties(make_driver):
    assert installed_drivers()["vmware"] == "abbild_vmware.driver:VMwareDriver"
    driver = make_driver(datastores=["dc1:a:1", "dc1:b:7", "dc1:c"])
    assert driver.properties() == {"datastores": ["dc1:b:7", "dc1:a:1", "dc1:c:0"]}
