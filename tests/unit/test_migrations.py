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
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
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
    assert migrate.head() == "0002"


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


def test_comparison_sees_a_difference(engine):
    """The two checks above can fail: a model the migrations do not build is reported."""
    metadata = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    sa.Table("images", metadata, sa.Column("extra", sa.Integer), extend_existing=True)
    assert [diff[0] for diff in schema_differences(engine, metadata)] == ["add_column"]
