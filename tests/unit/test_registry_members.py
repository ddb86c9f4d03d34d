"""Members in the SQL registry, on SQLite, MariaDB and PostgreSQL."""

import uuid

import pytest

from abbild.errors import Conflict, MemberNotFound
from abbild.image import Image
from abbild.registry import ImageFilters, Viewer


def _image(registry, **fields) -> str:
    return registry.create_image(Image(id=str(uuid.uuid4()), owner="owner", **fields)).id


def test_member_lifecycle(sql_registry):
    image_id = _image(sql_registry)
    assert sql_registry.list_members(image_id) == []
    added = sql_registry.add_member(image_id, "p1")
    assert (added.image_id, added.member_id, added.status) == (image_id, "p1", "pending")
    assert added.created_at is not None and added.updated_at == added.created_at
    with pytest.raises(Conflict):
        sql_registry.add_member(image_id, "p1")
    sql_registry.add_member(image_id, "p2")
    assert [m.member_id for m in sql_registry.list_members(image_id)] == ["p1", "p2"]

    assert sql_registry.set_member_status(image_id, "p1", "accepted").status == "accepted"
    assert sql_registry.get_member(image_id, "p1").status == "accepted"
    assert sql_registry.get_member(image_id, "nobody") is None

    sql_registry.delete_member(image_id, "p1")
    assert sql_registry.get_member(image_id, "p1") is None
    with pytest.raises(MemberNotFound):
        sql_registry.delete_member(image_id, "p1")
    with pytest.raises(MemberNotFound):
        sql_registry.set_member_status(image_id, "p1", "rejected")
    # Added again after removal: a fresh, pending membership.
    assert sql_registry.add_member(image_id, "p1").status == "pending"
    assert sorted(m.member_id for m in sql_registry.list_members(image_id)) == ["p1", "p2"]


def test_member_ids_are_case_sensitive(sql_registry):
    image_id = _image(sql_registry)
    sql_registry.add_member(image_id, "Project")
    sql_registry.add_member(image_id, "project")
    assert len(sql_registry.list_members(image_id)) == 2


@pytest.mark.parametrize(
    "status,expected",
    [
        ("accepted", {"accepted"}),
        ("pending", {"pending"}),
        ("rejected", {"rejected"}),
        ("all", {"accepted", "pending", "rejected"}),
    ],
)
def test_member_status_filters_the_members_list(sql_registry, status, expected):
    ids = {}
    for member_status in ("accepted", "pending", "rejected"):
        image_id = ids[member_status] = _image(sql_registry, name=member_status)
        sql_registry.add_member(image_id, "me")
        sql_registry.set_member_status(image_id, "me", member_status)
    found = sql_registry.list_images(ImageFilters(member_status=status), [], 100, viewer=Viewer(project_id="me"))
    assert {i.name for i in found} == expected


def test_the_list_query_and_the_visibility_rule_agree(sql_registry):
    """The SQL registry's list query restates the visibility rule (why_visible) in SQL:
    for every kind of image and viewer, an image is listed (visibility=all,
    member_status=all) exactly when the rule says the viewer may see it."""
    from abbild.registry import why_visible

    tag = f"rule-{uuid.uuid4().hex}"
    images = []
    for visibility in ("public", "community", "shared", "private"):
        for owner in ("owner", "me", None):
            for member_status in (None, "pending", "accepted", "rejected"):
                if member_status and visibility != "shared":
                    continue
                image = sql_registry.create_image(
                    Image(id=str(uuid.uuid4()), owner=owner, visibility=visibility, tags={tag})
                )
                if member_status:
                    sql_registry.add_member(image.id, "me")
                    sql_registry.set_member_status(image.id, "me", member_status)
                images.append(image)
    viewers = [
        Viewer(project_id="me"),
        Viewer(project_id="stranger"),
        Viewer(),
        Viewer(anonymous=True),
        Viewer(project_id="me", is_admin=True),
    ]
    for viewer in viewers:
        listed = {
            i.id
            for i in sql_registry.list_images(
                ImageFilters(visibility="all", member_status="all", tags=[tag]), [], 1000, viewer=viewer
            )
        }
        expected = {i.id for i in images if why_visible(i, viewer, sql_registry) is not None}
        assert listed == expected, viewer
