"""The image value object and its status machine (GLANCE-API.md section 6)."""

from __future__ import annotations

import itertools

import pytest

from abbild.errors import Invalid, InvalidTransition
from abbild.image import Image, Location, Status, utcnow

# The table from GLANCE-API.md section 6, written out independently of abbild.image.
ALLOWED = {
    "queued": {"saving", "uploading", "importing", "active", "deleted"},
    "saving": {"active", "killed", "deleted", "queued"},
    "uploading": {"importing", "queued", "deleted"},
    "importing": {"active", "deleted", "queued", "uploading"},
    "active": {"pending_delete", "deleted", "deactivated"},
    "killed": {"deleted"},
    "pending_delete": {"deleted", "active", "deactivated"},
    "deleted": set(),
    "deactivated": {"active", "deleted", "pending_delete"},
}
# Glance's table, and three more (abbild deletes a deactivated image's data the way it
# deletes an active one's: pending_delete first, back if the store refuses; a failed
# glance-direct import returns to uploading, its staged data kept for another try).
ALL_PAIRS = list(itertools.product(ALLOWED, ALLOWED))
ALLOWED_PAIRS = [(src, dst) for src, dst in ALL_PAIRS if dst in ALLOWED[src]]
FORBIDDEN_PAIRS = [(src, dst) for src, dst in ALL_PAIRS if dst not in ALLOWED[src]]
DATA_STATUSES = {"saving", "active", "importing"}
# Leaving queued or uploading for a data-bearing status needs both formats.
FORMAT_GATED = [(src, dst) for src, dst in ALLOWED_PAIRS if src in ("queued", "uploading") and dst in DATA_STATUSES]
HASHES = {"size": 10, "virtual_size": 20, "checksum": "c" * 32, "os_hash_algo": "sha512", "os_hash_value": "h" * 128}


def image_in(status: str, **fields) -> Image:
    fields.setdefault("disk_format", "raw")
    fields.setdefault("container_format", "bare")
    return Image(id="img", status=Status(status), **fields)


def test_every_status_is_in_the_table():
    assert {s.value for s in Status} == set(ALLOWED)


@pytest.mark.parametrize("src,dst", ALLOWED_PAIRS)
def test_allowed_transition(src, dst):
    image = image_in(src)
    image.transition(Status(dst))
    assert image.status is Status(dst)


@pytest.mark.parametrize("src,dst", FORBIDDEN_PAIRS)
def test_forbidden_transition(src, dst):
    image = image_in(src, **HASHES)
    before = image.copy()
    with pytest.raises(InvalidTransition) as info:
        image.transition(Status(dst))
    assert (info.value.image_id, info.value.current, info.value.target) == ("img", src, dst)
    assert image == before


def test_transition_accepts_a_plain_string():
    image = image_in("queued")
    image.transition("active")
    assert image.status is Status.ACTIVE


def test_unknown_status_is_rejected():
    with pytest.raises(ValueError):
        image_in("queued").transition("frozen")


@pytest.mark.parametrize("missing", ["disk_format", "container_format"])
@pytest.mark.parametrize("src,dst", FORMAT_GATED)
def test_leaving_queued_for_data_needs_formats(src, dst, missing):
    image = image_in(src, **{missing: None})
    with pytest.raises(Invalid, match=missing):
        image.transition(dst)
    assert image.status is Status(src)


@pytest.mark.parametrize("src,dst", [("saving", "active"), ("importing", "active"), ("queued", "deleted")])
def test_formats_not_needed_elsewhere(src, dst):
    image = image_in(src, disk_format=None, container_format=None)
    image.transition(dst)
    assert image.status is Status(dst)


@pytest.mark.parametrize("src", [src for src, dst in ALLOWED_PAIRS if dst == "queued"])
def test_back_to_queued_clears_data_fields(src):
    image = image_in(src, name="keep", min_disk=3, tags={"t"}, properties={"p": "v"}, **HASHES)
    image.transition("queued")
    assert {attr: getattr(image, attr) for attr in HASHES} == dict.fromkeys(HASHES)
    assert (image.name, image.disk_format, image.min_disk, image.tags, image.properties) == (
        "keep",
        "raw",
        3,
        {"t"},
        {"p": "v"},
    )


@pytest.mark.parametrize("src,dst", [("saving", "active"), ("active", "deactivated"), ("queued", "uploading")])
def test_other_transitions_keep_data_fields(src, dst):
    image = image_in(src, **HASHES)
    image.transition(dst)
    assert {attr: getattr(image, attr) for attr in HASHES} == HASHES


def test_copy_is_deep():
    image = Image(id="img", tags={"a"}, properties={"p": "v"}, locations=[Location("s", "u", metadata={"k": [1]})])
    clone = image.copy()
    clone.tags.add("b")
    clone.properties["q"] = "w"
    clone.locations[0].metadata["k"].append(2)
    assert (image.tags, image.properties, image.locations[0].metadata) == ({"a"}, {"p": "v"}, {"k": [1]})


def test_defaults():
    image = Image(id="img")
    assert (image.status, image.visibility, image.protected, image.os_hidden, image.version) == (
        Status.QUEUED,
        "shared",
        False,
        False,
        0,
    )


def test_utcnow_is_naive_whole_seconds():
    now = utcnow()
    assert now.tzinfo is None and now.microsecond == 0


def test_a_copy_changes_apart_from_its_original():
    from abbild.image import Image, Location

    original = Image(
        id="i",
        tags={"a"},
        properties={"p": "1"},
        locations=[Location("local", "file:///x", metadata={"validation": {"checksum": "c"}})],
    )
    copied = original.copy()
    assert copied == original
    copied.tags.add("b")
    copied.properties["q"] = "2"
    copied.locations[0].metadata["validation"]["checksum"] = "d"
    copied.locations[0].status = "pending"
    copied.locations.append(Location("other", "file:///y"))
    assert original.tags == {"a"} and original.properties == {"p": "1"}
    assert original.locations == [Location("local", "file:///x", metadata={"validation": {"checksum": "c"}})]
