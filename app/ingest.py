"""Validate, persist, then count: the path of every event through the worker.

Knows nothing of Celery: tasks call `ingest` and turn `DatabaseUnavailable`
into a retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.db.session import session_scope
from app.metrics import counting
from app.metrics.labels import LabelCaps
from app.store import insert_new, on_commit
from panic_metrics_client.events import Event, InvalidEvent, parse_any_event, parse_event

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the events are intact and may be retried."""


@dataclass(frozen=True)
class IngestResult:
    """What became of one message's payloads."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


_caps: LabelCaps | None = None


def _label_caps() -> LabelCaps:
    global _caps  # noqa: PLW0603 - one cache of admitted label values per process
    if _caps is None:
        _caps = LabelCaps()
    return _caps


def reset_label_caps() -> None:
    """Forget this process's admitted label values (tests, settings changes)."""
    global _caps  # noqa: PLW0603 - see _label_caps
    _caps = None


def validate(payloads: Sequence[Any], *, kind: str | None) -> tuple[list[Event], list[InvalidEvent]]:
    """Split payloads into valid events and rejections; `kind=None` reads each payload's own kind."""
    events: list[Event] = []
    rejections: list[InvalidEvent] = []
    for payload in payloads:
        try:
            events.append(parse_any_event(payload) if kind is None else parse_event(kind, payload))
        except InvalidEvent as invalid:
            rejections.append(invalid)
    return events, rejections


def _unique(events: Sequence[Event]) -> tuple[list[Event], list[Event]]:
    seen: set[Any] = set()
    unique: list[Event] = []
    repeated: list[Event] = []
    for event in events:
        (repeated if event.event_id in seen else unique).append(event)
        seen.add(event.event_id)
    return unique, repeated


def store_and_count(session: Session, *, events: Sequence[Event], published_at: datetime | None) -> IngestResult:
    """Store `events` in the session's transaction; count the new ones once it commits."""
    unique, repeated = _unique(events)
    inserted = insert_new(session, unique, published_at=published_at) if unique else set()
    new = [e for e in unique if e.event_id in inserted]
    duplicates = [e for e in unique if e.event_id not in inserted] + repeated
    caps = _label_caps()
    labelled = [(event, counting.capped_labels(session, caps, event)) for event in new]

    def count() -> None:
        stored_at = counting.now()
        for event, labels in labelled:
            counting.count_stored(event, labels, published_at=published_at, stored_at=stored_at)
        for event in duplicates:
            counting.count_duplicate(event.kind)
            log.info("duplicate event", extra={"event_id": str(event.event_id), "kind": event.kind})

    on_commit(session, count)
    return IngestResult(stored=len(new), duplicates=len(duplicates))


def reject(invalid: InvalidEvent) -> None:
    """Log and count one rejected payload; it is never retried."""
    log.warning(
        "event rejected",
        extra={"kind": invalid.kind, "reason": invalid.reason, "detail": invalid.detail, "event_id": invalid.event_id},
    )
    counting.count_rejected(invalid)


def ingest(
    payloads: Sequence[Any],
    *,
    kind: str | None,
    published_at: datetime | None = None,
    session_factory: SessionFactory = session_scope,
) -> IngestResult:
    """Validate payloads, store the valid ones once, count what was new.

    Rejections are counted only after the valid events are safely stored, so a
    retry after a database outage does not count them twice.
    """
    events, rejections = validate(payloads, kind=kind)
    result = IngestResult()
    if events:
        try:
            with session_factory() as session:
                result = store_and_count(session, events=events, published_at=published_at)
        except DBAPIError as exc:
            # Unreachable or dropped connections are worth a retry; any other
            # database error is a bug, and retrying it would only repeat it.
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            raise DatabaseUnavailable(str(exc.orig or exc)) from exc
    for invalid in rejections:
        reject(invalid)
    return IngestResult(stored=result.stored, duplicates=result.duplicates, rejected=len(rejections))
