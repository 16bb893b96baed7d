"""The database: SQLAlchemy 2 models and sessions; migrations live in alembic/."""
