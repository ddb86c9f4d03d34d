"""Options of the vmware store. Imports only oslo.config, so that oslo-config-generator
can list them without loading the driver."""

from __future__ import annotations

from oslo_config import cfg

OPTS = [
    cfg.HostAddressOpt(
        "host",
        help="""
Host name or IP address of the vCenter Server or ESXi host.

The service logs in there (SOAP, ``/sdk``) and moves image data through its
datastore file interface (``https://<host>/folder/...``). Required.

Possible values:
    * A host name or IP address, for example ``vcenter.example.com``

Related options:
    * port, user, password, datastores
""",
    ),
    cfg.PortOpt("port", default=443, help="HTTPS port of ``host`` (default 443)."),
    cfg.StrOpt(
        "user",
        help="""
User the service logs in as, for example ``svc-images@vsphere.local``. Required.

It needs the Datastore > Browse datastore and Datastore > Low level file
operations privileges on the configured datastores.

Related options:
    * password
""",
    ),
    cfg.StrOpt("password", secret=True, help="Password of ``user``. Required."),
    cfg.ListOpt(
        "datastores",
        default=[],
        help="""
Datastores that hold image data, as ``<datacenter path>:<datastore name>[:<weight>]``.

Uploads go to the datastore with the highest weight (0 when left out; on a
tie, the first listed) that has not answered "full" within the last
``full_retry_interval`` seconds. Downloads and deletes use the datastore
named in each image's location, configured here or not. Required.

Possible values:
    * A list, for example ``dc1:fast-ds:100, dc1:slow-ds:10, east/dc2:ds3``

Related options:
    * full_retry_interval, image_dir
""",
    ),
    cfg.StrOpt(
        "image_dir",
        default="/openstack_glance",
        help="""
Directory on each datastore that holds the image files; created on the first
upload. The default is Glance's, so a store can take over Glance's images.

Possible values:
    * A path from the datastore root, for example ``/abbild``

Related options:
    * datastores
""",
    ),
    cfg.IntOpt(
        "full_retry_interval",
        default=300,
        min=0,
        help="""
Seconds a datastore that answered "full" is passed over by uploads.

Possible values:
    * 0: try the heaviest datastore every time
    * A positive integer (default 300)

Related options:
    * datastores
""",
    ),
    cfg.StrOpt(
        "ca_file",
        help="""
File of PEM certificates that the server's certificate must chain to; unset,
the system's trusted certificates are used. vCenter's own CA certificate can
be downloaded from ``https://<vcenter>/certs/download.zip``.

Related options:
    * insecure
""",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="""
Skip verifying the server's certificate. Anyone on the path can then read the
password and change image data in flight. Prefer ``ca_file``.

Related options:
    * ca_file
""",
    ),
    cfg.FloatOpt("connect_timeout", default=10.0, min=0.1, help="Seconds to wait for a connection."),
    cfg.FloatOpt(
        "read_timeout",
        default=300.0,
        min=0.1,
        help="Seconds to wait for the server between two pieces of a response (an upload's "
        "answer may take a while when the datastore is busy).",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=1 << 20,
        min=4096,
        help="Size, in bytes, of the pieces a download is read in (default 1 MiB).",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``vmware`` (operators copy them into the group named after their store)."""
    return [("vmware", OPTS)]
