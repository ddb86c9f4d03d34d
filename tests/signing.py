"""Keys, self-signed certificates and signatures for the signed-image tests, made with
``cryptography`` the way a user's openssl makes them (Glance's scheme: RSA-PSS with MGF1
and the longest salt, DSA, ECDSA; the signature over the whole data)."""

from __future__ import annotations

import base64
import datetime
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import NameOID

from abbild.image import Image

NOW = datetime.datetime.now(datetime.timezone.utc)
HASHES = {
    "SHA-224": hashes.SHA224(),
    "SHA-256": hashes.SHA256(),
    "SHA-384": hashes.SHA384(),
    "SHA-512": hashes.SHA512(),
}


def make_key(key_type: str):
    if key_type == "RSA-PSS":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "DSA":
        return dsa.generate_private_key(key_size=2048)
    return ec.generate_private_key(getattr(ec, key_type.removeprefix("ECC_"))())


def make_certificate(key, *, not_before=None, not_after=None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "image signer")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=14))
        .sign(key, hashes.SHA256())
    )


def issue(key, name: str, issuer_key, issuer: x509.Certificate | None = None, *, ca=False, path_length=None):
    """A certificate for *key* named *name*, issued by *issuer* (self-signed without one);
    a CA (basic constraints, key_cert_sign) with *ca*."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=14))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        usage = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment"), False)
        usage |= dict.fromkeys(("key_agreement", "encipher_only", "decipher_only", "crl_sign"), False)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, **usage), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def sign(key, data: bytes, hash_method: str = "SHA-256") -> str:
    """The ``img_signature`` of *data*: base64 of the signature."""
    algorithm = HASHES[hash_method]
    if isinstance(key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.MAX_LENGTH)
        signature = key.sign(data, pss, algorithm)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(algorithm))
    else:
        signature = key.sign(data, algorithm)
    return base64.b64encode(signature).decode()


class Signer:
    """One user's key and certificate, and the images they sign. With *certs* (a
    directory), the certificate is put there as ``<uuid>.pem``."""

    def __init__(self, certs=None, key_type="RSA-PSS", **dates):
        self.key_type = key_type
        self.key = make_key(key_type)
        self.certificate_uuid = str(uuid.uuid4())
        self.certificate = make_certificate(self.key, **dates)
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        if certs is not None:
            (certs / f"{self.certificate_uuid}.pem").write_bytes(self.pem)

    def properties(self, data: bytes, hash_method="SHA-256", **override) -> dict:
        props = {
            "img_signature": sign(self.key, data, hash_method),
            "img_signature_hash_method": hash_method,
            "img_signature_key_type": self.key_type,
            "img_signature_certificate_uuid": self.certificate_uuid,
        }
        props.update(override)
        return props

    def image(self, data: bytes, hash_method="SHA-256", **override) -> Image:
        props = self.properties(data, hash_method, **override)
        return Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", properties=props)
