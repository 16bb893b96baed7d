"""Engines and sessions, one engine per process and database URL; work run after a COMMIT."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from app.config import get_settings

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # WAL lets the endpoint read while a worker child writes; busy_timeout makes
    # concurrent writers (prefork children, beat jobs) wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: DATABASE_URL), created once per process."""
    url = url or get_settings().database_url
    if url not in _ENGINES:
        _ENGINES[url] = _create_engine(url)
    return _ENGINES[url]


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    settings = get_settings()
    # Bounded waits: an unreachable server fails the connect, and a hung query
    # (a lock never released, a server stalled mid-statement) is cancelled by
    # the server, so a pool child is never wedged; both surface as
    # OperationalError, which the event task retries.
    statement_timeout_ms = int(settings.database_statement_timeout_seconds * 1000)
    connect_args = {
        "connect_timeout": settings.database_connect_timeout_seconds,
        "options": f"-c statement_timeout={statement_timeout_ms}",
    }
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=1800, connect_args=connect_args
    )


def dispose_engines() -> None:
    """Drop this process's pooled connections; a forked child must not share its parent's."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)


_SESSION_FACTORIES: dict[Engine, sessionmaker[Session]] = {}


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    engine = engine or get_engine()
    if engine not in _SESSION_FACTORIES:
        _SESSION_FACTORIES[engine] = sessionmaker(bind=engine, expire_on_commit=False)
    with _SESSION_FACTORIES[engine]() as session, session.begin():
        yield session


def check_database(engine: Engine | None = None) -> dict[str, Any]:
    """Whether the database answers `SELECT 1`, and how fast; never raises."""
    started = time.perf_counter()
    try:
        with (engine or get_engine()).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; the reason is reported
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_seconds": round(time.perf_counter() - started, 4)}


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction commits; never if it rolls back."""
    session.info.setdefault("on_commit", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    # Every callback runs even if one fails: the transaction is committed and
    # the message will be acknowledged, so skipping the rest would lose them.
    for callback in session.info.pop("on_commit", []):
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed", extra={"callback": getattr(callback, "__qualname__", "")})


@event.listens_for(Session, "after_rollback")
def _drop_on_commit(session: Session) -> None:
    session.info.pop("on_commit", None)


def transaction_clock(session: Session) -> float:
    """Unix time of the session's transaction on the database's clock: one clock for every host.

    On PostgreSQL `now()`, the transaction's start: whatever the transaction
    reads next was committed no earlier. SQLite serves one host alone, so
    the process's clock is that host's only clock.
    """
    if session.get_bind().dialect.name != "postgresql":
        return time.time()
    return float(session.execute(text("SELECT extract(epoch FROM now())")).scalar_one())
