"""Signed images: Glance's scheme (the ``cursive`` library's), so images signed for
Glance verify here unchanged.

An image whose properties carry a signature is verified as its data arrives:

- ``img_signature``: the signature, base64;
- ``img_signature_hash_method``: ``SHA-224``, ``SHA-256``, ``SHA-384`` or ``SHA-512``,
  the hash the signature was made over (of the whole data, as uploaded);
- ``img_signature_key_type``: ``RSA-PSS`` (MGF1 with the same hash, the longest salt),
  ``DSA``, or ``ECC_<curve>`` (ECDSA) for the curves the ``cryptography`` library
  supports (of Glance's list, ``SECP384R1`` and ``SECP521R1``: recent ``cryptography``
  dropped the binary ``SECT*`` curves, so cursive no longer offers them either);
- ``img_signature_certificate_uuid``: the X.509 certificate holding the public key, by
  id, from the certificate source (``[image_signature] certificate_source``): a local
  directory of ``<uuid>.pem`` files, or the key manager (Barbican, through castellan).

Like Glance, an image without these properties is not verified. Unlike Glance, an
image with some but not all of them is refused: Glance then skips verification
silently, and the user believes the image is verified when nothing was checked.

The check hashes each chunk as it streams past (:class:`SignatureCheck`, on a thread
beside md5 and os_hash, see :class:`abbild.streams.ImageStream`) and verifies the
signature once the last byte arrived, still inside the store's write: a refusal
(:class:`~abbild.errors.ImageSignatureInvalid`, HTTP 400) makes the store discard the
data and the image returns to ``queued``. Uploads (``PUT .../file``) and staging
(``PUT .../stage``, data an import method fetches into staging) are verified; data an
import step produced (a conversion) is not: the signature covers the original bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import re
import weakref

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa, utils

from abbild import caller
from abbild.errors import ConfigError, ImageSignatureInvalid
from abbild.plugins import hookimpl
from abbild.streams import _DONE, _HashThread

LOG = logging.getLogger(__name__)

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERTIFICATE_UUID = "img_signature_certificate_uuid"
PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERTIFICATE_UUID)

# Glance's names -> the hash, as hashlib (fed on a thread) and as cryptography (to
# verify the finished digest with Prehashed) know it.
HASH_METHODS = {
    "SHA-224": ("sha224", hashes.SHA224()),
    "SHA-256": ("sha256", hashes.SHA256()),
    "SHA-384": ("sha384", hashes.SHA384()),
    "SHA-512": ("sha512", hashes.SHA512()),
}

# Glance's key types -> the public key class the certificate must hold. As in cursive,
# an ECC type names a curve but only the key's class is checked against it.
_GLANCE_CURVES = ("SECT571K1", "SECT409K1", "SECT571R1", "SECT409R1", "SECP521R1", "SECP384R1")
KEY_TYPES: dict[str, type] = {
    "RSA-PSS": rsa.RSAPublicKey,
    "DSA": dsa.DSAPublicKey,
    **{f"ECC_{name}": ec.EllipticCurvePublicKey for name in _GLANCE_CURVES if hasattr(ec, name)},
}

# Barbican's secret ids, and the only names a certificate directory answers to: no
# path of any kind reaches open().
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class CertificateDirectory:
    """Certificates as files ``<uuid>.pem`` (PEM, or DER) in one directory, named by the
    ``img_signature_certificate_uuid`` of the images they sign."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def get(self, certificate_uuid: str) -> x509.Certificate:
        if not self.path:
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: no certificates are configured here "
                f"(an operator sets [image_signature] certificate_dir and puts "
                f"{certificate_uuid}.pem there)"
            )
        path = os.path.join(self.path, f"{certificate_uuid}.pem")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: there is no certificate "
                f"{certificate_uuid} (img_signature_certificate_uuid); an operator adds it "
                f"as {path}"
            ) from None
        try:
            if b"-----BEGIN" in data:
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError as exc:
            LOG.error("certificate %s is not an X.509 certificate: %s", path, exc)
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: certificate {certificate_uuid} is not "
                f"a readable X.509 certificate (PEM or DER)"
            ) from None


class KeyManagerCertificates:
    """Certificates from the key manager (Barbican) through castellan, read with the
    caller's token like Glance does: ``[key_manager]`` and ``[barbican]`` are
    castellan's own options, as in Glance's configuration."""

    def __init__(self, conf) -> None:
        try:
            from castellan import key_manager
            from castellan.common import exception as castellan_errors
        except ImportError:
            raise ConfigError(
                "[image_signature] certificate_source = key_manager needs castellan: "
                "pip install 'abbild[barbican]' (or use certificate_source = directory)"
            ) from None
        self._errors = castellan_errors
        self._api = key_manager.API(conf)

    def get(self, certificate_uuid: str) -> x509.Certificate:
        from oslo_context import context

        viewer = caller.current()
        token = caller.auth_token()
        ctx = context.RequestContext(auth_token=token, project_id=viewer.project_id if viewer else None)
        try:
            secret = self._api.get(ctx, certificate_uuid)
        except self._errors.ManagedObjectNotFoundError:
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: the key manager has no certificate "
                f"{certificate_uuid} (img_signature_certificate_uuid) this user may read"
            ) from None
        except Exception as exc:  # castellan's backends raise their own errors
            LOG.error("reading certificate %s from the key manager failed: %s", certificate_uuid, exc)
            # The detail stays in the log: it may name the key manager's internal endpoint.
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: certificate {certificate_uuid} could "
                f"not be read from the key manager: this user may not read it (a secret of "
                f"another project), or the key manager failed (the service's log says which)"
            ) from None
        if secret.format != "X.509":
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: secret {certificate_uuid} is not a "
                f"certificate (its format is {secret.format}); store it with "
                f"--secret-type certificate"
            )
        try:
            # Barbican keeps the PEM the user stored; castellan hands it out as DER.
            return x509.load_der_x509_certificate(secret.get_encoded())
        except ValueError:
            raise ImageSignatureInvalid(
                f"Cannot verify the image's signature: secret {certificate_uuid} is not an X.509 certificate"
            ) from None


class SignatureCheck:
    """Hashes the data as it streams past, on a thread (hashlib releases the GIL, so the
    hash runs on another core beside md5 and os_hash), and verifies the signature over
    the digest when the data is complete."""

    def __init__(self, image_id: str, signature: bytes, hash_method: str, key_type: str, certificate_uuid: str, key):
        self.image_id, self.key_type, self.certificate_uuid = image_id, key_type, certificate_uuid
        self.hash_method = hash_method
        self._signature, self._key = signature, key
        algorithm, self._prehashed = HASH_METHODS[hash_method]
        self._thread = _HashThread(algorithm)
        self._thread.start()
        # An upload that fails before finish() never feeds the end marker: let the
        # thread go once nobody holds the check any more.
        self._release = weakref.finalize(self, self._thread.queue.put, _DONE)

    def feed(self, chunk: bytes) -> None:
        self._thread.queue.put(chunk)

    def finish(self) -> dict:
        self._release.detach()
        digest = bytes.fromhex(self._thread.finish())
        key, prehashed = self._key, utils.Prehashed(self._prehashed)
        try:
            if isinstance(key, rsa.RSAPublicKey):
                pss = padding.PSS(mgf=padding.MGF1(self._prehashed), salt_length=padding.PSS.MAX_LENGTH)
                key.verify(self._signature, digest, pss, prehashed)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(self._signature, digest, ec.ECDSA(prehashed))
            else:
                key.verify(self._signature, digest, prehashed)
        except (InvalidSignature, ValueError):
            LOG.info("image %s: signature verification failed", self.image_id)
            raise ImageSignatureInvalid(
                f"Signature verification failed: the data does not match the image's "
                f"img_signature ({self.key_type}, {self.hash_method}, certificate "
                f"{self.certificate_uuid}). Sign exactly the bytes you upload with the "
                f"private key of that certificate, or correct the image's img_signature "
                f"properties; nothing was stored"
            ) from None
        LOG.info("image %s: signature verified (certificate %s)", self.image_id, self.certificate_uuid)
        return {}


def signature_check(
    image, certificates, now: datetime.datetime | None = None, trusted_ids: list[str] | None = None
) -> SignatureCheck | None:
    """The check of *image*'s signature, ``None`` for an unsigned image.

    Everything that can be checked before the data arrives is checked here (all four
    properties, the hash method and key type, the signature's encoding, the
    certificate's presence, dates and key), so a bad request fails before a byte is
    stored.

    :param certificates: a :class:`CertificateDirectory` or :class:`KeyManagerCertificates`.
    :param trusted_ids: with certificate validation on, the ids of the trusted
        certificates (from the same source) the signing certificate must chain to.
    :raises abbild.errors.ImageSignatureInvalid: the signature cannot be checked.
    """
    props = image.properties
    present = [name for name in PROPERTIES if props.get(name) not in (None, "")]
    if not present:
        return None
    missing = [name for name in PROPERTIES if name not in present]
    if missing:
        raise ImageSignatureInvalid(
            f"Cannot verify the image's signature: it has {', '.join(present)} but not "
            f"{', '.join(missing)}. Set all four img_signature properties, or remove them "
            f"for an unsigned image"
        )
    hash_method, key_type, certificate_uuid = props[HASH_METHOD], props[KEY_TYPE], props[CERTIFICATE_UUID]
    if hash_method not in HASH_METHODS:
        raise ImageSignatureInvalid(
            f"Invalid img_signature_hash_method {hash_method!r}: use one of {', '.join(HASH_METHODS)}"
        )
    if key_type not in KEY_TYPES:
        raise ImageSignatureInvalid(f"Invalid img_signature_key_type {key_type!r}: use one of {', '.join(KEY_TYPES)}")
    try:
        # Like cursive: characters outside the alphabet (line breaks of `base64`) are skipped.
        signature = base64.b64decode(props[SIGNATURE])
    except (binascii.Error, ValueError):
        raise ImageSignatureInvalid(
            "Invalid img_signature: it is not base64; encode the signature file with `base64 -w 0`"
        ) from None
    if not _UUID.fullmatch(certificate_uuid):
        raise ImageSignatureInvalid(
            f"Invalid img_signature_certificate_uuid {certificate_uuid!r}: it must be the "
            f"certificate's uuid (like 0f1b5c8e-5b4c-4e4b-9a58-3c2c6c1c9b2a)"
        )
    if certificates is None:
        raise ImageSignatureInvalid("Cannot verify the image's signature: this service has no certificate source")
    certificate = certificates.get(certificate_uuid)
    check_dates(certificate, certificate_uuid, now)
    if trusted_ids is not None:
        check_trust(certificate, certificate_uuid, certificates, trusted_ids, now)
    try:
        key = certificate.public_key()
    except UnsupportedAlgorithm:
        raise ImageSignatureInvalid(
            f"Cannot verify the image's signature: the key of certificate {certificate_uuid} "
            f"is of a kind this service cannot use (use RSA, DSA, or an ECC key on SECP384R1 "
            f"or SECP521R1)"
        ) from None
    if not isinstance(key, KEY_TYPES[key_type]):
        raise ImageSignatureInvalid(
            f"Invalid img_signature_key_type {key_type!r}: certificate {certificate_uuid} holds a {_key_kind(key)} key"
        )
    return SignatureCheck(image.id, signature, hash_method, key_type, certificate_uuid, key)


def check_dates(certificate: x509.Certificate, certificate_uuid: str, now: datetime.datetime | None = None) -> None:
    """Refuse a certificate outside its validity period (as cursive used to do)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < certificate.not_valid_before_utc:
        raise ImageSignatureInvalid(
            f"Cannot verify the image's signature: certificate {certificate_uuid} is not "
            f"valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now > certificate.not_valid_after_utc:
        raise ImageSignatureInvalid(
            f"Cannot verify the image's signature: certificate {certificate_uuid} expired "
            f"on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; sign the image "
            f"with a valid certificate"
        )


def check_trust(certificate, certificate_uuid: str, certificates, trusted_ids, now=None) -> None:
    """Refuse a signing certificate that does not chain to a trusted certificate (cursive's
    certificate validation, as Nova's ``enable_certificate_validation`` uses it): each
    link is issued (names and signature) by a trusted certificate that is within its
    dates, is a CA allowed to sign certificates, and whose path length allows the
    certificates below it; the chain ends at a trusted self-signed certificate. A
    trusted certificate that cannot be read or is unfit for signing is skipped, with a
    warning in the log."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    signers = []
    for trusted_id in trusted_ids:
        try:
            trusted = certificates.get(trusted_id)
        except ImageSignatureInvalid as exc:
            LOG.warning("trusted certificate %s skipped: %s", trusted_id, exc)
            continue
        if not trusted.not_valid_before_utc <= now <= trusted.not_valid_after_utc:
            LOG.warning("trusted certificate %s skipped: outside its validity period", trusted_id)
        elif not _can_sign(trusted):
            LOG.warning("trusted certificate %s skipped: not a CA allowed to sign certificates", trusted_id)
        else:
            signers.append(trusted)
    current, below = certificate, 0
    for _ in range(len(signers) + 1):
        if current.issuer == current.subject and current in signers:
            return  # a trusted root (or the signing certificate itself, trusted)
        issuer = next((c for c in signers if c != current and _issued_by(current, c)), None)
        if issuer is None:
            break
        path_length = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if current is not certificate:
            below += 1  # an intermediate CA under the issuer
        if path_length is not None and below > path_length:
            break
        current = issuer
    raise ImageSignatureInvalid(
        f"Cannot verify the image's signature: certificate {certificate_uuid} is not issued "
        f"by a certificate this service trusts ([image_signature] default_trusted_certificate_ids)"
    )


def _can_sign(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and usage.key_cert_sign


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _key_kind(key) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA (key type RSA-PSS)"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA (key type DSA)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECC (key type ECC_{key.curve.name.upper()})"
    return type(key).__name__


def certificate_source(conf):
    """The certificate source ``[image_signature] certificate_source`` names."""
    group = conf.image_signature
    if group.certificate_source == "key_manager":
        return KeyManagerCertificates(conf)
    return CertificateDirectory(group.certificate_dir)


class SignatureVerification:
    """Built-in: verifies signed images as their data arrives (the ``abbild_data_checks``
    hook); its certificate source comes from the configuration."""

    def __init__(self) -> None:
        self.certificates = None
        self.trusted_ids: list[str] | None = None  # None: no certificate validation

    @hookimpl
    def abbild_configure(self, conf):
        self.certificates = certificate_source(conf)
        group = conf.image_signature
        if group.enable_certificate_validation:
            if not group.default_trusted_certificate_ids:
                raise ConfigError(
                    "[image_signature] enable_certificate_validation needs the ids of the "
                    "trusted certificates in default_trusted_certificate_ids"
                )
            self.trusted_ids = list(group.default_trusted_certificate_ids)

    @hookimpl
    def abbild_data_checks(self, image, purpose):
        if purpose not in ("upload", "stage"):
            return None  # data an import step produced: the signature covers the original
        return signature_check(image, self.certificates, trusted_ids=self.trusted_ids)
