"""Statistics that let PostgreSQL plan a property filter.

Revision ID: 0009
Revises: 0008

A list filtered by a property (``?os_distro=debian``) tests each image for a
(name, value) row. PostgreSQL estimates the rows of a name and a value as if the two
were independent: a value that only ever comes with one name ("debian") looked a
hundred times rarer than it is, and the planner read every row of the value to join
and sort them (250 ms at 100,000 images) instead of walking the sort order's index
and testing each image (15 ms). Statistics of the pair (its most common values) give
the real count. Other databases keep no such statistics; nothing to do there.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATISTICS = "image_properties_name_value"


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE STATISTICS IF NOT EXISTS {STATISTICS} (mcv, dependencies) ON name, value FROM image_properties"
        )
        op.execute("ANALYZE image_properties")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")
