"""Options of the filesystem store. Imports only oslo.config, so that
oslo-config-generator can list them without loading the driver."""

from __future__ import annotations

from oslo_config import cfg

OPTS = [
    cfg.StrOpt(
        "datadir",
        help="""
Directory that holds this store's image data, one file per image.

The directory is created at start-up if it does not exist. The service
refuses to start if this option is unset or names something that is not a
directory. If the service cannot write to the directory, the store still
serves downloads but refuses uploads and deletes; a warning in the log says
why. Do not share one directory between two stores.

Possible values:
    * An absolute path, for example ``/var/lib/abbild/images``

Related options:
    * file_perm
""",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=1 << 20,
        min=4096,
        help="""
Size, in bytes, of the blocks read from disk when serving a download.

Larger blocks mean fewer system calls and more memory per download in flight.

Possible values:
    * An integer of at least 4096 (default 1048576, 1 MiB)

Related options:
    * None
""",
    ),
    cfg.IntOpt(
        "file_perm",
        default=0,
        min=0,
        max=777,
        help="""
Permission bits of stored image files, written as octal digits.

Set this when another service reads the files directly, for example
``640`` to let a group read them. The file owner stays the user the service
runs as.

Possible values:
    * 0: leave the permissions to the process umask (default)
    * Three octal digits (0-7 each), for example 640 or 600

Related options:
    * datadir
""",
    ),
    cfg.BoolOpt(
        "fsync",
        default=True,
        help="""
Flush each stored file and its directory to disk before an upload succeeds.

With this off, uploads finish sooner, but an image marked active may lose its
data in a power cut or a kernel crash. Turn it off only for scratch stores.

Possible values:
    * True: an image is durable once its upload succeeds (default)
    * False: skip the flushes

Related options:
    * None
""",
    ),
    cfg.BoolOpt(
        "direct_io",
        default=True,
        help="""
Write image data with O_DIRECT, past the page cache.

Images are large and written once: caching them only pushes useful pages out
of memory, and on virtual machines filling fresh page cache costs several
seconds of CPU per GiB. With O_DIRECT the disk takes the data straight from an
aligned buffer. Filesystems without O_DIRECT (tmpfs, some network filesystems)
get ordinary buffered writes automatically.

Possible values:
    * True: write with O_DIRECT where the filesystem supports it (default)
    * False: always write through the page cache

Related options:
    * fsync
""",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``filesystem`` (operators copy them into the group named after their store)."""
    return [("filesystem", OPTS)]
