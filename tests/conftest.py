"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from abbild.testing.backends import backend_unavailable

# -- SQL databases ----------------------------------------------------------------------
#
# ``sql_url`` runs a test once per database: SQLite (a file), MariaDB and PostgreSQL.
# Each pytest process (xdist worker) gets its own freshly created, migrated database per
# server, dropped at the end of the session; ``sql_registry`` hands a test an empty one.
# A server that cannot be reached skips its tests with the reason, but fails them under
# CI=true. The servers can be moved with ABBILD_TEST_MARIADB_URL and
# ABBILD_TEST_POSTGRESQL_URL (an administrative URL: any database that exists).

SQL_SERVER_URLS = {
    "mariadb": os.environ.get("ABBILD_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql"),
    "postgresql": os.environ.get("ABBILD_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
}
SQL_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.backend("mariadb")),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.backend("postgresql")),
]


def _sql_database_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"abbild_test_{worker}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def _sql_server_database(kind: str):
    """Create a uniquely named, empty database on the *kind* server; yield its URL; drop it."""
    import sqlalchemy as sa

    server_url = sa.make_url(SQL_SERVER_URLS[kind])
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = _sql_database_name()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE {name} CHARACTER SET utf8mb4" if kind == "mariadb" else f"CREATE DATABASE {name}"
            )
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = f"{kind} server at {server_url.render_as_string()} unreachable: {exc.orig}"
        backend_unavailable(reason)
    url = server_url.set(database=name)
    if kind == "mariadb":
        url = url.update_query_dict({"charset": "utf8mb4"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "postgresql" else ""))
        admin.dispose()


@contextlib.contextmanager
def _sql_database(kind: str, directory):
    if kind == "sqlite":
        yield f"sqlite:///{directory / (_sql_database_name() + '.db')}"
    else:
        with _sql_server_database(kind) as url:
            yield url


def _sql_migrate(url: str) -> None:
    from abbild.db import migrate
    from abbild.db.registry import make_engine

    engine = make_engine(url)
    try:
        migrate.sync(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session", params=SQL_BACKENDS)
def sql_url(request, tmp_path_factory):
    """URL of a migrated database, one per backend for the whole session (tables are
    shared between tests: use ``sql_registry`` for an empty one)."""
    with _sql_database(request.param, tmp_path_factory.mktemp("sql")) as url:
        _sql_migrate(url)
        yield url


@pytest.fixture(params=SQL_BACKENDS)
def sql_blank_url(request, tmp_path):
    """URL of a brand-new database without any tables, for migration tests."""
    with _sql_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def sql_session_registry(sql_url):
    """One ``SQLRegistry`` per database for the session (engines are costly to start)."""
    from abbild.db.registry import SQLRegistry

    registry = SQLRegistry(url=sql_url)
    yield registry
    registry.close()


@pytest.fixture
def sql_registry(sql_session_registry):
    """The session's ``SQLRegistry`` on ``sql_url``, emptied first: as freshly migrated,
    with nothing but the rows the migrations seed (the core metadef resource types)."""
    from abbild.db.models import Base, MetadefResourceTypeRow
    from abbild.image import utcnow
    from abbild.metadefs import CORE_RESOURCE_TYPES

    with sql_session_registry.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
        now = utcnow()
        conn.execute(
            MetadefResourceTypeRow.__table__.insert(),
            [{"name": name, "protected": True, "created_at": now, "updated_at": now} for name in CORE_RESOURCE_TYPES],
        )
    return sql_session_registry
