"""INSERT ... ON CONFLICT for the database in use.

PostgreSQL (production) and SQLite (embedded default, unit tests) both have
`ON CONFLICT DO NOTHING / DO UPDATE`, but SQLAlchemy builds it from each
dialect's own `insert`; this is the one place that picks.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import Base

Insert = postgresql.Insert | sqlite.Insert


def insert_for(session: Session, table: type[Base] | Table) -> Insert:
    """An INSERT into `table` in the dialect of `session`'s database, with `on_conflict_do_*` and `excluded`."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
