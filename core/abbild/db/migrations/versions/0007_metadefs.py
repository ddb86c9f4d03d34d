"""Metadata definitions: namespaces with their properties, objects, tags and resource
type associations, and the resource types (``/v2/metadefs``).

Revision ID: 0007
Revises: 0006

The upgrade seeds the resource types every deployment knows, protected (as Glance's
migration does). A downgrade drops the metadefs tables and everything in them.
"""

import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VARCHAR80 = sa.String(80).with_variant(mysql.VARCHAR(80, collation="utf8mb4_bin"), "mysql", "mariadb")
VARCHAR255 = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")

# abbild.metadefs.CORE_RESOURCE_TYPES as of this revision (a migration keeps its own copy:
# it must do the same thing whatever the code says later).
CORE_RESOURCE_TYPES = (
    "OS::Glance::Image",
    "OS::Cinder::Volume",
    "OS::Nova::Flavor",
    "OS::Nova::Aggregate",
    "OS::Nova::Server",
)


def _times():
    return (
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def _namespace_key(table):
    return sa.ForeignKeyConstraint(
        ["namespace_id"],
        ["metadef_namespaces.id"],
        name=f"fk_{table}_namespace_id_metadef_namespaces",
        ondelete="CASCADE",
    )


def upgrade():
    op.create_table(
        "metadef_namespaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("namespace", VARCHAR80, nullable=False),
        sa.Column("display_name", VARCHAR80, nullable=True),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("visibility", sa.String(32), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("owner", VARCHAR255, nullable=True),
        *_times(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_metadef_namespaces"),
        sa.UniqueConstraint("namespace", name="uq_metadef_namespaces_namespace"),
    )
    op.create_index("ix_metadef_namespaces_created_at_namespace", "metadef_namespaces", ["created_at", "namespace"])
    op.create_index("ix_metadef_namespaces_updated_at_namespace", "metadef_namespaces", ["updated_at", "namespace"])
    op.create_index("ix_metadef_namespaces_owner", "metadef_namespaces", ["owner"])
    op.create_index("ix_metadef_namespaces_visibility", "metadef_namespaces", ["visibility"])

    resource_types = op.create_table(
        "metadef_resource_types",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", VARCHAR80, nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        *_times(),
        sa.PrimaryKeyConstraint("id", name="pk_metadef_resource_types"),
        sa.UniqueConstraint("name", name="uq_metadef_resource_types_name"),
    )

    op.create_table(
        "metadef_associations",
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("resource_type_id", sa.Integer(), nullable=False),
        sa.Column("prefix", VARCHAR80, nullable=True),
        sa.Column("properties_target", VARCHAR80, nullable=True),
        *_times(),
        _namespace_key("metadef_associations"),
        sa.ForeignKeyConstraint(
            ["resource_type_id"],
            ["metadef_resource_types.id"],
            name="fk_metadef_associations_resource_type_id_metadef_resource_types",
        ),
        sa.PrimaryKeyConstraint("namespace_id", "resource_type_id", name="pk_metadef_associations"),
    )
    op.create_index("ix_metadef_associations_resource_type_id", "metadef_associations", ["resource_type_id"])

    op.create_table(
        "metadef_properties",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", VARCHAR80, nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        _namespace_key("metadef_properties"),
        sa.PrimaryKeyConstraint("id", name="pk_metadef_properties"),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_properties_namespace_id_name"),
    )

    op.create_table(
        "metadef_objects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", VARCHAR80, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("required", sa.Text(), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        *_times(),
        _namespace_key("metadef_objects"),
        sa.PrimaryKeyConstraint("id", name="pk_metadef_objects"),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_objects_namespace_id_name"),
    )

    op.create_table(
        "metadef_tags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", VARCHAR80, nullable=False),
        *_times(),
        _namespace_key("metadef_tags"),
        sa.PrimaryKeyConstraint("id", name="pk_metadef_tags"),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_tags_namespace_id_name"),
    )

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    op.bulk_insert(
        resource_types,
        [{"name": name, "protected": True, "created_at": now, "updated_at": now} for name in CORE_RESOURCE_TYPES],
    )


def downgrade():
    for table in (
        "metadef_tags",
        "metadef_objects",
        "metadef_properties",
        "metadef_associations",
        "metadef_resource_types",
        "metadef_namespaces",
    ):
        op.drop_table(table)
