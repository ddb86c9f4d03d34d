"""Signed images (abbild.signatures): keys and certificates made here with
``cryptography``, data signed like a user does (one case with the real ``openssl``
command of Glance's documentation), verified as the data streams through an
:class:`~abbild.streams.ImageStream`, and every way a signature can be wrong."""

from __future__ import annotations

import base64
import datetime
import gc
import os
import subprocess
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from abbild.errors import ConfigError, ImageSignatureInvalid
from abbild.image import Image, Status
from abbild.registry import Viewer
from abbild.signatures import CertificateDirectory, SignatureVerification, signature_check
from abbild.streams import ImageStream
from tests import signing
from tests.signing import Signer

ADMIN = Viewer(is_admin=True)
NOW = signing.NOW
HASHES = signing.HASHES


@pytest.fixture
def certs(tmp_path):
    path = tmp_path / "certificates"
    path.mkdir()
    return path


@pytest.fixture
def source(certs):
    return CertificateDirectory(str(certs))


def stream_through(image, source, data: bytes, chunk=64 << 10):
    """The data in chunks through an ImageStream with the image's signature check."""
    check = signature_check(image, source)
    stream = ImageStream([data[i : i + chunk] for i in range(0, len(data), chunk)], checks=[check])
    assert b"".join(stream) == data
    return stream


# -- what verifies ----------------------------------------------------------------------------

KEY_TYPES = ["RSA-PSS", "DSA", "ECC_SECP384R1", "ECC_SECP521R1"]


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("hash_method", list(HASHES))
def test_right_signature_verifies(certs, source, key_type, hash_method):
    signer = Signer(certs, key_type)
    data = os.urandom(300_000)
    stream_through(signer.image(data, hash_method), source, data)


def test_empty_data_verifies(certs, source):
    signer = Signer(certs)
    stream_through(signer.image(b""), source, b"")


def test_a_der_certificate_and_a_wrapped_base64_signature_verify(certs, source):
    signer = Signer(certs, "ECC_SECP384R1")
    (certs / f"{signer.certificate_uuid}.pem").write_bytes(signer.certificate.public_bytes(serialization.Encoding.DER))
    data = os.urandom(5000)
    image = signer.image(data)
    wrapped = image.properties["img_signature"]
    image.properties["img_signature"] = "\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))
    stream_through(image, source, data)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.parametrize(
    ("key_type", "genkey", "sigopts"),
    [
        ("RSA-PSS", ["genrsa", "-out", "private_key.pem", "2048"], ["-sigopt", "rsa_padding_mode:pss"]),
        ("ECC_SECP384R1", ["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", "private_key.pem"], []),
    ],
)
def test_an_image_signed_with_openssl_like_glances_docs_verifies(tmp_path, certs, source, key_type, genkey, sigopts):
    """The commands docs/operating.md gives (Glance's), run for real."""
    data = os.urandom(1 << 20) + b"tail"
    (tmp_path / "myimage").write_bytes(data)
    openssl(*genkey, cwd=tmp_path)
    openssl("req", "-new", "-key", "private_key.pem", "-out", "cert_request.csr", "-subj", "/CN=signer", cwd=tmp_path)
    openssl(
        "x509", "-req", "-days", "14", "-in", "cert_request.csr", "-signkey", "private_key.pem",
        "-out", "new_cert.crt", cwd=tmp_path,
    )  # fmt: skip
    openssl(
        "dgst", "-sha256", "-sign", "private_key.pem", *sigopts, "-out", "myimage.signature", "myimage", cwd=tmp_path
    )
    certificate_uuid = str(uuid.uuid4())
    (certs / f"{certificate_uuid}.pem").write_bytes((tmp_path / "new_cert.crt").read_bytes())
    props = {
        "img_signature": base64.b64encode((tmp_path / "myimage.signature").read_bytes()).decode(),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": key_type,
        "img_signature_certificate_uuid": certificate_uuid,
    }
    image = Image(id=str(uuid.uuid4()), properties=props)
    stream_through(image, source, data)
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed"):
        stream_through(image, source, data[:-1] + b"X")


def test_unsigned_images_are_not_checked(source):
    assert signature_check(Image(id=str(uuid.uuid4()), properties={"os_distro": "debian"}), source) is None


# -- what does not --------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_flipped_byte_fails_after_the_last_chunk(certs, source, key_type):
    signer = Signer(certs, key_type)
    data = bytearray(os.urandom(200_000))
    image = signer.image(bytes(data))
    data[123_456] ^= 1
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed") as err:
        stream_through(image, source, bytes(data))
    assert signer.certificate_uuid in str(err.value) and "nothing was stored" in str(err.value)


def test_a_signature_by_another_key_fails(certs, source):
    signer, other = Signer(certs), Signer(certs)
    data = os.urandom(1000)
    image = signer.image(data, img_signature_certificate_uuid=other.certificate_uuid)
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed"):
        stream_through(image, source, data)


def test_a_signature_over_another_hash_fails(certs, source):
    signer = Signer(certs)
    data = os.urandom(1000)
    image = signer.image(data, "SHA-512", img_signature_hash_method="SHA-256")
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed"):
        stream_through(image, source, data)


def test_garbage_signature_fails(certs, source):
    signer = Signer(certs, "ECC_SECP384R1")
    image = signer.image(b"data", img_signature=base64.b64encode(b"not a DER signature").decode())
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed"):
        stream_through(image, source, b"data")


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (
            {"not_after": NOW - datetime.timedelta(days=1), "not_before": NOW - datetime.timedelta(days=30)},
            "expired on",
        ),
        ({"not_before": NOW + datetime.timedelta(days=1)}, "is not valid before"),
    ],
    ids=["expired", "not yet valid"],
)
def test_certificate_outside_its_dates_is_refused_before_any_data(certs, source, dates, message):
    signer = Signer(certs, **dates)
    with pytest.raises(ImageSignatureInvalid, match=message):
        signature_check(signer.image(b"data"), source)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"img_signature_hash_method": "MD5"}, "Invalid img_signature_hash_method 'MD5': use one of SHA-224, SHA-256"),
        ({"img_signature_hash_method": "sha256"}, "Invalid img_signature_hash_method 'sha256'"),
        ({"img_signature_key_type": "RSA"}, "Invalid img_signature_key_type 'RSA': use one of RSA-PSS, DSA, ECC_"),
        ({"img_signature_key_type": "DSA"}, "certificate .* holds a RSA \\(key type RSA-PSS\\) key"),
        ({"img_signature_key_type": "ECC_SECP521R1"}, "holds a RSA"),
        ({"img_signature": "not base64!"}, "img_signature: it is not base64"),
        ({"img_signature_certificate_uuid": str(uuid.uuid4())}, "there is no certificate .*an operator adds it as"),
    ],
    ids=["md5", "lower case", "key type", "dsa vs rsa", "ecc vs rsa", "base64", "unknown certificate"],
)
def test_bad_parameters_are_refused_before_any_data(certs, source, override, message):
    signer = Signer(certs)
    with pytest.raises(ImageSignatureInvalid, match=message):
        signature_check(signer.image(b"data", **override), source)


def test_an_ecc_certificate_for_rsa_is_named(certs, source):
    signer = Signer(certs, "ECC_SECP384R1")
    with pytest.raises(ImageSignatureInvalid, match=r"holds a ECC \(key type ECC_SECP384R1\) key"):
        signature_check(signer.image(b"data", img_signature_key_type="RSA-PSS"), source)


@pytest.mark.parametrize(
    "missing",
    [["img_signature"], ["img_signature_certificate_uuid", "img_signature_key_type"], ["img_signature_hash_method"]],
)
def test_some_but_not_all_properties_are_refused_naming_the_missing(certs, source, missing):
    image = Signer(certs).image(b"data")
    for name in missing:
        del image.properties[name]
    with pytest.raises(ImageSignatureInvalid, match="Cannot verify the image's signature") as err:
        signature_check(image, source)
    said = str(err.value).split(" but not ")[1].split(". ")[0]
    assert set(said.split(", ")) == set(missing)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/ssl/certs/ca-certificates.crt",
        "../outside",
        "/etc/passwd",
        "0f1b5c8e-5b4c-4e4b-9a58-3c2c6c1c9b2a/../x",
    ],
)
def test_certificate_uuid_must_be_a_uuid(tmp_path, certs, source, name):
    """Even when the file a traversal names exists and holds a certificate."""
    signer = Signer(certs)
    (tmp_path / "outside.pem").write_bytes(signer.certificate.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ImageSignatureInvalid, match="Invalid img_signature_certificate_uuid"):
        signature_check(signer.image(b"data", img_signature_certificate_uuid=name), source)


def test_a_file_that_is_no_certificate_is_refused(certs, source):
    signer = Signer(certs)
    (certs / f"{signer.certificate_uuid}.pem").write_text("-----BEGIN CERTIFICATE-----\nnonsense\n")
    with pytest.raises(ImageSignatureInvalid, match="is not a readable X.509 certificate"):
        signature_check(signer.image(b"data"), source)


def test_no_certificate_directory_says_what_to_configure(certs):
    signer = Signer(certs)
    with pytest.raises(ImageSignatureInvalid, match=r"sets \[image_signature\] certificate_dir"):
        signature_check(signer.image(b"data"), CertificateDirectory(None))


# -- the plugin -----------------------------------------------------------------------------


def configured(conf_opts, **overrides):
    for name, value in overrides.items():
        conf_opts.set_override(name, value, group="image_signature")
    plugin = SignatureVerification()
    plugin.abbild_configure(conf_opts)
    return plugin


@pytest.fixture
def conf():
    from oslo_config import cfg

    from abbild import opts

    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    return conf


def test_uploads_and_staging_are_checked_imported_data_is_not(conf, certs):
    plugin = configured(conf, certificate_dir=str(certs))
    image = Signer(certs).image(b"data")
    assert plugin.abbild_data_checks(image=image, purpose="upload") is not None
    assert plugin.abbild_data_checks(image=image, purpose="stage") is not None
    assert plugin.abbild_data_checks(image=image, purpose="import") is None


def test_key_manager_without_castellan_stops_start_up(conf, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "castellan", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs castellan: pip install 'abbild\[barbican\]'"):
        configured(conf, certificate_source="key_manager")


def test_the_hash_thread_ends_when_an_upload_fails_midway(certs, source):
    check = signature_check(Signer(certs).image(b"data"), source)
    thread = check._thread
    check.feed(b"some")
    del check
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_the_service_refuses_a_bad_signature_keeps_nothing_and_queues_the_image(service, certs):
    """Through Uploads: the refusal comes inside the store's write, so the store
    discards the data, and the image is queued again for a correct upload."""
    service.conf.set_override("certificate_dir", str(certs), group="image_signature")
    service.plugins.hook.abbild_configure.call_historic(kwargs={"conf": service.conf})  # re-read the option
    signer = Signer(certs)
    data = os.urandom(100_000)
    image = service.create(signer.image(data), ADMIN)
    with pytest.raises(ImageSignatureInvalid, match="Signature verification failed"):
        service.uploads.upload(image.id, [data[:50_000], data[50_000:] + b"!"], declared_size=None, viewer=ADMIN)
    assert service.get(image.id, ADMIN).status == Status.QUEUED
    assert service.stores["mem"].driver._objects == {}
    done = service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)
    assert done.status == Status.ACTIVE and done.size == len(data)


def test_the_service_refuses_missing_properties_before_claiming(service, certs):
    service.conf.set_override("certificate_dir", str(certs), group="image_signature")
    image = Signer(certs).image(b"data")
    del image.properties["img_signature"]
    image = service.create(image, ADMIN)
    with pytest.raises(ImageSignatureInvalid, match="but not img_signature"):
        service.uploads.upload(image.id, [b"data"], declared_size=4, viewer=ADMIN)
    assert service.get(image.id, ADMIN).status == Status.QUEUED


def test_hashing_runs_beside_the_stream(certs, source):
    """The check's hash has its own thread (named like ImageStream's)."""
    check = signature_check(Signer(certs).image(b"x"), source)
    assert check._thread.name == "abbild-sha256" and check._thread.is_alive()
    check.feed(b"x")
    check.finish()
    assert not check._thread.is_alive()


# -- certificate validation (enable_certificate_validation) -----------------------------------


class CA:
    """A CA key and certificate in the certificate directory."""

    def __init__(self, certs, name, parent=None, *, ca=True, path_length=None):
        self.key = signing.make_key("ECC_SECP384R1")
        issuer_key = parent.key if parent else self.key
        self.certificate = signing.issue(
            self.key, name, issuer_key, parent.certificate if parent else None, ca=ca, path_length=path_length
        )
        self.uuid = str(uuid.uuid4())
        (certs / f"{self.uuid}.pem").write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))


def signed_by(certs, issuer: CA) -> Signer:
    """A user whose signing certificate *issuer* issued."""
    signer = Signer(certs)
    signer.certificate = signing.issue(signer.key, "image signer", issuer.key, issuer.certificate)
    (certs / f"{signer.certificate_uuid}.pem").write_bytes(signer.certificate.public_bytes(serialization.Encoding.PEM))
    return signer


def test_a_certificate_issued_by_a_trusted_ca_verifies(certs, source):
    root = CA(certs, "root")
    intermediate = CA(certs, "intermediate", root, path_length=0)
    data = os.urandom(1000)
    for issuer in (root, intermediate):
        image = signed_by(certs, issuer).image(data)
        check = signature_check(image, source, trusted_ids=[root.uuid, intermediate.uuid])
        list(ImageStream([data], checks=[check]))


@pytest.mark.parametrize(
    "case",
    ["self-signed", "untrusted root", "intermediate's root not trusted", "path length", "issuer not a CA", "no trust"],
)
def test_a_certificate_not_issued_by_a_trusted_ca_is_refused(certs, source, case):
    root, other_root = CA(certs, "root"), CA(certs, "other root")
    trusted = [root.uuid]
    if case == "self-signed":
        signer = Signer(certs)
    elif case == "untrusted root":
        signer = signed_by(certs, other_root)
    elif case == "intermediate's root not trusted":
        intermediate = CA(certs, "intermediate", other_root)
        signer, trusted = signed_by(certs, intermediate), [intermediate.uuid]
    elif case == "path length":  # root allows no intermediate CA below it
        root = CA(certs, "strict root", path_length=0)
        intermediate = CA(certs, "intermediate", root)
        signer, trusted = signed_by(certs, intermediate), [root.uuid, intermediate.uuid]
    elif case == "issuer not a CA":
        not_ca = CA(certs, "not a ca", ca=False)
        signer, trusted = signed_by(certs, not_ca), [not_ca.uuid]
    else:
        signer, trusted = signed_by(certs, root), [str(uuid.uuid4())]  # a trusted id that is not there
    with pytest.raises(ImageSignatureInvalid, match="is not issued by a certificate this service trusts"):
        signature_check(signer.image(b"data"), source, trusted_ids=trusted)


def test_certificate_validation_needs_trusted_certificates(conf, certs):
    with pytest.raises(ConfigError, match="needs the ids of the trusted certificates"):
        configured(conf, certificate_dir=str(certs), enable_certificate_validation=True)
    root = CA(certs, "root")
    plugin = configured(conf, default_trusted_certificate_ids=[root.uuid])
    data = b"data"
    assert plugin.abbild_data_checks(image=signed_by(certs, root).image(data), purpose="upload") is not None
    with pytest.raises(ImageSignatureInvalid, match="this service trusts"):
        plugin.abbild_data_checks(image=Signer(certs).image(data), purpose="upload")
