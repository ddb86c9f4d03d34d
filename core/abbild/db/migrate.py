"""Schema migrations with Alembic, driven programmatically (no alembic.ini to find)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", "abbild.db:migrations")
    config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def sync(engine, revision: str = "head") -> str | None:
    """Upgrade the database to *revision*; returns the revision it is at afterwards."""
    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)
    return current(engine)


def downgrade(engine, revision: str) -> str | None:
    """Take the database back to *revision* (an upgrade that has to be undone);
    returns the revision it is at afterwards."""
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)
    return current(engine)
