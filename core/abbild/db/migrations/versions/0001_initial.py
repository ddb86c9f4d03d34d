"""Images, properties, tags, locations and members.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Exact-match text on MySQL/MariaDB (their default collation ignores case).
VARCHAR255 = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.TEXT(collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade():
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", VARCHAR255, nullable=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("visibility", sa.String(30), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("os_hidden", sa.Boolean(), nullable=False),
        sa.Column("owner", VARCHAR255, nullable=True),
        sa.Column("disk_format", sa.String(20), nullable=True),
        sa.Column("container_format", sa.String(20), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("virtual_size", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.String(32), nullable=True),
        sa.Column("os_hash_algo", sa.String(64), nullable=True),
        sa.Column("os_hash_value", sa.String(128), nullable=True),
        sa.Column("min_disk", sa.Integer(), nullable=False),
        sa.Column("min_ram", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("upload_worker", VARCHAR255, nullable=True),
        sa.Column("upload_lease", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_owner", "images", ["owner"])
    op.create_index("ix_images_created_at_id", "images", ["created_at", "id"])
    op.create_index("ix_images_visibility", "images", ["visibility"])

    op.create_table(
        "image_properties",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("name", VARCHAR255, nullable=False),
        sa.Column("value", TEXT, nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_image_properties_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_image_properties"),
        sa.UniqueConstraint("image_id", "name", name="uq_image_properties_image_id_name"),
    )
    op.create_index("ix_image_properties_name", "image_properties", ["name"])

    op.create_table(
        "image_tags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("value", VARCHAR255, nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_image_tags_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_image_tags"),
        sa.UniqueConstraint("image_id", "value", name="uq_image_tags_image_id_value"),
    )
    op.create_index("ix_image_tags_value", "image_tags", ["value"])

    op.create_table(
        "image_locations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("store", VARCHAR255, nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_image_locations_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_image_locations"),
    )
    op.create_index("ix_image_locations_image_id", "image_locations", ["image_id"])

    op.create_table(
        "image_members",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("member", VARCHAR255, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("can_share", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_image_members_image_id_images"),
        sa.PrimaryKeyConstraint("id", name="pk_image_members"),
        sa.UniqueConstraint("image_id", "member", name="uq_image_members_image_id_member"),
    )
    op.create_index("ix_image_members_image_id", "image_members", ["image_id"])
    op.create_index("ix_image_members_member", "image_members", ["member"])
