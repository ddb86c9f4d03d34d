"""Tags, properties and memberships hold their image's created_at.

Revision ID: 0015
Revises: 0014

A list filtered by a common tag or property tested each image it read, in the page's
order, for the filter's row: at 100,000 images a page of a tag one image in twelve has
took 1,200 index lookups, and a project's page looked up each of its 300 memberships.
created_at never changes, so each of these rows can hold a copy of it; on PostgreSQL
indexes then hold the rows in the default list's order, and a page merges them with
the images (see abbild.db.registry._list_query). The other databases get the columns
only: SQLite, which has no merge joins, lists these pages within its targets anyway.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLES = ["image_tags", "image_properties", "image_members"]
# Spelled out here: a later change to the models' indexes is a migration of its own.
SHORT_VALUE = 300
INDEXES = [
    ("ix_image_tags_value_image_created_at", "image_tags", ["value", "image_created_at", "image_id"], {}),
    (
        "ix_image_properties_name_value_image_created_at",
        "image_properties",
        ["name", "value", "image_created_at", "image_id"],
        {"postgresql_where": sa.text(f"length(value) <= {SHORT_VALUE}")},
    ),
    (
        "ix_image_members_member_image_created_at",
        "image_members",
        ["member", "deleted", "status", "image_created_at", "image_id"],
        {},
    ),
]


def upgrade():
    for table in TABLES:
        op.add_column(table, sa.Column("image_created_at", sa.DateTime(), nullable=True))
        op.execute(
            f"UPDATE {table} SET image_created_at = "
            f"(SELECT images.created_at FROM images WHERE images.id = {table}.image_id)"
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("image_created_at", existing_type=sa.DateTime(), nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        for name, table, columns, options in INDEXES:
            op.create_index(name, table, columns, **options)
            op.execute(f"ANALYZE {table}")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _, _ in INDEXES:
            op.drop_index(name, table_name=table)
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("image_created_at")
