"""The SQL registry: SQLAlchemy 2.x models, Alembic migrations and the registry driver."""
