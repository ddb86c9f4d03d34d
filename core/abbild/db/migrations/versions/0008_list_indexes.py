"""Indexes that serve image list pages at scale.

Revision ID: 0008
Revises: 0007

Each list page reads its rows in sort order from one index range: the filtered
column (status, owner, visibility, name) followed by the default sort key and its
tie-breakers (created_at, id), and the sorts by name and by size. The single-column
indexes they replace are their prefixes. A project's shared images come from one range
of the members index (member, deleted, status, image_id), images with a tag from
(value, image_id).
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (table, old index and its columns, new index and its columns)
CHANGES = [
    ("images", "ix_images_status", ["status"], "ix_images_status_created_at_id", ["status", "created_at", "id"]),
    ("images", "ix_images_owner", ["owner"], "ix_images_owner_created_at_id", ["owner", "created_at", "id"]),
    (
        "images",
        "ix_images_visibility",
        ["visibility"],
        "ix_images_visibility_created_at_id",
        ["visibility", "created_at", "id"],
    ),
    ("images", None, None, "ix_images_name_created_at_id", ["name", "created_at", "id"]),
    ("images", None, None, "ix_images_size_created_at_id", ["size", "created_at", "id"]),
    ("image_tags", "ix_image_tags_value", ["value"], "ix_image_tags_value_image_id", ["value", "image_id"]),
    (
        "image_members",
        "ix_image_members_member",
        ["member"],
        "ix_image_members_member_deleted_status_image_id",
        ["member", "deleted", "status", "image_id"],
    ),
]


def upgrade():
    for table, old, _, new, columns in CHANGES:
        op.create_index(new, table, columns)
        if old is not None:
            op.drop_index(old, table_name=table)


def downgrade():
    for table, old, old_columns, new, _ in reversed(CHANGES):
        if old is not None:
            op.create_index(old, table, old_columns)
        op.drop_index(new, table_name=table)
