"""On SQLite, a property filter reads its (name, value) rows from an index alone.

Revision ID: 0013
Revises: 0012

A list filtered by a property (``?os_distro=debian``) tests each image it passes for
the property's row. SQLite looked that row up in the unique (image_id, name) index and
then read the table row for its value; ix_image_properties_covering holds the value
too. At 100,000 images the statement of a project's page filtered by a property went
from 3.9-4.6 to 2.7-2.9 ms (medians of 30 runs, on one CPU). Other databases cannot
index a long text value in full; nothing changes there.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEX = "ix_image_properties_covering"


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(INDEX, "image_properties", ["image_id", "name", "value"], unique=True)
        op.execute("ANALYZE image_properties")


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(INDEX, table_name="image_properties")
