"""The shared image cache index: which API node holds (or has queued) which image.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VARCHAR255 = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade():
    op.create_table(
        "cache_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", VARCHAR255, nullable=False),
        sa.Column("image_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.String(32), nullable=True),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.Column("last_accessed", sa.DateTime(), nullable=True),
        sa.Column("last_modified", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cache_entries"),
        sa.UniqueConstraint("node", "image_id", name="uq_cache_entries_node_image_id"),
    )
    op.create_index("ix_cache_entries_image_id", "cache_entries", ["image_id"])


def downgrade():
    op.drop_index("ix_cache_entries_image_id", table_name="cache_entries")
    op.drop_table("cache_entries")
