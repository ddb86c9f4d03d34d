"""Alembic environment: run by ``abbild db sync`` with a connection already open."""

from alembic import context

from abbild.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
