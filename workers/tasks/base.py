"""The base of every event task: retries, dead letters and event ids, in one place."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from app.config import get_settings
from app.dead_letters import write_dead_letters
from app.ingest import DatabaseUnavailable, IngestResult, ingest
from app.metrics import definitions as m

# Event ids made by the worker derive from the task id, which a redelivered or
# retried message keeps, so the same payload always gets the same id.
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d4c1e-8b0f-4bd4-9a54-1f0b1c3f6e2a")


def with_event_ids(payloads: Sequence[Any], task_id: str) -> list[Any]:
    """Give every dict payload without an event_id one that is stable for this message."""
    return [
        {**payload, "event_id": str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{task_id}:{index}"))}
        if isinstance(payload, dict) and "event_id" not in payload
        else payload
        for index, payload in enumerate(payloads)
    ]


class EventTask(Task):  # type: ignore[type-arg]
    """Validate, store and count payloads; retry while the database is down."""

    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False  # the payload model validates arguments, in the worker

    def ingest(self, payloads: Sequence[Any], *, kind: str | None) -> dict[str, int]:
        """Run one message's payloads through app.ingest; the body of every event task."""
        settings = get_settings()
        published_at = self._published_at()
        # A direct call (not through the broker) has no message id: each call
        # is its own message, so it gets a fresh one, never a shared constant
        # that would make every call after the first a duplicate.
        message_id = str(uuid.uuid4()) if self.request.called_directly or not self.request.id else self.request.id
        payloads = with_event_ids(payloads, message_id)
        try:
            result: IngestResult = ingest(payloads, kind=kind, published_at=published_at, message_id=message_id)
        except DatabaseUnavailable as exc:
            if self.request.retries >= settings.task_max_retries:
                write_dead_letters(payloads, kind=kind, published_at=published_at)
                m.EVENTS_DEAD_LETTERED.labels(kind=kind or "batch").inc(len(payloads))
                return {"stored": 0, "duplicates": 0, "rejected": 0, "dead_lettered": len(payloads)}
            countdown = get_exponential_backoff_interval(
                factor=1,
                retries=self.request.retries,
                maximum=settings.task_retry_backoff_max_seconds,
                full_jitter=True,
            )
            raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
        return {"stored": result.stored, "duplicates": result.duplicates, "rejected": result.rejected}

    def _published_at(self) -> datetime | None:
        stamp = getattr(self.request, "published_at", None)
        if isinstance(stamp, int | float):
            return datetime.fromtimestamp(stamp, UTC)
        return None
