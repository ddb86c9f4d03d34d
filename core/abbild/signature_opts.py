"""Options of signed-image verification (:mod:`abbild.signatures`). Imports only
oslo.config: :mod:`abbild.opts` registers and lists them."""

from __future__ import annotations

from oslo_config import cfg

GROUP = "image_signature"

signature_opts = [
    cfg.StrOpt(
        "certificate_source",
        default="directory",
        choices=[
            ("directory", "certificates are ``<uuid>.pem`` files in certificate_dir"),
            ("key_manager", "certificates are secrets in the key manager (Barbican), read through castellan"),
        ],
        help="Where the certificates of signed images come from. An image is verified "
        "as its data arrives when it has the properties img_signature, "
        "img_signature_hash_method, img_signature_key_type and "
        "img_signature_certificate_uuid (Glance's); the last one names its certificate. "
        "``key_manager`` reads it with the uploading user's token, as Glance does, and "
        "needs castellan installed, configured in castellan's own groups ``[key_manager]`` "
        "(``backend = barbican``) and ``[barbican]``, as in Glance's configuration.\n\n"
        "Related options: certificate_dir",
    ),
    cfg.StrOpt(
        "certificate_dir",
        help="Directory of the certificates signed images name (certificate_source = "
        "directory): one X.509 certificate per file, PEM or DER, named "
        "``<img_signature_certificate_uuid>.pem``. Only uuids are looked up, so no "
        "image property can name another file. Unset: signed images are refused with "
        "400, since nothing can verify them. The embedded service (`abbild serve` "
        "without a config) uses ``<data dir>/certificates``.",
    ),
    cfg.BoolOpt(
        "enable_certificate_validation",
        default=False,
        help="Also require the certificate of a signed image to be issued by one of "
        "default_trusted_certificate_ids (cursive's certificate validation, Nova's option "
        "name): each certificate of the chain within its dates, the issuers CAs allowed "
        "to sign certificates, path lengths kept. Off (Glance's behaviour): any "
        "certificate the source holds, within its dates, may sign images.\n\n"
        "Related options: default_trusted_certificate_ids",
    ),
    cfg.ListOpt(
        "default_trusted_certificate_ids",
        default=[],
        help="Ids of the certificates (in the certificate source) that image signing "
        "certificates must chain to when enable_certificate_validation is on: root CAs, "
        "and the intermediate CAs between them and the signing certificates.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(signature_opts, group=GROUP)


def list_opts():
    return [(GROUP, signature_opts)]
