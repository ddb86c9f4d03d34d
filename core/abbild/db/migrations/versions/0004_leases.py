"""Named leases: one holder at a time per deployment-wide periodic task.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VARCHAR255 = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade():
    op.create_table(
        "leases",
        sa.Column("name", VARCHAR255, nullable=False),
        sa.Column("holder", VARCHAR255, nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade():
    op.drop_table("leases")
