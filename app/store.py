"""Persist events: one INSERT ... ON CONFLICT DO NOTHING ... RETURNING per batch.

Only the events that come back from RETURNING are new; everything else was
stored before (a redelivery) and must not be counted again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, TextClause, exists, func, select, text
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.orm import Session

from app.db.models import MetricEvent, RejectedEvent
from app.db.upsert import insert_for
from app.kinds import kind_of
from panic_metrics_client.events import Event
from panic_metrics_client.parsing import InvalidEvent

_TABLE = cast("Table", MetricEvent.__table__)
_COLUMNS = tuple(column.key for column in _TABLE.columns if column.key != "stored_at")
#: Every column empty: copied for each row (a copy costs a fifth of building it anew, 36 keys each time).
_EMPTY_ROW: dict[str, Any] = dict.fromkeys(_COLUMNS)


def event_row(event: Event, *, published_at: datetime | None, stored_by: uuid.UUID | None = None) -> dict[str, Any]:
    """The `metric_events` row of one event, every column present (its kind's own from app.kinds)."""
    row = _EMPTY_ROW.copy()
    row.update(
        event_id=event.event_id,
        kind=event.kind,
        occurred_at=event.occurred_at,
        published_at=published_at,
        stored_by=stored_by,
    )
    row.update(kind_of(event).row(event))
    return row


def insert_new(
    session: Session, events: Sequence[Event], *, published_at: datetime | None, stored_by: uuid.UUID | None = None
) -> set[uuid.UUID]:
    """Insert `events` (unique event_ids) in one statement; return the ids that were not stored before.

    `stored_by` (the ingest attempt's token) is written into every new row;
    on PostgreSQL the same statement first takes its lock (`lock_attempt`),
    held from before any row is inserted until the transaction ends.
    """
    # In event_id order: each inserted row holds its unique-index entry until
    # COMMIT, so two workers inserting overlapping ids in opposite orders would
    # each wait for the other, and PostgreSQL would abort one as a deadlock.
    ordered = sorted(events, key=lambda e: e.event_id)
    rows = [event_row(e, published_at=published_at, stored_by=stored_by) for e in ordered]
    if session.get_bind().dialect.name == "postgresql":
        # A deliberate fast path beside app.db.upsert: one array per column,
        # so the statement text is the same for any batch size, and psycopg
        # prepares it once and skips re-parsing 3,000 placeholders.
        columns: dict[str, Any] = {name: [row[name] for row in rows] for name in _COLUMNS}
        if stored_by is None:
            return set(session.connection().execute(_PG_UNNEST_INSERT, columns).scalars())
        columns["lock_key"] = _lock_key(stored_by)
        return set(session.connection().execute(_PG_LOCKED_UNNEST_INSERT, columns).scalars())
    statement = (
        insert_for(session, _TABLE).on_conflict_do_nothing(index_elements=["event_id"]).returning(_TABLE.c.event_id)
    )
    return set(session.connection().execute(statement, rows).scalars())


def _pg_unnest_insert(*, locked: bool) -> TextClause:
    dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves dialect constructors untyped
    arrays = {name: f"CAST(:{name} AS {_TABLE.c[name].type.compile(dialect=dialect)}[])" for name in _COLUMNS}
    # Column names and types come from the model, never from input.
    insert = f"INSERT INTO {_TABLE.name} ({', '.join(_COLUMNS)}) "
    conflict = "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    if not locked:
        return text(f"{insert}SELECT * FROM unnest({', '.join(arrays.values())}) {conflict}")  # noqa: S608 - see above
    # The attempt's lock in the insert's own round trip (a SELECT of its own
    # was one more per message). unnest reads its arrays from the CTE's one
    # row, the row that takes the lock: by that dependency the lock is held
    # before any row is inserted, whatever the plan, even when none is.
    # MATERIALIZED (implied by the volatile call, said anyway) keeps the CTE whole.
    batch = ", ".join(f"{cast} AS {name}" for name, cast in arrays.items())
    columns = ", ".join(f"batch.{name}" for name in _COLUMNS)
    return text(
        "WITH batch AS MATERIALIZED ("  # noqa: S608 - see above
        f"SELECT pg_advisory_xact_lock(CAST(:lock_key AS bigint)) AS attempt_lock, {batch}) "
        f"{insert}SELECT u.* FROM batch, unnest({columns}) AS u {conflict}"
    )


_PG_UNNEST_INSERT = _pg_unnest_insert(locked=False)
#: The same insert, first taking the lock of `lock_attempt` on `:lock_key` (`_lock_key` of the attempt's token).
_PG_LOCKED_UNNEST_INSERT = _pg_unnest_insert(locked=True)


def insert_rejections(
    session: Session, rejections: Sequence[tuple[int, InvalidEvent, Any]], *, message_id: str, stored_by: uuid.UUID
) -> set[int]:
    """Keep rejected payloads, keyed by (message, position); return the positions not kept before."""
    if not rejections:
        return set()
    rows = [
        {
            "message_id": _text(message_id),
            "position": position,
            "kind": _text(invalid.kind)[:32],
            "reason": _text(invalid.reason)[:64],
            "detail": _text(invalid.detail),
            "payload": json.dumps(payload, default=str),  # JSON escapes NUL itself
            "stored_by": stored_by,
        }
        for position, invalid, payload in rejections
    ]
    statement = insert_for(session, RejectedEvent).on_conflict_do_nothing().returning(RejectedEvent.position)
    return set(session.connection().execute(statement, rows).scalars())


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a hostile payload puts one in a
    # field name that the rejection's detail then quotes: the whole message
    # failed to store. Kept visible, escaped.
    return value.replace("\x00", "\\x00")


def lock_attempt(session: Session, token: uuid.UUID) -> None:
    """Tie `token` to this transaction: `attempt_committed` waits for it to end (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_lock_key(token))))


def attempt_committed(session: Session, token: uuid.UUID) -> bool:
    """Whether the ingest attempt `token` committed: some row it inserted is there.

    On PostgreSQL it first waits for the attempt's own transaction to end (an
    advisory lock the attempt held), so a COMMIT still in flight from a dead
    or cut-off client is never taken for a rollback.
    """
    lock_attempt(session, token)
    stored = select(exists().where(MetricEvent.stored_by == token))
    rejected = select(exists().where(RejectedEvent.stored_by == token))
    return bool(session.execute(stored).scalar()) or bool(session.execute(rejected).scalar())


def resolve_attempt(token: uuid.UUID, _expected_rows: int) -> bool:
    """`attempt_committed` on a session of its own: the resolver the compactor is given."""
    from app.db.session import session_scope

    with session_scope() as session:
        return attempt_committed(session, token)


def _lock_key(token: uuid.UUID) -> int:
    return int.from_bytes(token.bytes[:8], "big", signed=True)
