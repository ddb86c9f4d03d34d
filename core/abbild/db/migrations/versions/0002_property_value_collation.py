"""Exact-match property values on MySQL/MariaDB.

Their default collation ignores case, so ``os_distro=ubuntu`` also found ``Ubuntu``.
Other databases compare exactly already.

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


def upgrade():
    if op.get_bind().dialect.name != "mysql":  # MariaDB too, through PyMySQL
        return
    op.alter_column(
        "image_properties",
        "value",
        type_=mysql.TEXT(collation="utf8mb4_bin"),
        existing_type=sa.Text(),
        existing_nullable=False,
    )
