"""Options of the rbd store. Imports only oslo.config, so ``list_opts()`` works
without Ceph's Python modules."""

from __future__ import annotations

from oslo_config import cfg

OPTS = [
    cfg.StrOpt(
        "pool",
        default="images",
        help="""
RADOS pool that holds the images, initialised for RBD.

Possible values:
    * the name of an existing pool (create one with
      ``ceph osd pool create images && rbd pool init images``)

Related options:
    * user
""",
    ),
    cfg.StrOpt(
        "user",
        help="""
Ceph client (cephx user) to connect as, without the ``client.`` prefix.

Possible values:
    * a user name, for example ``glance``; it needs ``profile rbd`` on the pool
    * unset: librados's default, ``admin``

Related options:
    * keyring
    * ceph_conf
""",
    ),
    cfg.StrOpt(
        "ceph_conf",
        default="",
        help="""
Path of the Ceph configuration file with the monitors' addresses.

Possible values:
    * a path
    * empty: librados's search ($CEPH_CONF, /etc/ceph/ceph.conf, ~/.ceph/config)

Related options:
    * keyring
""",
    ),
    cfg.StrOpt(
        "keyring",
        help="""
Path of the keyring holding the user's key.

Possible values:
    * a path
    * unset: what ceph_conf says (by default /etc/ceph/ceph.client.<user>.keyring)

Related options:
    * user
    * ceph_conf
""",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=8,
        choices=[1, 2, 4, 8, 16, 32],
        help="""
Size in MiB of the RADOS objects each image is split into. Reads and writes go
in pieces of 4 MiB, or of the object size if it is smaller (see ios_in_flight
for the memory that takes).

Pieces that are all zeros are not written at all: the image stays thin.

Possible values:
    * a power of two from 1 to 32 (RBD object orders 20 to 25)

Related options:
    * ios_in_flight
""",
    ),
    cfg.IntOpt(
        "ios_in_flight",
        default=6,
        min=1,
        max=32,
        help="""
How many writes (uploads) or reads (downloads) of one transfer, each of 4 MiB
(or chunk_size, if smaller), are under way at the same time, so that the OSDs
work on several at once.

Memory bound: a download holds at most (ios_in_flight + 1) x 4 MiB, the reads in
flight plus the piece being sent (28 MiB with the default); an upload
(2 x ios_in_flight + 1) x 4 MiB, as each write in flight holds a copy of its
piece and librbd copies it once more (52 MiB).

Possible values:
    * 1: one request at a time
    * more: faster on clusters with several OSDs or fast disks

Related options:
    * chunk_size
""",
    ),
    cfg.IntOpt(
        "connect_timeout",
        default=30,
        min=0,
        help="""
Seconds to wait for the cluster's monitors when connecting, and for each monitor
command, before the store is reported unavailable.

Possible values:
    * a number of seconds; 0 waits forever

Related options:
    * op_timeout
""",
    ),
    cfg.IntOpt(
        "op_timeout",
        default=60,
        min=0,
        help="""
Seconds each read or write of a piece may wait for the OSDs (placement groups
that are down or peering, say) before the transfer fails with "store
unavailable". A full pool or cluster is not waited for: the upload fails at once
with "store full" (413).

Possible values:
    * a number of seconds; 0 waits forever

Related options:
    * connect_timeout
""",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``rbd`` (operators copy them into the group named after their store)."""
    return [("rbd", OPTS)]
