"""Each image's properties, tags and locations as one JSON document (image_children).

Revision ID: 0010
Revises: 0009

A list page read each image's properties, tags and locations from their tables and
had the database build JSON of them (SQLite: a third of a 100-image page's query;
MySQL/MariaDB: three more queries). The registry now writes the document with the
rows, and reads it with one lookup per image. The tables stay: filters read them, and
they are the truth where a document is missing or of another version.

The upgrade writes the document of every image there is, a thousand at a time.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from abbild.db.registry import children_from_tables, document_row
from abbild.image import Image

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 1000

images = sa.table("images", sa.column("id"), sa.column("version"))
documents = sa.table("image_children", sa.column("image_id"), sa.column("document"))


def upgrade():
    op.create_table(
        "image_children",
        sa.Column(
            "image_id",
            sa.String(36),
            sa.ForeignKey("images.id", name="fk_image_children_image_id_images", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("document", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
        sa.PrimaryKeyConstraint("image_id", name="pk_image_children"),
    )
    conn = op.get_bind()
    last = ""
    while True:
        batch = conn.execute(
            sa.select(images.c.id, images.c.version).where(images.c.id > last).order_by(images.c.id).limit(BATCH)
        ).all()
        if not batch:
            break
        ids = [image_id for image_id, _ in batch]
        children = children_from_tables(conn, ids)
        rows = []
        for image_id, version in batch:
            properties, tags, locations = children[image_id]
            image = Image(id=image_id, version=version, properties=properties, tags=tags, locations=locations)
            rows.append(document_row(image))
        conn.execute(documents.insert(), rows)
        last = ids[-1]


def downgrade():
    op.drop_table("image_children")
