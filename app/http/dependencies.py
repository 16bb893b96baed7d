"""What the routes are given: settings, engine and session, as FastAPI dependencies tests can override."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.session import get_engine, session_scope


def settings_dependency() -> Settings:
    """The settings (a dependency, so tests can override it)."""
    return get_settings()


def engine_dependency() -> Engine:
    """The database engine (a dependency, so tests can override it)."""
    return get_engine()


def session_dependency(engine: Annotated[Engine, Depends(engine_dependency)]) -> Iterator[Session]:
    """A session for one request."""
    with session_scope(engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(settings_dependency)]
EngineDep = Annotated[Engine, Depends(engine_dependency)]
SessionDep = Annotated[Session, Depends(session_dependency)]
