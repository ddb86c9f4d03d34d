"""The JSON schemas clients fetch from ``/v2/schemas/...``. glanceclient builds its
CLI arguments and validates images with them, so they follow Glance's closely."""

from __future__ import annotations

import copy

from abbild.image import CONTAINER_FORMATS, DISK_FORMATS, VISIBILITIES, Status

UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_DATE = {"type": "string", "readOnly": True}

IMAGE_PROPERTIES = {
    "id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
    "name": {"type": ["null", "string"], "description": "Descriptive name for the image", "maxLength": 255},
    "status": {
        "type": "string",
        "readOnly": True,
        "description": "Status of the image",
        "enum": [s.value for s in Status],
    },
    "visibility": {"type": "string", "description": "Scope of image accessibility", "enum": list(VISIBILITIES)},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
    "checksum": {
        "type": ["null", "string"],
        "readOnly": True,
        "maxLength": 32,
        "description": "md5 hash of image contents.",
    },
    "os_hash_algo": {
        "type": ["null", "string"],
        "readOnly": True,
        "maxLength": 64,
        "description": "Algorithm to calculate the os_hash_value",
    },
    "os_hash_value": {
        "type": ["null", "string"],
        "readOnly": True,
        "maxLength": 128,
        "description": "Hexdigest of the image contents using the algorithm specified by the os_hash_algo",
    },
    "owner": {"type": ["null", "string"], "description": "Owner of the image", "maxLength": 255},
    "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
    "virtual_size": {"type": ["null", "integer"], "readOnly": True, "description": "Virtual size of image in bytes"},
    "container_format": {
        "type": ["null", "string"],
        "description": "Format of the container",
        "enum": [None, *CONTAINER_FORMATS],
    },
    "disk_format": {"type": ["null", "string"], "description": "Format of the disk", "enum": [None, *DISK_FORMATS]},
    "created_at": dict(_DATE, description="Date and time of image registration"),
    "updated_at": dict(_DATE, description="Date and time of the last image modification"),
    "tags": {
        "type": "array",
        "description": "List of strings related to the image",
        "items": {"type": "string", "maxLength": 255},
    },
    "direct_url": {
        "type": "string",
        "readOnly": True,
        "description": "URL to access the image file kept in external store",
    },
    "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image.", "minimum": 0},
    "min_disk": {
        "type": "integer",
        "description": "Amount of disk space (in GB) required to boot image.",
        "minimum": 0,
    },
    "self": {"type": "string", "readOnly": True, "description": "An image self url"},
    "file": {"type": "string", "readOnly": True, "description": "An image file url"},
    "stores": {
        "type": "string",
        "readOnly": True,
        "description": "Store in which image data resides.  Only present when the operator has enabled multiple stores.  May be a comma-separated list of store identifiers.",
    },
    "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
    "locations": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"url": {"type": "string", "maxLength": 255}, "metadata": {"type": "object"}},
            "required": ["url", "metadata"],
        },
        "description": "A set of URLs to access the image file kept in external store",
    },
}
# Well-known extra properties Glance ships in schema-image.json; clients show them.
EXTRA_PROPERTIES = {
    "kernel_id": {
        "type": ["null", "string"],
        "pattern": UUID_PATTERN,
        "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image.",
        "is_base": False,
    },
    "ramdisk_id": {
        "type": ["null", "string"],
        "pattern": UUID_PATTERN,
        "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image.",
        "is_base": False,
    },
    "instance_uuid": {
        "type": "string",
        "description": "Metadata which can be used to record which instance this image is associated with. (Informational only, does not create an instance snapshot.)",
        "is_base": False,
    },
    "architecture": {
        "type": "string",
        "description": "Operating system architecture as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html",
        "is_base": False,
    },
    "os_distro": {
        "type": "string",
        "description": "Common name of operating system distribution as specified in https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html",
        "is_base": False,
    },
    "os_version": {
        "type": "string",
        "description": "Operating system version as specified by the distributor.",
        "is_base": False,
    },
    "description": {
        "type": "string",
        "description": "A human-readable string describing this image.",
        "is_base": False,
    },
}
READ_ONLY = frozenset(name for name, spec in IMAGE_PROPERTIES.items() if spec.get("readOnly")) | {"id"}
RESERVED = frozenset({"location", "deleted", "deleted_at"})
LINKS = [
    {"rel": "self", "href": "{self}"},
    {"rel": "enclosure", "href": "{file}"},
    {"rel": "describedby", "href": "{schema}"},
]


def image_schema() -> dict:
    return {
        "name": "image",
        "properties": copy.deepcopy({**IMAGE_PROPERTIES, **EXTRA_PROPERTIES}),
        "additionalProperties": {"type": "string"},
        "links": copy.deepcopy(LINKS),
    }


# The database columns: min_ram and min_disk are Integer (32 bits on MariaDB and
# PostgreSQL), the sizes BigInteger.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def image_validation_schema() -> dict:
    """The image schema that requests are checked against: the served one (Glance's,
    which clients compare), with the ranges the database can hold."""
    schema = image_schema()
    for name in ("min_ram", "min_disk"):
        schema["properties"][name]["maximum"] = INT32_MAX
    return schema


def images_schema() -> dict:
    return {
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


MEMBER_STATUSES = ["pending", "accepted", "rejected"]


def member_schema() -> dict:
    return {
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "status": {"type": "string", "description": "The status of this image member", "enum": MEMBER_STATUSES},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": True},
        },
    }


def members_schema() -> dict:
    return {
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member_schema()},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "describedby", "href": "{schema}"}],
    }


# -- tasks (Glance's glance/api/v2/tasks.py) ---------------------------------------------

TASK_STATUSES = ["pending", "processing", "success", "failure"]
TASK_TYPES = ["import", "api_image_import", "location_import"]
# owner, image_id, request_id and user_id may be null (Glance says string): a noauth
# caller has no project or user, and glanceclient validates tasks against this schema.
TASK_PROPERTIES = {
    "id": {"type": "string", "description": "An identifier for the task", "pattern": UUID_PATTERN},
    "type": {"type": "string", "description": "The type of task represented by this content", "enum": TASK_TYPES},
    "status": {"type": "string", "description": "The current status of this task", "enum": TASK_STATUSES},
    "input": {"type": ["null", "object"], "description": "The parameters required by task, JSON blob"},
    "result": {"type": ["null", "object"], "description": "The result of current task, JSON blob"},
    "owner": {"type": ["null", "string"], "description": "An identifier for the owner of this task"},
    "message": {
        "type": "string",
        "description": "Human-readable informative message only included when appropriate (usually on failure)",
    },
    "image_id": {"type": ["null", "string"], "description": "Image associated with the task"},
    "request_id": {"type": ["null", "string"], "description": "Human-readable informative request-id"},
    "user_id": {"type": ["null", "string"], "description": "User associated with the task"},
    "expires_at": {
        "type": ["null", "string"],
        "description": "Datetime when this resource would be subject to removal",
    },
    "created_at": {"type": "string", "description": "Datetime when this resource was created"},
    "updated_at": {"type": "string", "description": "Datetime when this resource was updated"},
    "self": {"type": "string", "readOnly": True},
    "schema": {"type": "string", "readOnly": True},
}
#: What a task list leaves out of each task (Glance's partial task schema).
TASK_DETAILS = ("input", "result", "message")


def task_schema() -> dict:
    return {"name": "task", "properties": copy.deepcopy(TASK_PROPERTIES)}


def tasks_schema() -> dict:
    partial = {name: spec for name, spec in copy.deepcopy(TASK_PROPERTIES).items() if name not in TASK_DETAILS}
    return {
        "name": "tasks",
        "properties": {
            "tasks": {"type": "array", "items": {"name": "task", "properties": partial}},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }
