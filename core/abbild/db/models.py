"""Table definitions. Migrations under ``migrations/`` create exactly these; a test
compares the two."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

str36 = Annotated[str, 36]
str255 = Annotated[str, 255]
# MySQL/MariaDB compare case-insensitively by default; names, tags and properties are
# exact-match (and "Ubuntu" and "ubuntu" are two different tags).
_VARCHAR255 = String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb")
# Property values are filtered on by exact match too.
_TEXT = Text().with_variant(mysql.TEXT(collation="utf8mb4_bin"), "mysql", "mariadb")
timestamp = Annotated[datetime.datetime, "timestamp"]
# A document with no length limit (MariaDB's TEXT ends at 64 KiB).
_DOCUMENT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# Metadef names (namespaces, objects, properties, tags, resource types): at most 80
# characters, as Glance, and exact-match too ("A" and "a" are two namespaces).
_VARCHAR80 = String(80).with_variant(mysql.VARCHAR(80, collation="utf8mb4_bin"), "mysql", "mariadb")
str80 = Annotated[str, 80]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        str36: String(36),
        str255: _VARCHAR255,
        str80: _VARCHAR80,
        timestamp: DateTime(),
        dict[str, Any]: JSON(),
    }


# The columns of images that every list page tests, and the default sort key: each
# index that serves a list holds them (see ImageRow).
LIST_TESTED = ("deleted", "status", "os_hidden", "visibility", "owner", "created_at")
# The sort keys besides created_at that the indexes of a project's narrow parts (its own
# images, those shared with it: read whole, then sorted) hold too.
NARROW_SORTED = ("name", "size")
# The sort keys with list indexes of their own that can be NULL.
NULLS_FIRST = ("name", "size")
# The longest property value that PostgreSQL's ordered index of values holds (in
# characters; a btree entry holds at most about 2,700 bytes, the name is up to 255).
SHORT_VALUE = 300


def _list_columns(columns: tuple, extra: tuple = ()) -> tuple:
    # A list index: its leading columns, then those every list tests, then *extra*.
    return (*columns, *(c for c in LIST_TESTED if c not in columns), *extra)


def _not_on_postgresql(index: Index) -> Index:
    # PostgreSQL has the index of a nullable sort key in its own form (below ImageRow).
    lead = index.expressions[0]
    return index.ddl_if(dialect=("sqlite", "mysql")) if lead in NULLS_FIRST else index


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str36] = mapped_column(primary_key=True)
    name: Mapped[str255 | None]
    status: Mapped[str] = mapped_column(String(30))
    visibility: Mapped[str] = mapped_column(String(30))
    protected: Mapped[bool] = mapped_column(Boolean)
    os_hidden: Mapped[bool] = mapped_column(Boolean)
    owner: Mapped[str255 | None]
    disk_format: Mapped[str | None] = mapped_column(String(20))
    container_format: Mapped[str | None] = mapped_column(String(20))
    size: Mapped[int | None] = mapped_column(BigInteger)
    virtual_size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(32))
    os_hash_algo: Mapped[str | None] = mapped_column(String(64))
    os_hash_value: Mapped[str | None] = mapped_column(String(128))
    min_disk: Mapped[int] = mapped_column(Integer)
    min_ram: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    deleted_at: Mapped[timestamp | None]
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer)
    # The process that is writing this image's data, and until when its claim holds.
    upload_worker: Mapped[str255 | None]
    upload_lease: Mapped[timestamp | None]

    properties: Mapped[list[PropertyRow]] = relationship(lazy="raise", cascade="all, delete-orphan")
    tags: Mapped[list[TagRow]] = relationship(lazy="raise", cascade="all, delete-orphan")
    locations: Mapped[list[LocationRow]] = relationship(
        lazy="raise", cascade="all, delete-orphan", order_by="LocationRow.position"
    )

    # A list page reads its rows in sort order from one of these (the filter's column,
    # then the sort key with its tie-breakers), never sorting the matches: the
    # default sort (created_at, id), with status, owner, visibility or name fixed, and
    # the sorts by name and by size. Each also holds the columns every list tests
    # (LIST_TESTED), so a page's parts never read the table: a filter that passes over
    # many rows (a tag, a property) costs an index entry per row, not a table row too.
    # ix_images_list_id does the same for the images shared with a project, which are
    # looked up by id. (Their prefixes serve status and owner lookups.) The two a
    # project's narrow parts are read from, sorted afterwards, also hold the common
    # sort keys (NARROW_SORTED), so that sort reads no table row either. The indexes of
    # name and size, which can be NULL, order NULL as the smallest value, as lists do:
    # SQLite and MySQL do so anyway, PostgreSQL is told (see below).
    __table_args__ = tuple(
        _not_on_postgresql(Index(f"ix_images_list_{lead}", *_list_columns(columns, extra)))
        for lead, columns, extra in (
            ("created_at", ("created_at", "id"), ()),
            ("status", ("status", "created_at", "id"), ()),
            ("owner", ("owner", "created_at", "id"), NARROW_SORTED),
            ("visibility", ("visibility", "created_at", "id"), ()),
            ("name", ("name", "created_at", "id"), ()),
            ("size", ("size", "created_at", "id"), ()),
            ("id", ("id",), NARROW_SORTED),
        )
    )


# PostgreSQL orders NULL after every value in an index unless told otherwise; these
# put NULLs first, so a list sorted by name or size reads its NULLs and values in one
# range of one index in either direction, where the plain index made it read them as
# two parts (and a project's own and shared images, too many to sort for a project
# with 30,000, could not be read in that order at all).
for _lead in NULLS_FIRST:
    _lead_column, *_rest = (ImageRow.__table__.c[c] for c in _list_columns((_lead, "created_at", "id")))
    Index(f"ix_images_list_{_lead}_nulls_first", _lead_column.asc().nulls_first(), *_rest).ddl_if(dialect="postgresql")


class PropertyRow(Base):
    __tablename__ = "image_properties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str36] = mapped_column(ForeignKey("images.id"))
    name: Mapped[str255]
    value: Mapped[str] = mapped_column(_TEXT)
    # A copy of the image's created_at (which never changes): on PostgreSQL a list in
    # the default order merges a property's (or a tag's, a project's memberships') rows
    # with the images in that order, instead of testing each image it reads for one.
    image_created_at: Mapped[timestamp]

    # A property filter either tests each image a list page reads for its (name,
    # value) row, or, when few images have it, reads those images first (see
    # abbild.db.registry.FEW_TO_DRIVE): one index per database that serves both ways.
    # SQLite: (name, value, image_id), UNIQUE because SQLite takes the first unique
    # index whose columns a lookup fixes (newer indexes come first), so a test reads
    # the index alone, never the table row that (image_id, name) would need for the
    # value. PostgreSQL: a hash of the value, as its btrees cannot hold a long value
    # (a rare value's images: 29 ms -> 0.8 at 100,000 images). MariaDB: the name and
    # the value's first 255 characters.
    __table_args__ = (
        UniqueConstraint("image_id", "name"),
        Index(None, "name"),
        Index("ix_image_properties_name_value", "name", "value", "image_id", unique=True).ddl_if(dialect="sqlite"),
        Index("ix_image_properties_value", "value", postgresql_using="hash").ddl_if(dialect="postgresql"),
        # Values of at most SHORT_VALUE characters, which its btree can hold.
        Index(
            "ix_image_properties_name_value_image_created_at",
            "name",
            "value",
            "image_created_at",
            "image_id",
            postgresql_where=text(f"length(value) <= {SHORT_VALUE}"),
        ).ddl_if(dialect="postgresql"),
        Index("ix_image_properties_name_value_prefix", "name", "value", mysql_length={"value": 255}).ddl_if(
            dialect="mysql"
        ),
    )


class TagRow(Base):
    __tablename__ = "image_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str36] = mapped_column(ForeignKey("images.id"))
    value: Mapped[str255]
    # A copy of the image's created_at (which never changes), as in PropertyRow.
    image_created_at: Mapped[timestamp]

    __table_args__ = (
        UniqueConstraint("image_id", "value"),
        Index(None, "value", "image_id"),
        Index("ix_image_tags_value_image_created_at", "value", "image_created_at", "image_id").ddl_if(
            dialect="postgresql"
        ),
    )


class ChildrenRow(Base):
    """An image's properties, tags and locations as one JSON document, written with
    their own rows (which filters read), so an image or a page of them is read with one
    lookup per image. It names the image version it was written at: a document of
    another version (or none) is not used, and the rows are read instead. (A table of
    its own: in the images table it made every row three times wider, and the list
    parts that read and sort a project's rows slower.)"""

    __tablename__ = "image_children"

    image_id: Mapped[str36] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    document: Mapped[str] = mapped_column(_DOCUMENT)


class LocationRow(Base):
    __tablename__ = "image_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str36] = mapped_column(ForeignKey("images.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    store: Mapped[str255]
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(30))
    meta: Mapped[dict[str, Any]]


class MemberRow(Base):
    __tablename__ = "image_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[str36] = mapped_column(ForeignKey("images.id"), index=True)
    member: Mapped[str255]
    status: Mapped[str] = mapped_column(String(20))
    can_share: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # A copy of the image's created_at (which never changes), as in PropertyRow.
    image_created_at: Mapped[timestamp]

    # The images shared with a project, in one index range (a list's shared part); on
    # PostgreSQL also in the default list's order.
    __table_args__ = (
        UniqueConstraint("image_id", "member"),
        Index(None, "member", "deleted", "status", "image_id"),
        Index(
            "ix_image_members_member_image_created_at", "member", "deleted", "status", "image_created_at", "image_id"
        ).ddl_if(dialect="postgresql"),
    )


class OwnerLockRow(Base):
    """One row per project, locked (``SELECT ... FOR UPDATE``) while a write checks the
    project's storage quota, so that two uploads of one project finishing at the same
    time are checked one after the other."""

    __tablename__ = "owner_locks"

    owner: Mapped[str255] = mapped_column(primary_key=True)


class CacheEntryRow(Base):
    """An image in an API node's cache, or queued for it: the shared cache index."""

    __tablename__ = "cache_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str255]
    # No foreign key: an entry may outlive its image until the node's cleaner runs.
    image_id: Mapped[str36]
    state: Mapped[str] = mapped_column(String(20))
    size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(32))
    hits: Mapped[int] = mapped_column(BigInteger)
    last_accessed: Mapped[timestamp | None]
    last_modified: Mapped[timestamp]

    # The unique key serves the per-node queries too (its first column is node).
    __table_args__ = (UniqueConstraint("node", "image_id"), Index(None, "image_id"))


class LeaseRow(Base):
    """A named lease: the process that holds it (until ``expires_at``) is the one in the
    deployment that runs that periodic task."""

    __tablename__ = "leases"

    name: Mapped[str255] = mapped_column(primary_key=True)
    holder: Mapped[str255]
    expires_at: Mapped[timestamp]


class TombstoneRow(Base):
    """The id of a purged image (``abbild db purge``): never given to a new image, so a
    compute node that knows the id can never boot other data under it."""

    __tablename__ = "image_tombstones"

    id: Mapped[str36] = mapped_column(primary_key=True)
    purged_at: Mapped[timestamp]


class TaskRow(Base):
    """A task (:class:`abbild.tasks.Task`): an import's record, as the Tasks API shows
    it. ``input`` and ``result`` are JSON text, as Glance keeps them. No foreign key to
    the image: a task outlives the image it created, until it expires."""

    __tablename__ = "tasks"

    id: Mapped[str36] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(30))
    owner: Mapped[str255 | None]
    input: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    image_id: Mapped[str36 | None]
    request_id: Mapped[str255 | None]
    user_id: Mapped[str255 | None]
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    expires_at: Mapped[timestamp | None]
    version: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index(None, "owner"),
        Index(None, "image_id"),
        Index(None, "created_at", "id"),
        Index(None, "expires_at"),
    )


# -- metadata definitions (abbild.metadefs) ----------------------------------------------
#
# A namespace's children hang off its integer id, so a rename touches one row. Their
# foreign keys cascade on delete; the registry deletes the children itself as well
# (SQLite enforces foreign keys only when told to). JSON documents are kept as text,
# as Glance keeps them.


class MetadefNamespaceRow(Base):
    __tablename__ = "metadef_namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace: Mapped[str80] = mapped_column(unique=True)
    display_name: Mapped[str80 | None]
    description: Mapped[str | None] = mapped_column(String(500))
    visibility: Mapped[str] = mapped_column(String(32))
    protected: Mapped[bool] = mapped_column(Boolean)
    owner: Mapped[str255 | None]
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]
    version: Mapped[int] = mapped_column(Integer)

    # The unique key serves sorting by name; the others the list's sort keys and its
    # visibility rule, with the name as tie-breaker.
    __table_args__ = (
        Index(None, "created_at", "namespace"),
        Index(None, "updated_at", "namespace"),
        Index(None, "owner"),
        Index(None, "visibility"),
    )


class MetadefResourceTypeRow(Base):
    __tablename__ = "metadef_resource_types"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str80] = mapped_column(unique=True)
    protected: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]


class MetadefAssociationRow(Base):
    """A namespace applies to a resource type. A resource type that an association
    names cannot be deleted (no cascade on that key)."""

    __tablename__ = "metadef_associations"

    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id", ondelete="CASCADE"), primary_key=True)
    resource_type_id: Mapped[int] = mapped_column(ForeignKey("metadef_resource_types.id"), primary_key=True)
    prefix: Mapped[str80 | None]
    properties_target: Mapped[str80 | None]
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    __table_args__ = (Index(None, "resource_type_id"),)


class MetadefPropertyRow(Base):
    """One property of a namespace; ``definition`` is its JSON document."""

    __tablename__ = "metadef_properties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id", ondelete="CASCADE"))
    name: Mapped[str80]
    definition: Mapped[str] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("namespace_id", "name"),)


class MetadefObjectRow(Base):
    """An object of a namespace; ``required`` and ``properties`` are JSON documents."""

    __tablename__ = "metadef_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id", ondelete="CASCADE"))
    name: Mapped[str80]
    description: Mapped[str | None] = mapped_column(Text)
    required: Mapped[str] = mapped_column(Text)
    properties: Mapped[str] = mapped_column(Text)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    __table_args__ = (UniqueConstraint("namespace_id", "name"),)


class MetadefTagRow(Base):
    __tablename__ = "metadef_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("metadef_namespaces.id", ondelete="CASCADE"))
    name: Mapped[str80]
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp]

    __table_args__ = (UniqueConstraint("namespace_id", "name"),)
