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

from abbild.db.registry import document_row
from abbild.image import Image, Location

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 1000

images = sa.table("images", sa.column("id"), sa.column("version"))
documents = sa.table("image_children", sa.column("image_id"), sa.column("document"))
properties = sa.table("image_properties", sa.column("image_id"), sa.column("name"), sa.column("value"))
tags = sa.table("image_tags", sa.column("image_id"), sa.column("value"))
locations = sa.table(
    "image_locations",
    sa.column("image_id"),
    sa.column("position"),
    sa.column("store"),
    sa.column("uri"),
    sa.column("size"),
    sa.column("status"),
    sa.column("meta", sa.JSON()),
)


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
        found = {image_id: Image(id=image_id, version=version) for image_id, version in batch}
        ids = list(found)
        for image_id, name, value in conn.execute(sa.select(properties).where(properties.c.image_id.in_(ids))):
            found[image_id].properties[name] = value
        for image_id, value in conn.execute(sa.select(tags).where(tags.c.image_id.in_(ids))):
            found[image_id].tags.add(value)
        for row in conn.execute(
            sa.select(locations)
            .where(locations.c.image_id.in_(ids))
            .order_by(locations.c.image_id, locations.c.position)
        ):
            found[row.image_id].locations.append(Location(row.store, row.uri, row.size, row.status, row.meta or {}))
        conn.execute(documents.insert(), [document_row(image) for image in found.values()])
        last = ids[-1]


def downgrade():
    op.drop_table("image_children")
