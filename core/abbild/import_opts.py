"""Options of interoperable image import (staging, the import methods, the steps), in
the names and groups Glance uses, so that operators' configs carry over. Imports only
oslo.config: :mod:`abbild.opts` registers and lists them."""

from __future__ import annotations

from oslo_config import cfg

#: The reserved stores of import: never listed in /v2/info/stores, never a download location.
STAGING_GROUP = "os_glance_staging_store"
WEB_DOWNLOAD_GROUP = "os_glance_web_download"
IMPORT_GROUP = "image_import_opts"
FILTERING_GROUP = "import_filtering_opts"

METHOD_NAMES = ("glance-direct", "web-download", "copy-image", "glance-download")

import_opts = [
    cfg.ListOpt(
        "enabled_import_methods",
        default=["glance-direct", "web-download", "copy-image"],
        item_type=cfg.types.String(choices=METHOD_NAMES),
        help="Import methods (POST /v2/images/{id}/import) this service offers, listed in "
        "/v2/info/import: ``glance-direct`` (data staged with PUT /v2/images/{id}/stage), "
        "``web-download`` (the service fetches a URL, through the same guard as the http "
        "store: see [os_glance_web_download]), ``copy-image`` (an active image to more "
        "stores; administrators by default) and ``glance-download`` (from another region's "
        "image service). Without ``glance-direct`` PUT /v2/images/{id}/stage answers 404.",
    ),
    cfg.StrOpt(
        "node_staging_uri",
        default="file:///tmp/staging/",
        help="Where this node stages image data on its way to the stores (a ``file://`` "
        "directory), unless [os_glance_staging_store] names another driver. Staged data "
        "waits here until it is imported, so give it room for the largest images you "
        "accept; ``abbild serve`` puts it in its data directory.\n\n"
        "Related options: [os_glance_staging_store] driver, worker_self_reference_url",
    ),
]

staging_opts = [
    cfg.StrOpt(
        "driver",
        default="filesystem",
        help="Store driver of the staging area. ``filesystem`` (the default) stages at "
        "node_staging_uri; another driver (``s3``, say) takes its options from this group, "
        "like any store's, and lets every API node import what any of them staged.",
    ),
    cfg.BoolOpt(
        "shared",
        help="Whether every API node sees the same staging area. Unset: true for every "
        "driver but ``filesystem``. When it is not shared, a glance-direct import that "
        "reaches another node than the one that staged the data is passed on to that node "
        "(its worker_self_reference_url, recorded in the image's os_glance_stage_host).",
    ),
]

image_import_opts = [
    cfg.ListOpt(
        "image_import_plugins",
        default=[],
        help="Import steps run, in this order, on the staged data of every import but "
        "copy-image, for example ``image_decompression, image_conversion``. The names are "
        "those installed plugins offer (the abbild_import_steps hook); an unknown name "
        "stops the service at start-up.",
    ),
]

# Glance's names for the web-download URL filter; they set the options of the same
# meaning in [os_glance_web_download] (the http store's guard).
web_download_deprecated = {
    "allowed_schemes": "allowed_schemes",
    "allowed_hosts": "allowed_hosts",
    "denied_hosts": "disallowed_hosts",
    "allowed_ports": "allowed_ports",
    "denied_ports": "disallowed_ports",
}


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(import_opts)
    conf.register_opts(staging_opts, group=STAGING_GROUP)
    conf.register_opts(image_import_opts, group=IMPORT_GROUP)


def list_opts():
    return [("DEFAULT", import_opts), (STAGING_GROUP, staging_opts), (IMPORT_GROUP, image_import_opts)]
