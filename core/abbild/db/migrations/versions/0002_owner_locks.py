"""Owner locks: serialise storage-quota checks per project.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VARCHAR255 = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade():
    op.create_table(
        "owner_locks",
        sa.Column("owner", VARCHAR255, nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_owner_locks"),
    )


def downgrade():
    op.drop_table("owner_locks")
