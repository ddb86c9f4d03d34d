"""Tombstones of purged images: their ids stay taken.

Revision ID: 0005
Revises: 0004

A downgrade drops the tombstones: the ids of images purged before can be given to new
images again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "image_tombstones",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("purged_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_image_tombstones"),
    )


def downgrade():
    op.drop_table("image_tombstones")
