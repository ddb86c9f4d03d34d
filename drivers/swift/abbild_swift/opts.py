"""Options of the swift store. Imports only oslo.config, so that
oslo-config-generator can list them without loading swiftclient."""

from __future__ import annotations

from oslo_config import cfg

OPTS = [
    cfg.StrOpt(
        "auth_version",
        default="3",
        choices=[("1", "Swift's own v1 auth (tempauth, swauth)"), ("3", "Keystone Identity v3")],
        help="""
How the store logs in to Swift.

Possible values:
    * 3: Keystone v3 (default); the storage URL comes from Keystone's catalog
    * 1: Swift's v1 auth (tempauth and the like); ``user`` is ``account:user``

Related options:
    * auth_address, user, key, project_name, project_domain_name,
      user_domain_name, region_name, endpoint_type
""",
    ),
    cfg.StrOpt(
        "auth_address",
        help="""
Where the store logs in: Keystone's v3 URL (``auth_version = 3``, for example
``https://keystone.example.org:5000/v3``) or Swift's v1 auth URL
(``auth_version = 1``, for example ``http://swift.example.org:8080/auth/v1.0``).
Required.

Related options:
    * auth_version, ca_file, insecure
""",
    ),
    cfg.StrOpt(
        "user",
        help="""
The user the store logs in as: a Keystone user name, or ``account:user`` for
v1 auth. Required. With Keystone, the user needs an operator role of the Swift
cluster (usually ``member`` or ``admin``) on ``project_name``.

Related options:
    * key, auth_version
""",
    ),
    cfg.StrOpt("key", secret=True, help="The password or key of ``user``. Required."),
    cfg.StrOpt(
        "project_name",
        help="""
The Keystone project whose Swift account holds the data (``auth_version = 3``
only, where it is required).

Related options:
    * project_domain_name
""",
    ),
    cfg.StrOpt("project_domain_name", default="Default", help="Domain of ``project_name`` (auth_version 3)."),
    cfg.StrOpt("user_domain_name", default="Default", help="Domain of ``user`` (auth_version 3)."),
    cfg.StrOpt(
        "region_name",
        help="""
Region of the Swift endpoint to pick from Keystone's catalog, when the catalog
has more than one (auth_version 3). Unset: the first one.
""",
    ),
    cfg.StrOpt(
        "endpoint_type",
        default="publicURL",
        choices=["publicURL", "internalURL", "adminURL"],
        help="Which interface of the Swift endpoint in Keystone's catalog to use (auth_version 3).",
    ),
    cfg.StrOpt(
        "service_type",
        default="object-store",
        help="Service type of Swift in Keystone's catalog (auth_version 3).",
    ),
    cfg.StrOpt(
        "container",
        default="abbild",
        regex=r"^[A-Za-z0-9_.-]{1,200}$",
        help="""
The Swift container that holds the image data (or, with
multiple_containers_seed, the first part of the containers' names).

Possible values:
    * Up to 200 letters, digits, '_', '.' and '-' (default ``abbild``)

Related options:
    * multiple_containers_seed, create_container_on_put
""",
    ),
    cfg.IntOpt(
        "multiple_containers_seed",
        default=0,
        min=0,
        max=32,
        help="""
Spread images over many containers: each image goes to the container
``<container>_<the first N characters of its id>``. Large single containers
get slow in Swift; with N = 2 and UUID image ids there are up to 256.

Changing N later leaves existing images where they are (their URIs name the
container), so it is safe.

Possible values:
    * 0: one container (default)
    * 1 to 32

Related options:
    * container, create_container_on_put
""",
    ),
    cfg.BoolOpt(
        "create_container_on_put",
        default=True,
        help="""
Create a missing container on the first upload into it. Turn this off if the
containers are provisioned separately; an upload into a missing container then
fails with a message naming it.

Related options:
    * container, multiple_containers_seed
""",
    ),
    cfg.IntOpt(
        "large_object_size",
        default=5 * 1024,
        min=1,
        help="""
Images of this size, in MiB, or larger are uploaded in segments and joined by
a manifest (see large_object_manifest); smaller ones with a single PUT. Uploads
of unknown size (chunked transfer) are always segmented. Keep it at or below
the cluster's ``max_file_size`` (5 GiB by default).

Possible values:
    * A positive integer (default 5120, 5 GiB)

Related options:
    * large_object_chunk_size, large_object_manifest
""",
    ),
    cfg.IntOpt(
        "large_object_chunk_size",
        default=200,
        min=1,
        max=5 * 1024,
        help="""
Size, in MiB, of the segments of a large image. Segments stream through
without being held in memory. Larger images get larger segments where needed
to stay within 1000 segments (Swift's default limit of an SLO manifest).

Possible values:
    * 1 to 5120 (default 200)

Related options:
    * large_object_size
""",
    ),
    cfg.StrOpt(
        "large_object_manifest",
        default="slo",
        choices=[
            ("slo", "static large object: a manifest listing every segment with its size and ETag"),
            ("dlo", "dynamic large object: a manifest naming the segments' prefix"),
        ],
        help="""
How the segments of a large image are joined. SLO (default) is checked by
Swift at upload time and immune to listing delays; DLO is for clusters without
the SLO middleware.

Related options:
    * large_object_size
""",
    ),
    cfg.StrOpt(
        "ca_file",
        help="""
CA bundle to verify the TLS certificates of Keystone and Swift with. Unset:
the system's trusted CAs.

Related options:
    * insecure
""",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="Skip TLS certificate verification (for tests only; never in production).",
    ),
    cfg.IntOpt("timeout", default=60, min=1, help="Seconds to wait for any answer from Keystone or Swift."),
    cfg.IntOpt(
        "retries",
        default=2,
        min=0,
        help="""
How often a failed request that is safe to repeat (not a streamed upload) is
retried, after 0.5 s, then twice as long each time.
""",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=1 << 20,
        min=4096,
        help="Size, in bytes, of the chunks a download is read and sent in (default 1048576, 1 MiB).",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``swift`` (operators copy them into the group named after their store)."""
    return [("swift", OPTS)]
