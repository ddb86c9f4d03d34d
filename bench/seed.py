#!/usr/bin/env python3
"""Fill a registry database with N images of realistic metadata, for scale benchmarks.

    python bench/seed.py sqlite:////tmp/scale/abbild.sqlite --images 100000 --seed 1
    python bench/seed.py postgresql+psycopg://postgres@127.0.0.1:5432/scale --images 100000

The schema is brought to head first (as ``abbild db sync``). The images come from a
seeded random generator, so the same --seed gives the same database: 200 projects
owning them, every visibility, mostly active images (some queued, saving, deactivated,
killed, deleted), distro-style names that repeat, 5-15 properties and 0-3 tags each
(and, on one image in 5,000, a rare tag and a rare os_distro value), a file location on images with data, members on shared images (pending, accepted,
rejected), created_at spread over two years. With --big-project 0.3 one project owns
30% of the images and is a member of 30% of the shared ones.

Rows are written in bulk (executemany, thousands per transaction), not through
``SQLRegistry.create_image`` one by one: that is a transaction per image and would take
many minutes at 100,000. The rows are built with the registry's own column mapping
(``_normalized`` and ``_columns``) and ``--check`` compares, for the first images, what
this bulk path writes with what ``create_image`` writes (created_at/updated_at
aside, which create_image sets to now and the seed spreads over time).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import random
import sys
import time
import uuid

from sqlalchemy import func, select

from abbild.db import migrate
from abbild.db.models import ChildrenRow, ImageRow, LocationRow, MemberRow, PropertyRow, TagRow
from abbild.db.registry import (
    SQLRegistry,
    _columns,
    _normalized,
    document_row,
    location_rows,
    property_rows,
    tag_rows,
)
from abbild.image import Image, Location, Status

PROJECTS = 200
BATCH = 5000
START = datetime.datetime(2024, 1, 1)
SPAN_SECONDS = 2 * 365 * 86400

DISTROS = {
    "ubuntu": ["18.04", "20.04", "22.04", "24.04", "24.10"],
    "debian": ["10", "11", "12", "13"],
    "centos": ["7", "8-stream", "9-stream"],
    "rocky": ["8.9", "9.3", "9.4"],
    "fedora": ["38", "39", "40", "41"],
    "cirros": ["0.5.2", "0.6.1", "0.6.2"],
    "windows": ["2019", "2022"],
    "alpine": ["3.18", "3.19", "3.20"],
}
VARIANTS = ["server", "cloud", "minimal", "gpu", "k8s-node", "desktop"]
ARCHES = ["x86_64", "aarch64"]
TAGS = [
    "golden", "ci", "nightly", "release", "gpu", "hardened", "fips", "test",
    "k8s", "legacy", "approved", "deprecated", "base", "lts", "edge", "arm",
]  # fmt: skip
# A tag and an os_distro value one image in RARE_EVERY has (20 at 100,000): filters that
# match few images.
RARE_EVERY = 5000
RARE_TAG = "customer-acme"
RARE_DISTRO = "gentoo"
# (weight, status)
STATUSES = [
    (85, "active"),
    (5, "queued"),
    (1, "saving"),
    (2, "deactivated"),
    (5, "deleted"),
    (1, "killed"),
    (1, "importing"),
]
VISIBILITIES = [(10, "public"), (50, "private"), (30, "shared"), (10, "community")]
MEMBER_STATUSES = [(30, "pending"), (60, "accepted"), (10, "rejected")]
DISK_FORMATS = [(60, "qcow2"), (25, "raw"), (10, "vmdk"), (5, "iso")]
OPTIONAL_PROPERTIES = {
    "hw_disk_bus": ["virtio", "scsi", "sata"],
    "hw_vif_model": ["virtio", "e1000"],
    "hw_scsi_model": ["virtio-scsi"],
    "hw_qemu_guest_agent": ["yes", "no"],
    "hw_machine_type": ["q35", "pc"],
    "hw_rng_model": ["virtio"],
    "hw_firmware_type": ["uefi", "bios"],
    "hw_video_model": ["virtio", "qxl", "vga"],
    "os_require_quiesce": ["yes"],
    "img_config_drive": ["optional", "mandatory"],
    "os_admin_user": ["root", "ubuntu", "admin", "cloud-user"],
    "hypervisor_type": ["qemu", "kvm"],
    "build_pipeline": ["jenkins", "gitlab", "manual"],
    "owner_specified.openstack.object": ["images/base", "images/app"],
}


def project_ids() -> list[str]:
    return [hashlib.md5(f"project-{i}".encode()).hexdigest() for i in range(PROJECTS)]


def _weighted(rng: random.Random, table):
    return rng.choices([v for _, v in table], weights=[w for w, _ in table])[0]


def make_image(
    rng: random.Random, projects: list[str], index: int, count: int, big_share: float = 0.0
) -> tuple[Image, list[dict]]:
    """Image *index* (created_at increasing with it) and its member rows; with
    *big_share*, the first project owns that share of the images and is a member of
    that share of the shared ones."""
    distro = rng.choice(list(DISTROS))
    version = rng.choice(DISTROS[distro])
    arch = rng.choice(ARCHES)
    name = f"{distro}-{version}-{rng.choice(VARIANTS)}-{arch}"
    if rng.random() < 0.3:
        name += f"-{rng.randrange(1, 40):03d}"  # a build number: many names, still repeating
    if rng.random() < 0.01:
        name = None
    status = _weighted(rng, STATUSES)
    visibility = _weighted(rng, VISIBILITIES)
    owner = None if rng.random() < 0.002 else rng.choice(projects)
    if big_share and owner is not None and rng.random() < big_share:
        owner = projects[0]
    created = START + datetime.timedelta(seconds=int(SPAN_SECONDS * index / count) + rng.randrange(60))
    has_data = status in ("active", "deactivated", "deleted")
    image = Image(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        name=name,
        status=Status(status),
        visibility=visibility,
        protected=rng.random() < 0.05,
        os_hidden=rng.random() < 0.02,
        owner=owner,
        disk_format=_weighted(rng, DISK_FORMATS) if status != "queued" or rng.random() < 0.5 else None,
        container_format="bare" if status != "queued" else None,
        min_disk=rng.choice([0, 0, 1, 5, 10, 20]),
        min_ram=rng.choice([0, 0, 512, 1024, 2048]),
        created_at=created,
        updated_at=created + datetime.timedelta(seconds=rng.randrange(86400)),
    )
    if has_data:
        image.size = rng.randrange(12 << 20, 8 << 30)
        image.virtual_size = image.size * rng.choice([1, 2, 4])
        image.checksum = f"{rng.getrandbits(128):032x}"
        image.os_hash_algo = "sha512"
        image.os_hash_value = f"{rng.getrandbits(512):0128x}"
        image.locations = [Location("local", f"file:///var/lib/abbild/images/{image.id}", image.size, "active", {})]
    if status == "deleted":
        image.deleted_at = image.updated_at
    if status in ("saving", "importing"):
        # An upload in progress, whose claim holds (else a server's start-up recovery
        # would requeue it).
        image.upload_worker, image.upload_lease = "seed", created + datetime.timedelta(days=3650)
    properties = {"os_distro": distro, "os_version": version, "architecture": arch, "os_type": "linux"}
    if distro == "windows":
        properties["os_type"] = "windows"
    extra = rng.sample(list(OPTIONAL_PROPERTIES), rng.randint(1, 11))
    properties.update({key: rng.choice(OPTIONAL_PROPERTIES[key]) for key in extra})
    image.tags = set(rng.sample(TAGS, rng.choice([0, 0, 1, 1, 2, 3])))
    if index % RARE_EVERY == RARE_EVERY - 1:  # without a draw: the other images stay as they were
        properties["os_distro"] = RARE_DISTRO
        image.tags.add(RARE_TAG)
    image.properties = properties
    members = []
    if visibility == "shared":
        others = rng.sample(projects, rng.randint(0 if rng.random() < 0.2 else 1, 5))
        if big_share and projects[0] not in others and rng.random() < big_share:
            others.append(projects[0])
        for member in others:
            if member == owner:
                continue
            members.append(
                {
                    "image_id": image.id,
                    "member": member,
                    "status": _weighted(rng, MEMBER_STATUSES),
                    "can_share": False,
                    "created_at": image.updated_at,
                    "updated_at": image.updated_at,
                    "deleted": rng.random() < 0.03,
                    "image_created_at": image.created_at,
                }
            )
    return image, members


def rows_of(image: Image) -> dict[str, list[dict]]:
    """The rows create_image (and, for deleted images, the save that deleted them)
    writes for *image*."""
    stored = _normalized(image)
    stored.version = 2 if stored.status is Status.DELETED else 1  # a deleted image was saved once more
    return {
        "images": [
            {"id": stored.id, "deleted": stored.status is Status.DELETED, "version": stored.version, **_columns(stored)}
        ],
        "image_properties": property_rows(stored, stored.properties),
        "image_tags": tag_rows(stored, sorted(stored.tags)),
        "image_locations": location_rows(stored),
        "image_children": [document_row(stored)],
    }


TABLES = {
    "images": ImageRow.__table__,
    "image_properties": PropertyRow.__table__,
    "image_tags": TagRow.__table__,
    "image_locations": LocationRow.__table__,
    "image_children": ChildrenRow.__table__,
    "image_members": MemberRow.__table__,
}


def seed(url: str, count: int, seed_value: int, log=print, big_share: float = 0.0) -> None:
    registry = SQLRegistry(url=url)
    try:
        migrate.sync(registry.engine)
        with registry.engine.connect() as conn:
            existing = conn.scalar(select(func.count()).select_from(ImageRow))
        if existing:
            raise SystemExit(f"{url} already holds {existing} images: seed an empty database")
        rng = random.Random(seed_value)
        projects = project_ids()
        started = time.monotonic()
        pending = {name: [] for name in TABLES}
        written = 0
        for index in range(count):
            image, members = make_image(rng, projects, index, count, big_share)
            for name, rows in rows_of(image).items():
                pending[name].extend(rows)
            pending["image_members"].extend(members)
            if len(pending["images"]) >= BATCH or index == count - 1:
                with registry.engine.begin() as conn:
                    for name, table in TABLES.items():
                        if pending[name]:
                            conn.execute(table.insert(), pending[name])
                written += len(pending["images"])
                pending = {name: [] for name in TABLES}
                rate = written / (time.monotonic() - started)
                log(f"[seed] {written}/{count} images ({rate:.0f}/s)")
        if registry.url.startswith("postgresql"):
            with registry.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        elif registry.url.startswith("sqlite"):
            with registry.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
    finally:
        registry.close()


def check(count: int, seed_value: int) -> None:
    """The bulk rows equal create_image's rows for the first *count* images (two
    in-memory SQLite databases, one filled each way)."""
    rng = random.Random(seed_value)
    projects = project_ids()
    via_registry = SQLRegistry(url="sqlite://")
    via_bulk = SQLRegistry(url="sqlite://")
    for registry in (via_registry, via_bulk):
        migrate.sync(registry.engine)
    for index in range(count):
        image, _ = make_image(rng, projects, index, count)
        if image.status is not Status.DELETED:
            via_registry.create_image(image.copy())
        else:  # created, then deleted, as the API would
            created = via_registry.create_image(dataclass_replace_status(image, Status.ACTIVE))
            created.status, created.deleted_at, created.updated_at = Status.DELETED, image.deleted_at, image.updated_at
            via_registry.save_image(created)
        with via_bulk.engine.begin() as conn:
            for name, rows in rows_of(image).items():
                if rows:
                    conn.execute(TABLES[name].insert(), rows)
    skip = {"created_at", "updated_at", "deleted_at", "id", "image_created_at"}
    for name, table in TABLES.items():
        if name == "image_members":
            continue
        order = [c for c in table.columns if c.name not in skip]
        with via_registry.engine.connect() as a, via_bulk.engine.connect() as b:
            left = [
                {k: v for k, v in r._mapping.items() if k not in skip}
                for r in a.execute(select(table).order_by(*order))
            ]
            right = [
                {k: v for k, v in r._mapping.items() if k not in skip}
                for r in b.execute(select(table).order_by(*order))
            ]
        if left != right:
            raise SystemExit(f"[seed] check failed: {name} differs between create_image and the bulk rows")
        if "image_created_at" in table.c:
            images = TABLES["images"]
            apart = select(func.count()).where(
                table.c.image_id == images.c.id, table.c.image_created_at != images.c.created_at
            )
            for registry in (via_registry, via_bulk):
                with registry.engine.connect() as conn:
                    if conn.scalar(apart):
                        raise SystemExit(f"[seed] check failed: {name} rows hold another created_at than their image")
    print(f"[seed] check: the bulk rows of {count} images equal create_image's (times aside)")


def dataclass_replace_status(image: Image, status: Status) -> Image:
    copy = image.copy()
    copy.status, copy.deleted_at = status, None
    return copy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="database URL (SQLAlchemy), e.g. sqlite:////tmp/scale/abbild.sqlite")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", type=int, metavar="N", help="compare N images' bulk rows with create_image's")
    parser.add_argument(
        "--big-project",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="one project owns this share of the images and is a member of this share of the shared ones "
        "(a cloud with one big tenant; scale_bench then lists as that project)",
    )
    args = parser.parse_args(argv)
    if args.check:
        check(args.check, args.seed)
    if args.url:
        seed(args.url, args.images, args.seed, big_share=args.big_project)
    elif not args.check:
        parser.error("give a database URL, or --check N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
