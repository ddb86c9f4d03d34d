"""Core options, and ``list_opts()`` for oslo-config-generator."""

from __future__ import annotations

from oslo_config import cfg

from abbild import import_opts, signature_opts

store_opts = [
    cfg.DictOpt(
        "enabled_backends",
        default={"local": "filesystem"},
        help="Stores this service uses, as ``name:driver`` pairs, for example "
        "``fast:rbd, local:filesystem``. Each name gets its own config group holding "
        "that store's options. The driver is the entry-point name of an installed "
        "store driver (``abbild stores`` lists them).\n\n"
        "Related options: default_backend",
    ),
    cfg.StrOpt(
        "default_backend",
        default="local",
        help="Name of the store (a key of enabled_backends) that receives uploads "
        "unless the client asks for another one.",
    ),
]

# Options every store has, whatever its driver; registered into each store's group.
common_store_opts = [
    cfg.StrOpt("description", default="", help="Shown to users in /v2/info/stores."),
    cfg.IntOpt(
        "weight",
        default=0,
        help="Downloads try the locations of higher-weight stores first.",
    ),
]

image_opts = [
    cfg.IntOpt(
        "image_size_cap",
        default=1 << 40,
        min=0,
        max=(1 << 63) - 1,
        help="Largest image, in bytes, that an upload may write (default 1 TiB). "
        "Larger uploads are cut off with 413 and leave no data behind.",
    ),
    cfg.StrOpt(
        "hashing_algorithm",
        default="sha512",
        help="hashlib algorithm for os_hash_value, computed on every upload next to the legacy md5 checksum.",
    ),
    cfg.IntOpt("limit_param_default", default=25, min=1, help="Default page size of image lists."),
    cfg.IntOpt("api_limit_max", default=1000, min=1, help="Largest page size a client may ask for."),
    cfg.StrOpt(
        "public_endpoint",
        help="URL clients reach this service at, used in the links of the versions "
        "document; behind a load balancer or proxy, its URL. Unset: the scheme, address "
        "and port the connection really reached (or those a trusted proxy forwards, see "
        "[oslo_middleware] enable_proxy_headers_parsing), never the request's Host header.",
    ),
    cfg.IntOpt(
        "image_member_quota",
        default=128,
        help="Most projects one image may be shared with; a negative value means no limit.",
    ),
    cfg.IntOpt(
        "image_property_quota",
        default=128,
        help="Most extra properties one image may have; a negative value means no limit.",
    ),
    cfg.IntOpt(
        "max_property_value_length",
        default=65535,
        min=1,
        help="Longest value of one extra image property, in characters; longer ones are "
        "refused with 400. Values are shown in every image list, so each one costs every "
        "reader. MariaDB and MySQL keep at most 65,535 bytes of UTF-8 per value (fewer "
        "characters where they take more than one byte): a longer value is refused there "
        "with 400 too.\n\n"
        "Related options: image_property_quota, max_json_body_size",
    ),
    cfg.IntOpt(
        "max_json_body_size",
        default=1 << 20,
        min=1024,
        help="Largest JSON request body, in bytes (default 1 MiB): image create and "
        "update, members, locations. A larger one is refused with 413, before it is "
        "read when Content-Length gives its size, else as soon as it has grown past "
        "the limit. Image data is no JSON body: image_size_cap limits it.",
    ),
    cfg.IntOpt("image_tag_quota", default=128, help="Most tags one image may have; negative: no limit."),
    cfg.IntOpt(
        "image_location_quota",
        default=10,
        help="Most locations (copies in stores) one image may have; negative: no limit.",
    ),
    cfg.BoolOpt(
        "show_multiple_locations",
        default=False,
        help="Show every image's ``locations`` (store URLs, with their metadata) to whoever "
        "may read the image. They can reveal backend details: keep this off on endpoints "
        "that end users reach. It also allows changing locations through PATCH "
        "(``glance location-add``, ``image-create --location``); POST "
        "/v2/images/{id}/locations works either way.",
    ),
    cfg.BoolOpt(
        "show_image_direct_url",
        default=False,
        help="Show ``direct_url``, the URL of the image's preferred location, which Nova "
        "and Cinder use for copy-on-write clones from RBD. Internal endpoints only.",
    ),
    cfg.StrOpt(
        "user_storage_quota",
        default="0",
        help="Most image data one project may store, all its images together: a number of "
        "bytes, or with a unit B, KB, MB, GB or TB (powers of 1024). 0: no limit. Uploads "
        "that would exceed it are cut off with 413 and leave no data behind.",
    ),
    cfg.BoolOpt(
        "validate_image_properties",
        default=False,
        help="Check image properties against the metadata definitions (beyond Glance): "
        "on image create and update, a property whose name a namespace associated with "
        "OS::Glance::Image defines (its prefix, such as hw_, and the property's name) "
        "must have a value of that definition's type, enum, minimum/maximum, "
        "minLength/maxLength and pattern, else the request gets 400 naming the "
        "property, the rule and the namespace. Only namespaces the image's owner may "
        "see count (public ones, their project's, those nobody owns); on update only "
        "new or changed properties are checked. Off: no check and no metadefs read. "
        "Turn it on once the namespaces say what your hypervisors accept "
        "(``abbild db load-metadefs``), or images with values Nova would refuse get "
        "through.",
    ),
    cfg.StrOpt(
        "property_protection_file",
        help="INI file of property protections (which roles or policies may create, read, "
        "update and delete which extra properties); none: every property is open to "
        "whoever may change the image.",
    ),
    cfg.StrOpt(
        "property_protection_rule_format",
        default="roles",
        choices=[
            ("roles", "values are comma-separated role names, @ everyone, ! nobody"),
            ("policies", "values are policy rule names"),
        ],
        help="How the values in property_protection_file are read.",
    ),
    cfg.BoolOpt(
        "allow_anonymous_access",
        default=False,
        help="Let requests without valid credentials through as an anonymous, read-only "
        "caller who sees public and community images. Off: they get 401.",
    ),
    cfg.IntOpt(
        "upload_lease_seconds",
        default=300,
        min=10,
        help="An upload in progress renews its lease in the registry while bytes flow. "
        "An image left in 'saving' whose lease is older than this (its process died) is "
        "returned to 'queued' and its partial data removed.",
    ),
]

job_opts = [
    cfg.IntOpt(
        "background_workers",
        default=4,
        min=1,
        help="Threads per API process for work that goes on after its request was "
        "answered (reading and hashing the data of a location registered with POST "
        "/v2/images/{id}/locations, releasing a failed upload's claim once the registry is back).",
    ),
    cfg.IntOpt(
        "background_queue_size",
        default=16,
        min=0,
        help="Background jobs that may wait for a free thread; beyond that new ones are "
        "refused with 503 until some have finished.",
    ),
    cfg.IntOpt(
        "background_jobs_per_project",
        default=2,
        min=1,
        help="Background jobs one project may have running or waiting in one process; more are refused with 429.",
    ),
]

registry_opts = [
    cfg.StrOpt(
        "registry",
        default="sql",
        help="Where image metadata lives: ``sql`` (this process talks to the database "
        "directly) or the name of another installed registry driver.",
    ),
]

database_opts = [
    cfg.StrOpt(
        "connection",
        default="sqlite:////var/lib/abbild/abbild.sqlite",
        secret=True,
        help="SQLAlchemy URL of the metadata database, for example "
        "``mysql+pymysql://abbild:secret@db/abbild`` or "
        "``postgresql+psycopg://abbild:secret@db/abbild``.",
    ),
    cfg.IntOpt("pool_size", default=10, min=1, help="Connections kept open per process."),
]

paste_opts = [
    cfg.StrOpt(
        "flavor",
        help="Pipeline flavour from abbild-api-paste.ini, that is how callers are "
        "authenticated: ``keystone`` (Keystone tokens, validated by keystonemiddleware "
        "with the options of [keystone_authtoken]), ``trusted-headers`` (a gateway in "
        "front already authenticated the caller and passes X-Identity-Status, X-User-Id, "
        "X-Project-Id and X-Roles, as keystonemiddleware does; never expose such a "
        "service to anyone but that gateway) or ``noauth`` (every caller is an "
        "administrator; answers loopback clients only). No default: ``abbild api`` and "
        "the WSGI application refuse to start without it; ``abbild serve`` runs noauth "
        "on 127.0.0.1 without it.",
    ),
    cfg.StrOpt("config_file", help="Paste ini file; default: the one shipped with abbild."),
]

cache_opts = [
    cfg.StrOpt(
        "image_cache_dir",
        help="Directory of this node's image cache. Unset (the default): no cache, the "
        "cache API answers 404 and the versions document leaves out 2.14, 2.16 and 2.18. "
        "Set: run a ``+cache`` pipeline flavour (``keystone+cache``, ...); ``abbild serve`` "
        "picks it itself.",
    ),
    cfg.IntOpt(
        "image_cache_max_size",
        default=10 << 30,
        min=0,
        help="Bytes the cache may hold before the pruner removes the least recently used images.",
    ),
    cfg.IntOpt(
        "image_cache_stall_time",
        default=86400,
        min=0,
        help="Seconds after which the cleaner removes an unfinished (``incomplete``) cache file.",
    ),
    cfg.StrOpt(
        "worker_self_reference_url",
        help="This node's own URL, naming it in the shared cache index (every node's cache "
        "entries live in the registry's database). Default: ``http://<hostname>:<bind_port>``.",
    ),
    cfg.IntOpt(
        "image_cache_prune_interval",
        default=600,
        min=0,
        help="Seconds between runs of the pruner inside each API process that has a cache (0: never; run "
        "``abbild cache prune`` from cron instead).",
    ),
    cfg.IntOpt(
        "image_cache_clean_interval",
        default=3600,
        min=0,
        help="Seconds between runs of the cleaner inside each API process that has a cache (0: never).",
    ),
    cfg.IntOpt(
        "image_cache_prefetch_interval",
        default=300,
        min=0,
        help="Seconds between runs of the prefetcher (it fetches the queued images) inside each API "
        "process that has a cache (0: never; images queued through the API are fetched at once anyway).",
    ),
]

scrub_opts = [
    cfg.BoolOpt(
        "delayed_delete",
        default=False,
        help="Deleting an image keeps its data for scrub_time seconds: the image is gone for "
        "every user at once (``pending_delete``), and ``abbild scrub --restore`` can bring it "
        "back until the scrubber deletes the data. Off: the data is deleted during the request, "
        "and only what a store failed to delete is left to the scrubber.\n\n"
        "Related options: scrub_time, scrub_interval",
    ),
    cfg.IntOpt(
        "scrub_time",
        default=43200,
        min=0,
        help="Seconds the data of an image deleted with delayed_delete is kept before the "
        "scrubber deletes it (the scrubber's own configuration counts, when it runs).\n\n"
        "Related options: delayed_delete",
    ),
    cfg.IntOpt(
        "scrub_interval",
        default=300,
        min=0,
        help="Seconds between runs of the scrubber inside the API processes (one at a time per "
        "deployment, under a lease in the registry) and of ``abbild scrub --daemon``; 0: never "
        "inside the API (run ``abbild scrub`` from cron instead). It also deletes what a failing "
        "store left of an immediate delete, so keep it on or run the scrubber somewhere. The "
        "scrubber waits this long before trying an image that failed again, twice as long after "
        "each further failure, at most an hour.\n\n"
        "Related options: scrub_batch_size",
    ),
    cfg.IntOpt(
        "scrub_batch_size",
        default=100,
        min=1,
        help="Images the scrubber claims at a time before deleting their data; scrubbers "
        "running side by side each take their own batch.",
    ),
]

audit_opts = [
    cfg.IntOpt(
        "audit_interval",
        default=0,
        min=0,
        help="Seconds between runs of the auditor inside the API processes (one at a time per "
        "deployment, under a lease in the registry); 0 (the default): never, run ``abbild audit`` "
        "from cron instead. It re-hashes every active image's data, so mind audit_rate_limit.",
    ),
    cfg.FloatOpt(
        "audit_rate_limit",
        default=0,
        min=0,
        help="MiB per second the auditor reads image data at, all stores together, so it can run "
        "on a live system; 0: as fast as the stores answer. ``abbild audit --rate`` overrides it.",
    ),
    cfg.IntOpt(
        "audit_orphan_grace",
        default=86400,
        min=0,
        help="Seconds data no image points at must have existed before ``abbild audit --repair`` "
        "deletes it; younger data is only reported (an upload may be writing it right now). "
        "Related options: upload_lease_seconds.",
    ),
    cfg.IntOpt(
        "audit_stuck_after",
        default=3600,
        min=0,
        help="Seconds an image may stay ``saving``, ``importing`` or ``pending_delete`` without "
        "a change (a running upload renews its claim, which counts as one) before the auditor "
        "reports it as stuck.",
    ),
    cfg.BoolOpt(
        "audit_repair",
        default=False,
        help="The periodic auditor repairs what is safe to repair, as ``abbild audit --repair``: "
        "stuck uploads whose claim is stale go back to ``queued``, orphans older than "
        "audit_orphan_grace are deleted, images with corrupt data are deactivated.",
    ),
    cfg.BoolOpt(
        "audit_update",
        default=False,
        help="The periodic auditor fills in what older or registered images lack, as "
        "``abbild audit --update``: ``size``, and ``os_hash_algo``/``os_hash_value`` where the "
        "data matches the image's md5 ``checksum``.",
    ),
]

purge_opts = [
    cfg.IntOpt(
        "purge_interval",
        default=0,
        min=0,
        help="Seconds between runs of the database purge inside the API processes (one at a "
        "time per deployment, under a lease in the registry); 0 (the default): never, run "
        "``abbild db purge`` from cron instead. It removes the rows of images deleted more "
        "than purge_age_in_days ago and keeps their ids as tombstones, so no id is used twice.\n\n"
        "Related options: purge_age_in_days",
    ),
    cfg.IntOpt(
        "purge_age_in_days",
        default=30,
        min=0,
        max=365000,
        help="Days a deleted image (and a removed image membership) stays in the database "
        "before the periodic purge removes its rows; 0: as soon as the purge runs.\n\n"
        "Related options: purge_interval",
    ),
]

# The built-in import steps (abbild.import_plugins) and the glance-download import
# method (abbild.glance_download), in the groups Glance uses, so operators' configs work.
image_conversion_opts = [
    cfg.StrOpt(
        "output_format",
        default="raw",
        choices=[
            ("raw", "what Ceph RBD needs for copy-on-write clones"),
            ("qcow2", "QEMU's copy-on-write format"),
            ("vmdk", "VMware's format"),
        ],
        help="Disk format the ``image_conversion`` import step converts imported images to "
        "(with qemu-img); images already in it are only checked.\n\n"
        "Related options: [image_import_opts] image_import_plugins, "
        "[image_format] vmdk_allowed_types",
    ),
    cfg.IntOpt(
        "conversion_timeout",
        default=3600,
        min=1,
        help="Seconds ``qemu-img convert`` may take for one image before the import is "
        "failed (and the partial output removed). Mind the largest images you accept: "
        "qemu-img writes some hundred MiB per second on local disks.",
    ),
]

image_format_opts = [
    cfg.ListOpt(
        "vmdk_allowed_types",
        default=["streamOptimized", "monolithicSparse"],
        help="VMDK create-types that uploads, imports and the ``image_conversion`` import "
        "step accept. Others (``monolithicFlat``, ``twoGbMaxExtentFlat``, ...) name extent "
        "files of their own, which a hostile image points at files of this host. Empty: no VMDK at all.",
    ),
    # The format inspection of uploaded, staged and imported data (abbild.formats).
    cfg.BoolOpt(
        "require_image_format_match",
        default=True,
        help="Refuse (HTTP 415) data of a ``bare`` image that is not in its disk_format: a "
        "qcow2 declared vmdk, or raw data declared qcow2. Data declared raw that is in "
        "another, safe format is accepted with a warning (a hypervisor told raw never "
        "probes it). Off: mismatches are only logged. Unsafe data (a qcow2 backing file, "
        "a VMDK naming other files, ...) is refused either way.\n\n"
        "Related options: vmdk_allowed_types, gpt_safety_checks_nonfatal",
    ),
    cfg.ListOpt(
        "gpt_safety_checks_nonfatal",
        default=["mbr"],
        help="Safety checks of GPT disk images that only log a warning instead of refusing "
        "the data. ``mbr``: the protective MBR is not the plain one the UEFI specification "
        "describes (hybrid MBRs of many bootable images fail it).",
    ),
]

inject_metadata_opts = [
    cfg.DictOpt(
        "inject",
        default={},
        help="Properties the ``inject_image_metadata`` import step sets on every imported "
        "image, as ``key:value`` pairs, for example ``hw_firmware_type:uefi, os_audited:yes``.\n\n"
        "Related options: ignore_user_roles",
    ),
    cfg.ListOpt(
        "ignore_user_roles",
        default=["admin"],
        help="Users with any of these roles import without the injected properties.",
    ),
]

glance_download_opts = [
    cfg.ListOpt(
        "extra_properties",
        default=["hw_", "trait:", "os_distro", "os_secure_boot", "os_type"],
        help="The ``glance-download`` import method copies the remote image's properties "
        "whose names start with one of these onto the local image, besides its formats and "
        "sizes.",
    ),
]

# Their groups, for register_opts and list_opts.
IMPORT_STEP_GROUPS = {
    "image_conversion": image_conversion_opts,
    "image_format": image_format_opts,
    "inject_metadata_properties": inject_metadata_opts,
    "glance_download_properties": glance_download_opts,
}

# [task], as Glance's.
task_opts = [
    cfg.IntOpt(
        "task_time_to_live",
        default=48,
        min=1,
        help="Hours a task (``GET /v2/tasks``, ``GET /v2/images/{id}/tasks``) stays once it "
        "succeeded or failed; then it is gone from the Tasks API, and the database purge "
        "(``abbild db purge``, purge_interval) removes its row once it expired more than "
        "purge_age_in_days ago. The registry sets it: with the http registry, set it in "
        "abbild-registry.conf.",
    ),
]

RESERVED_GROUPS = frozenset(
    {
        "DEFAULT",
        "task",
        "database",
        "paste_deploy",
        "registry",
        "registry_client",
        "registry_server",
        "abbild",
        "oslo_policy",
        "keystone_authtoken",
        *IMPORT_STEP_GROUPS,
        import_opts.IMPORT_GROUP,
        import_opts.FILTERING_GROUP,
        signature_opts.GROUP,
    }
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(
        store_opts + image_opts + job_opts + registry_opts + cache_opts + scrub_opts + audit_opts + purge_opts
    )
    conf.register_opts(database_opts, group="database")
    conf.register_opts(paste_opts, group="paste_deploy")
    conf.register_opts(task_opts, group="task")
    for group, group_opts in IMPORT_STEP_GROUPS.items():
        conf.register_opts(group_opts, group=group)
    import_opts.register_opts(conf)
    signature_opts.register_opts(conf)


def list_opts():
    return [
        (
            "DEFAULT",
            store_opts
            + image_opts
            + job_opts
            + registry_opts
            + cache_opts
            + scrub_opts
            + audit_opts
            + purge_opts
            + import_opts.import_opts,
        ),
        *import_opts.list_opts()[1:],
        *signature_opts.list_opts(),
        ("database", database_opts),
        ("paste_deploy", paste_opts),
        ("task", task_opts),
        *IMPORT_STEP_GROUPS.items(),
    ]
