"""Options of the s3 store. Imports only oslo.config, so ``list_opts()`` works
without boto3."""

from __future__ import annotations

from oslo_config import cfg

# S3's own limits: every part but the last is at least 5 MiB, at most 10 000 parts.
MIN_PART_SIZE_MIB = 5

OPTS = [
    cfg.StrOpt(
        "endpoint_url",
        help="""
URL of the S3 service, for example http://127.0.0.1:7480 for a Ceph radosgw.

Possible values:
    * an http:// or https:// URL, without a path
    * unset: Amazon S3 itself (the endpoint of region_name)

Related options:
    * region_name
    * addressing_style
""",
    ),
    cfg.StrOpt(
        "region_name",
        default="us-east-1",
        help="""
Region the bucket lives in; part of every request signature (SigV4).

Possible values:
    * a region name; S3-compatible services such as radosgw accept us-east-1

Related options:
    * endpoint_url
""",
    ),
    cfg.StrOpt(
        "addressing_style",
        default="auto",
        choices=[
            ("auto", "let boto3 choose"),
            ("path", "http://host/bucket/key, for most S3-compatible services"),
            ("virtual", "http://bucket.host/key, needs DNS for every bucket"),
        ],
        help="How the bucket appears in request URLs.",
    ),
    cfg.StrOpt(
        "access_key",
        help="""
Access key ID of the S3 user.

Possible values:
    * the access key; set secret_key with it
    * unset: boto3's usual sources (environment, ~/.aws, an instance role)

Related options:
    * secret_key
""",
    ),
    cfg.StrOpt(
        "secret_key",
        secret=True,
        help="""
Secret access key of the S3 user. Never part of an image location.

Related options:
    * access_key
""",
    ),
    cfg.StrOpt(
        "bucket",
        help="""
Bucket that holds the image data; required. Objects are named after the image ID.

Related options:
    * create_bucket
""",
    ),
    cfg.BoolOpt(
        "create_bucket",
        default=False,
        help="""
Create the bucket on the first upload (or check) when it does not exist.

Possible values:
    * False: a missing bucket is an error that names it (default)
    * True: create it in region_name

Related options:
    * bucket
""",
    ),
    cfg.IntOpt(
        "large_object_size",
        default=16,
        min=0,
        help="""
Size in MiB from which uploads use a multipart upload instead of a single PUT.

Uploads of unknown size (chunked requests) read up to this much first: if the
image ends there, it goes in one PUT, else it continues as a multipart upload.
A single PUT holds the whole image in memory, so this bounds the memory an
upload uses, together with large_object_part_size.

Possible values:
    * 0 or more; 0 sends every image as a multipart upload

Related options:
    * large_object_part_size
""",
    ),
    cfg.IntOpt(
        "large_object_part_size",
        default=8,
        min=MIN_PART_SIZE_MIB,
        help="""
Size in MiB of each part of a multipart upload. An upload holds at most
(large_object_upload_threads + 1) parts in memory: those being sent and the one
being filled.

Images of known size larger than 10 000 parts get parts just large enough.
Uploads of unknown size keep it for 2 000 parts (16 GiB in 8 MiB parts), then
double it every 1 000 parts, so even an 8 MiB part reaches the S3 limit of
10 000 parts only beyond 3.9 TiB.

Possible values:
    * 5 (the S3 minimum) or more

Related options:
    * large_object_size
    * large_object_upload_threads
""",
    ),
    cfg.IntOpt(
        "large_object_upload_threads",
        default=4,
        min=1,
        max=64,
        help="""
How many parts of one multipart upload are sent at the same time.

Memory bound: an upload holds at most (large_object_upload_threads + 1) x
large_object_part_size in memory, the parts in flight plus the one being filled
(40 MiB with the defaults). A part that fails, or an upload whose client goes
away, aborts the whole multipart upload once the parts in flight have ended.

Possible values:
    * 1: one part at a time (2 parts in memory)
    * more: faster to services that take parts in parallel, as S3 and radosgw do

Related options:
    * large_object_part_size
""",
    ),
    cfg.StrOpt(
        "ca_file",
        help="""
CA bundle to verify an https endpoint_url with.

Possible values:
    * a path to a PEM file
    * unset: the system's CA certificates
""",
    ),
    cfg.FloatOpt(
        "connect_timeout",
        default=10.0,
        min=0.1,
        help="Seconds to wait for a connection to the endpoint before the store is reported unavailable.",
    ),
    cfg.FloatOpt(
        "read_timeout",
        default=60.0,
        min=0.1,
        help="Seconds to wait for the endpoint to answer a request.",
    ),
    cfg.IntOpt(
        "max_attempts",
        default=3,
        min=1,
        help="""
How many times to try a request that failed in a way worth retrying
(connection errors, throttling, 5xx).
""",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``s3`` (operators copy them into the group named after their store)."""
    return [("s3", OPTS)]
