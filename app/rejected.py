"""Rejected payloads, kept: list them, and replay them once the cause is fixed.

Each payload that failed validation is stored once in `rejected_events`
(keyed by message and position, see app.ingest) with its kind, reason and
the payload itself. A replay publishes the chosen payloads again as events
(app.replay) and deletes their rows once the broker has them: a payload
still invalid is rejected, and kept, again; a valid one is stored and
counted like any event. Repeating a replay is safe: payloads keep their
event_ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, select, true, tuple_
from sqlalchemy.orm import Session

from app.db.models import RejectedEvent
from app.dead_letters import REPLAY_BATCH, Publish

SessionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Selection:
    """Which rejected payloads an operator means: by id (message:position), reason and/or kind."""

    ids: Sequence[tuple[str, int]] = ()
    reason: str | None = None
    kind: str | None = None

    def where(self) -> ColumnElement[bool]:
        """The SQL condition of this selection (everything when empty)."""
        conditions: list[ColumnElement[bool]] = []
        if self.ids:
            conditions.append(tuple_(RejectedEvent.message_id, RejectedEvent.position).in_(list(self.ids)))
        if self.reason is not None:
            conditions.append(RejectedEvent.reason == self.reason)
        if self.kind is not None:
            conditions.append(RejectedEvent.kind == self.kind)
        return and_(true(), *conditions)


def parse_id(text: str) -> tuple[str, int]:
    """`<message id>:<position>` as `rejected list` prints it."""
    message_id, _, position = text.rpartition(":")
    if not message_id or not position.isdigit():
        raise ValueError(f"not a rejected event id (message:position): {text!r}")
    return message_id, int(position)


def list_rejected(session: Session, selection: Selection, *, limit: int = 100) -> list[RejectedEvent]:
    """The selected rejected payloads, newest first."""
    query = (
        select(RejectedEvent)
        .where(selection.where())
        .order_by(RejectedEvent.rejected_at.desc(), RejectedEvent.message_id, RejectedEvent.position)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def as_event(row: RejectedEvent) -> Any:
    """The `record_events` item of one rejected payload, naming its kind where it was known."""
    payload = json.loads(row.payload)
    if isinstance(payload, dict) and "kind" not in payload and row.kind != "unknown":
        return {**payload, "kind": row.kind}
    return payload


def replay_rejected(session_factory: SessionFactory, publish: Publish, selection: Selection) -> int:
    """Publish the selected payloads as events, then delete their rows; how many were replayed.

    The selection is fixed when the replay starts: a payload rejected again
    meanwhile (under a new message id) waits for the next replay.
    """
    key = tuple_(RejectedEvent.message_id, RejectedEvent.position)
    with session_factory() as session:
        chosen = [
            (m, p)
            for m, p in session.execute(
                select(RejectedEvent.message_id, RejectedEvent.position).where(selection.where())
            )
        ]
    replayed = 0
    for start in range(0, len(chosen), REPLAY_BATCH):
        with session_factory() as session:
            rows = list(
                session.execute(
                    select(RejectedEvent)
                    .where(key.in_(chosen[start : start + REPLAY_BATCH]))
                    .order_by(RejectedEvent.message_id, RejectedEvent.position)
                ).scalars()
            )
            if rows:
                # Deleted only once the broker has them; a crash in between replays them again (event ids dedupe).
                publish([as_event(row) for row in rows], None)
                session.execute(delete(RejectedEvent).where(key.in_([(r.message_id, r.position) for r in rows])))
                replayed += len(rows)
    return replayed
