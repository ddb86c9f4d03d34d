"""Alembic migrations: they build exactly the schema of ``abbild.db.models``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from abbild.db import migrate
from abbild.db.models import Base
from abbild.db.registry import make_engine


@pytest.fixture
def blank_engine(sql_blank_url):
    engine = make_engine(sql_blank_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(sql_url):
    engine = make_engine(sql_url)
    yield engine
    engine.dispose()


def schema_differences(engine, metadata=Base.metadata) -> list:
    # The models' indexes for one database only (copies of the tables lose the mark).
    only_on = {
        index.name: index._ddl_if.dialect
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index._ddl_if is not None
    }

    def built_here(obj, name, type_, reflected, compare_to) -> bool:
        dialects = only_on.get(name, engine.dialect.name)
        return type_ != "index" or engine.dialect.name in ((dialects,) if isinstance(dialects, str) else dialects)

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True, "include_object": built_here}
        )
        return compare_metadata(context, metadata)


def collations(engine) -> tuple[dict, dict]:
    """Text column collations ``{(table, column): collation}``, declared by the models
    and found in the database. Alembic's comparison ignores them, yet on MySQL/MariaDB
    they decide whether "Ubuntu" equals "ubuntu"."""
    text_columns = [
        (table.name, column)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, sa.String)
    ]
    declared = {
        (table, column.name): getattr(column.type.dialect_impl(engine.dialect), "collation", None)
        for table, column in text_columns
    }
    inspector = sa.inspect(engine)
    reflected = {table: {c["name"]: c["type"] for c in inspector.get_columns(table)} for table in Base.metadata.tables}
    found = {
        (table, column.name): getattr(reflected[table][column.name], "collation", None)
        for table, column in text_columns
    }
    return declared, found


def test_head_is_the_latest_revision():
    assert migrate.head() == "0015"


def test_sync_empty_database(blank_engine):
    assert migrate.current(blank_engine) is None
    assert sa.inspect(blank_engine).get_table_names() == []
    assert migrate.sync(blank_engine) == migrate.head()
    assert migrate.current(blank_engine) == migrate.head()
    assert set(sa.inspect(blank_engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_differences(blank_engine) == []


def test_sync_is_idempotent(engine):
    assert migrate.sync(engine) == migrate.head()
    assert migrate.sync(engine) == migrate.head()


def test_schema_matches_models(engine):
    assert migrate.current(engine) == migrate.head()
    assert schema_differences(engine) == []


def test_collations_match_models(engine):
    declared, found = collations(engine)
    assert found == declared
    if engine.dialect.name == "mysql":
        assert declared[("image_tags", "value")] == declared[("image_properties", "value")] == "utf8mb4_bin"
        for names in (
            ("metadef_namespaces", "namespace"),
            ("metadef_tags", "name"),
            ("metadef_resource_types", "name"),
        ):
            assert declared[names] == "utf8mb4_bin"


def test_comparison_sees_a_difference(engine):
    """The two checks above can fail: a model the migrations do not build is reported."""
    metadata = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    sa.Table("images", metadata, sa.Column("extra", sa.Integer), extend_existing=True)
    assert [diff[0] for diff in schema_differences(engine, metadata)] == ["add_column"]


# The tables each revision after 0002 adds.
_ADDED = {
    "0003": ("cache_entries",),
    "0004": ("leases",),
    "0005": ("image_tombstones",),
    "0006": ("tasks",),
    "0007": (
        "metadef_namespaces",
        "metadef_resource_types",
        "metadef_associations",
        "metadef_properties",
        "metadef_objects",
        "metadef_tags",
    ),
    "0010": ("image_children",),
}


def _at(revision: str) -> sa.MetaData:
    """The models' schema as *revision* (0002 or later) builds it."""
    metadata = sa.MetaData()
    later = {table for added_by, tables in _ADDED.items() if added_by > revision for table in tables}
    for each in Base.metadata.sorted_tables:
        if each.name not in later:
            each.to_metadata(metadata)
    if revision < "0015":
        _without_image_created_at(metadata)
    if revision < "0014":
        _without_nulls_first(metadata)
    if revision < "0013":
        _without_property_filter_indexes(metadata)
    if revision < "0012":
        _without_narrow_sort_keys(metadata)
    if revision < "0011":
        _without_covering_indexes(metadata)
    if revision < "0008":
        _without_list_indexes(metadata)
    return metadata


def _without_image_created_at(metadata: sa.MetaData) -> None:
    """The tables before 0015: tags, properties and members without their image's created_at."""
    children = _migration("0015")
    for name, table_name, _, _ in children.INDEXES:
        table = metadata.tables[table_name]
        table.indexes.discard(next(i for i in table.indexes if i.name == name))
    for table_name in children.TABLES:
        table = metadata.tables[table_name]
        table._columns.remove(table.c.image_created_at)


def _without_nulls_first(metadata: sa.MetaData) -> None:
    """The indexes before 0014: PostgreSQL's of name and size as on the other databases."""
    images = metadata.tables["images"]
    for lead in _migration("0014").LEADS:
        images.indexes.discard(next(i for i in images.indexes if i.name == f"ix_images_list_{lead}_nulls_first"))


def _without_property_filter_indexes(metadata: sa.MetaData) -> None:
    """The indexes before 0013: image_properties without those of names and values."""
    properties = metadata.tables["image_properties"]
    for _, name, _, _ in _migration("0013").INDEXES:
        properties.indexes.discard(next(i for i in properties.indexes if i.name == name))


def _without_narrow_sort_keys(metadata: sa.MetaData) -> None:
    """The indexes before 0012: those of a project's narrow parts without name and size."""
    images = metadata.tables["images"]
    narrow = _migration("0012")
    for name, columns in narrow.CHANGES:
        images.indexes.discard(next(i for i in images.indexes if i.name == name))
        sa.Index(name, *(images.c[c] for c in [*columns, *(c for c in narrow.TESTED if c not in columns)]))


def _without_covering_indexes(metadata: sa.MetaData) -> None:
    """The indexes before 0011: 0008's on images, without the covering ones."""
    images = metadata.tables["images"]
    for old, new, columns in _migration("0011").CHANGES:
        images.indexes.discard(next(i for i in images.indexes if i.name == new))
        if old is not None:
            sa.Index(old, *(images.c[c] for c in columns))


def _without_list_indexes(metadata: sa.MetaData) -> None:
    """The indexes before 0008: what it replaced, without what it added."""
    list_indexes = _migration("0008")
    for table_name, old, old_columns, new, _ in list_indexes.CHANGES:
        table = metadata.tables[table_name]
        table.indexes.discard(next(i for i in table.indexes if i.name == new))
        if old is not None:
            sa.Index(old, *(table.c[c] for c in old_columns))


def _name_of(engine, image_id: str) -> str:
    """The name in an image's row, read without the registry (which reads the head's
    schema)."""
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT name FROM images WHERE id = :id"), {"id": image_id})


def _migration(revision: str):
    from alembic.script import ScriptDirectory

    from abbild.db.migrate import _config

    return ScriptDirectory.from_config(_config()).get_revision(revision).module


def test_cache_index_upgrade_and_downgrade(blank_engine):
    """0003 adds the cache index to a database at 0002 that holds images, and takes it
    away again; the images stay. (The images are made at the head: the registry writes
    the head's schema.)"""
    from abbild.db.registry import SQLRegistry
    from abbild.image import Image
    from abbild.registry import CacheEntry

    assert migrate.sync(blank_engine) == migrate.head()
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        image = registry.create_image(Image(id="9b1c0d2e-0000-4000-8000-000000000001", name="kept"))
        assert migrate.downgrade(blank_engine, "0002") == "0002"
        assert schema_differences(blank_engine, _at("0002")) == []
        assert migrate.sync(blank_engine, "0003") == "0003"
        assert schema_differences(blank_engine, _at("0003")) == []
        registry.cache_put(CacheEntry("http://api:9292", image.id))

        assert migrate.downgrade(blank_engine, "0002") == "0002"
        assert "cache_entries" not in sa.inspect(blank_engine).get_table_names()
        assert schema_differences(blank_engine, _at("0002")) == []
        assert _name_of(blank_engine, image.id) == "kept"

        assert migrate.sync(blank_engine) == migrate.head()
        assert schema_differences(blank_engine) == []
        assert registry.cache_entries() == []
    finally:
        registry.close()


def test_tombstones_upgrade_and_downgrade(blank_engine):
    """0005 adds the tombstones to a database at 0004 that holds a deleted image; a purge
    then leaves a tombstone, and a downgrade drops the tombstones (and only them): the
    purged id is free again, the other images stay."""
    import datetime

    from abbild.db.registry import SQLRegistry
    from abbild.errors import DuplicateImage
    from abbild.image import Image, Status, utcnow

    assert migrate.sync(blank_engine) == migrate.head()
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        kept = registry.create_image(Image(id="9b1c0d2e-0000-4000-8000-000000000001", name="kept"))
        purged = registry.create_image(Image(id="9b1c0d2e-0000-4000-8000-000000000002", name="purged"))
        registry.update_image(purged.id, lambda i: i.transition(Status.DELETED))
        assert migrate.downgrade(blank_engine, "0004") == "0004"
        assert schema_differences(blank_engine, _at("0004")) == []
        assert migrate.sync(blank_engine) == migrate.head()
        assert schema_differences(blank_engine) == []
        assert registry.purge(utcnow() + datetime.timedelta(days=1))["images"] == 1
        with pytest.raises(DuplicateImage):
            registry.create_image(Image(id=purged.id))

        assert migrate.downgrade(blank_engine, "0004") == "0004"
        assert "image_tombstones" not in sa.inspect(blank_engine).get_table_names()
        assert schema_differences(blank_engine, _at("0004")) == []
        assert _name_of(blank_engine, kept.id) == "kept"

        assert migrate.sync(blank_engine) == migrate.head()
        assert schema_differences(blank_engine) == []
        assert registry.create_image(Image(id=purged.id, name="again")).name == "again"
    finally:
        registry.close()


def test_tasks_upgrade_and_downgrade(blank_engine):
    """0006 adds the tasks to a database at 0005 that holds an image, and takes them
    away again; the image stays, and a new task after the upgrade reads back."""
    from abbild.db.registry import SQLRegistry
    from abbild.errors import TaskNotFound
    from abbild.image import Image
    from abbild.tasks import Task

    assert migrate.sync(blank_engine) == migrate.head()  # the registry writes the head's schema
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        image = registry.create_image(Image(id="9b1c0d2e-0000-4000-8000-000000000001", name="kept"))
        task = registry.create_task(Task(id="9b1c0d2e-0000-4000-8000-0000000000aa", type="import", image_id=image.id))
        assert migrate.downgrade(blank_engine, "0006") == "0006"
        assert migrate.downgrade(blank_engine, "0005") == "0005"
        assert "tasks" not in sa.inspect(blank_engine).get_table_names()
        assert schema_differences(blank_engine, _at("0005")) == []
        assert _name_of(blank_engine, image.id) == "kept"

        assert migrate.sync(blank_engine, "0006") == "0006"
        assert schema_differences(blank_engine, _at("0006")) == []
        with pytest.raises(TaskNotFound):
            registry.get_task(task.id)
        registry.create_task(task)
        assert registry.tasks_of_image(image.id)[0].id == task.id
    finally:
        registry.close()


def test_metadefs_upgrade_and_downgrade(blank_engine):
    """0007 adds the metadefs tables to a database at 0006 that holds an image, seeded
    with the core resource types (protected, as Glance seeds them); a downgrade drops
    the tables and what they hold, the image stays; an upgrade seeds them again."""
    from abbild.db.models import MetadefResourceTypeRow
    from abbild.db.registry import SQLRegistry
    from abbild.errors import MetadefNotFound
    from abbild.image import Image, utcnow
    from abbild.metadefs import CORE_RESOURCE_TYPES, Association, Namespace

    assert migrate.sync(blank_engine) == migrate.head()  # the registry writes the head's schema
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        image = registry.create_image(Image(id="9b1c0d2e-0000-4000-8000-000000000001", name="kept"))
        assert migrate.downgrade(blank_engine, "0006") == "0006"
        before = utcnow()
        assert migrate.sync(blank_engine, "0007") == "0007"
        assert schema_differences(blank_engine, _at("0007")) == []
        with blank_engine.connect() as conn:
            seeded = conn.execute(sa.select(MetadefResourceTypeRow)).all()
        assert sorted(row.name for row in seeded) == sorted(CORE_RESOURCE_TYPES)
        assert all(row.protected and before <= row.created_at == row.updated_at <= utcnow() for row in seeded)
        assert [t.name for t in registry.list_resource_types()] == sorted(CORE_RESOURCE_TYPES)
        registry.create_namespace(Namespace("OS::Compute::Watchdog", associations=[Association("OS::Trove::Instance")]))

        assert migrate.downgrade(blank_engine, "0006") == "0006"
        assert not {t for t in sa.inspect(blank_engine).get_table_names() if t.startswith("metadef_")}
        assert schema_differences(blank_engine, _at("0006")) == []
        assert _name_of(blank_engine, image.id) == "kept"

        assert migrate.sync(blank_engine) == migrate.head()
        with pytest.raises(MetadefNotFound):
            registry.get_namespace("OS::Compute::Watchdog")
        assert [t.name for t in registry.list_resource_types()] == sorted(CORE_RESOURCE_TYPES)
    finally:
        registry.close()


@pytest.mark.parametrize(
    "before, revision",
    [("0007", "0008"), ("0010", "0011"), ("0011", "0012"), ("0012", "0013"), ("0013", "0014"), ("0014", "0015")],
)
def test_list_indexes_upgrade_and_downgrade(blank_engine, before, revision):
    """0008 swaps the list indexes on a database at 0007 that holds images (shared, with
    a member, tagged, with a property), and back again, as 0011 swaps them for covering
    ones, 0012 adds sort keys to two, 0013 indexes property values, 0014 puts
    NULLs first in PostgreSQL's indexes of name and size and 0015 gives tags,
    properties and members their image's created_at (filled in from the images); the
    images and lists, a member's and an administrator's, stay. (The images are made and listed at the head: the registry
    reads and writes the head's schema.)"""
    from abbild.db.registry import SQLRegistry
    from abbild.image import Image
    from abbild.registry import ImageFilters, Viewer

    assert migrate.sync(blank_engine) == migrate.head()
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        image = registry.create_image(
            Image(
                id="9b1c0d2e-0000-4000-8000-000000000001",
                name="kept",
                owner="a",
                tags={"golden"},
                properties={"os_distro": "debian"},
            )
        )
        registry.add_member(image.id, "b")
        registry.set_member_status(image.id, "b", "accepted")
        member, admin = Viewer(project_id="b"), Viewer(is_admin=True)

        def listed(**filters):
            pages = [registry.list_images(ImageFilters(**filters), [], 10, viewer=v) for v in (member, admin)]
            assert pages[0] == pages[1]
            return [i.id for i in pages[0]]

        assert migrate.downgrade(blank_engine, before) == before
        assert schema_differences(blank_engine, _at(before)) == []
        assert migrate.sync(blank_engine, revision) == revision
        assert schema_differences(blank_engine, _at(revision)) == []
        assert migrate.sync(blank_engine) == migrate.head()
        assert listed() == listed(tags=["golden"]) == listed(properties={"os_distro": "debian"}) == [image.id]
        assert listed(properties={"os_distro": "fedora"}) == []

        assert migrate.downgrade(blank_engine, before) == before
        assert schema_differences(blank_engine, _at(before)) == []
        assert migrate.sync(blank_engine) == migrate.head()
        assert schema_differences(blank_engine) == []
        assert listed() == listed(tags=["golden"]) == listed(properties={"os_distro": "debian"}) == [image.id]
        assert listed(properties={"os_distro": "fedora"}) == []
    finally:
        registry.close()


def test_property_statistics_upgrade_and_downgrade(blank_engine):
    """0009 gives PostgreSQL statistics of image_properties' (name, value) pairs, and
    takes them back; elsewhere it changes nothing."""

    def statistics() -> list[str]:
        if blank_engine.dialect.name != "postgresql":
            return []
        with blank_engine.connect() as conn:
            return list(conn.scalars(sa.text("SELECT stxname FROM pg_statistic_ext ORDER BY stxname")))

    assert migrate.sync(blank_engine, "0008") == "0008"
    assert statistics() == []
    assert migrate.sync(blank_engine, "0009") == "0009"
    expected = ["image_properties_name_value"] if blank_engine.dialect.name == "postgresql" else []
    assert statistics() == expected
    assert schema_differences(blank_engine, _at("0009")) == []
    assert migrate.downgrade(blank_engine, "0008") == "0008"
    assert statistics() == []


def test_children_documents_upgrade_and_downgrade(blank_engine):
    """0010 writes each image's children document from its properties, tags and
    locations (more images than one batch of its), and a downgrade drops them; the
    images read back the same before and after."""
    from abbild.db.registry import SQLRegistry, children_document
    from abbild.image import Image, Location

    children_documents = _migration("0010")
    assert migrate.sync(blank_engine) == migrate.head()
    registry = SQLRegistry(url=blank_engine.url.render_as_string(hide_password=False))
    try:
        made = [
            registry.create_image(
                Image(
                    id=f"9b1c0d2e-0000-4000-8000-{n:012d}",
                    name=f"image {n}",
                    properties={"os_distro": "débian", "n": str(n)} if n % 3 else {},
                    tags={"golden", f"t{n}"} if n % 2 else set(),
                    locations=[
                        Location("local", f"file:///images/{n}/{i}", 10 + i, "active", {"i": i, "deep": {"x": [n]}})
                        for i in range(n % 3)
                    ],
                )
            )
            for n in range(children_documents.BATCH + 5)
        ]
        images = {i.id: registry.get_image(i.id) for i in made}
        assert migrate.downgrade(blank_engine, "0009") == "0009"
        assert schema_differences(blank_engine, _at("0009")) == []

        assert migrate.sync(blank_engine) == migrate.head()
        assert schema_differences(blank_engine) == []
        with blank_engine.connect() as conn:
            documents = dict(conn.execute(sa.text("SELECT image_id, document FROM image_children")).all())
        assert documents == {i.id: children_document(i) for i in images.values()}
        assert {i.id: registry.get_image(i.id) for i in made} == images
    finally:
        registry.close()


def test_nulls_first_indexes_upgrade_and_downgrade(blank_engine):
    """0014 puts NULLs first in PostgreSQL's list indexes of name and size, and takes
    them back; elsewhere it changes nothing."""

    def sorting() -> dict:
        indexes = sa.inspect(blank_engine).get_indexes("images")
        return {
            index["name"]: index.get("column_sorting", {})
            for index in indexes
            if index["name"].startswith(("ix_images_list_name", "ix_images_list_size"))
        }

    plain = {"ix_images_list_name": {}, "ix_images_list_size": {}}
    migrate.sync(blank_engine)
    if blank_engine.dialect.name == "postgresql":
        assert sorting() == {
            "ix_images_list_name_nulls_first": {"name": ("nulls_first",)},
            "ix_images_list_size_nulls_first": {"size": ("nulls_first",)},
        }
    else:
        assert sorting() == plain
    assert migrate.downgrade(blank_engine, "0013") == "0013"
    assert sorting() == plain
    assert migrate.sync(blank_engine) == migrate.head()
    assert schema_differences(blank_engine) == []
