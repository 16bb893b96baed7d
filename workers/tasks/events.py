"""Event tasks: the names and keyword arguments the platform's app code already calls.

One task per kind of the client's catalogue, under the name the client
publishes it to (`panic_metrics.events.record_panic_request_metrics`, ...),
plus `record_events` for batches. Each takes its event's fields as keyword
arguments and hands them to app.ingest through `EventTask` (below: delivery
cap, retries while the database is down, dead letters, quarantine); a bad
payload is rejected there.
The seed's names are attributes of this module:
`events.record_panic_request_metrics.delay(...)`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from app.config import get_settings
from app.dead_letters import write_dead_letters
from app.ingest import DatabaseUnavailable, IngestResult, MetricsUnwritable, ingest
from app.metrics import definitions as m
from app.quarantine import forget_delivery, quarantine, record_delivery
from panic_metrics_client.events import EVENT_KINDS, EVENT_MODELS
from panic_metrics_client.messages import BATCH_TASK, TASK_OF_KIND
from workers.celery_app import app
from workers.tasks.base import MetricsTask

log = logging.getLogger(__name__)

#: How long a child whose metric files are full holds a message before giving
#: it back: the broker would hand it straight back, and the worker's consumer
#: gate (workers/consumer_gate.py) needs a moment to stop consuming.
METRICS_UNWRITABLE_PAUSE_SECONDS = 1.0

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


class EventTask(MetricsTask):
    """Validate, store and count payloads; retry while the database is down."""

    abstract = True
    typing = False  # the payload model validates arguments, in the worker

    def ingest(self, payloads: Sequence[Any], *, kind: str | None) -> dict[str, int]:
        """Run one message's payloads through app.ingest; the body of every event task.

        Deliveries are counted before the payloads run, so a message that kills
        its child every time is quarantined after TASK_MAX_DELIVERIES instead
        of looping for ever; one past the soft time limit is quarantined too.
        """
        # A direct call (not through the broker) has no message id: each call
        # is its own message, so it gets a fresh one, never a shared constant
        # that would make every call after the first a duplicate.
        message_id = str(uuid.uuid4()) if self.request.called_directly or not self.request.id else self.request.id
        payloads = with_event_ids(payloads, message_id)
        if not self.request.id:  # called directly, not from a message: nothing to redeliver
            return self._ingest(payloads, kind=kind, message_id=message_id)
        delivery = f"{self.request.id}.{self.request.retries}"
        deliveries = record_delivery(delivery)
        try:
            if deliveries > get_settings().task_max_deliveries:
                return self._quarantine(payloads, kind=kind, reason="redelivery_cap", deliveries=deliveries)
            return self._ingest(payloads, kind=kind, message_id=message_id)
        except SoftTimeLimitExceeded:
            return self._quarantine(payloads, kind=kind, reason="time_limit", deliveries=deliveries)
        finally:
            forget_delivery(delivery)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """A failed message is acknowledged by Celery: keep its arguments in quarantine, with the reason."""
        super().on_failure(exc, task_id, args, kwargs, einfo)
        # Failures here are bugs (an error other than the database being
        # unreachable) or a child killed at the hard time limit (Celery calls
        # this in the main process then); either way the message is gone once
        # this returns, so its events are set aside, never dropped.
        reason = "hard_time_limit" if isinstance(exc, TimeLimitExceeded) else f"error:{type(exc).__name__}"
        quarantine(
            [{"task": self.name, "args": list(args or ()), "kwargs": dict(kwargs or {})}],
            kind=None,
            reason=reason,
            task_id=task_id,
        )
        m.EVENTS_QUARANTINED.labels(kind="batch", reason=reason).inc()

    def _quarantine(self, payloads: Sequence[Any], *, kind: str | None, reason: str, deliveries: int) -> dict[str, int]:
        quarantine(payloads, kind=kind, reason=reason, task_id=self.request.id or "direct", deliveries=deliveries)
        m.EVENTS_QUARANTINED.labels(kind=kind or "batch", reason=reason).inc(len(payloads))
        return {"stored": 0, "duplicates": 0, "rejected": 0, "quarantined": len(payloads)}

    def _ingest(self, payloads: Sequence[Any], *, kind: str | None, message_id: str) -> dict[str, int]:
        settings = get_settings()
        published_at = self._published_at()
        try:
            result: IngestResult = ingest(payloads, kind=kind, published_at=published_at, message_id=message_id)
        except MetricsUnwritable as exc:
            # Nothing was stored. Back to the queue as it came: not a retry
            # (no retry budget spent, never dead-lettered) and not a delivery
            # (`ingest` forgets it), so a long full disk costs no event.
            log.warning("metric files full: message requeued, nothing stored", extra={"error": str(exc)})
            time.sleep(METRICS_UNWRITABLE_PAUSE_SECONDS)
            raise Reject(str(exc), requeue=True) from exc
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


def _fields_help(kind: str) -> str:
    """`service_type, status, zone, firm_id=None, ...`: the fields of `kind` past the common ones."""
    fields = EVENT_MODELS[kind].model_fields
    own = (name for name in fields if name not in ("kind", "event_id", "occurred_at"))
    return ", ".join(name if fields[name].is_required() else f"{name}={fields[name].default!r}" for name in own)


def _event_task(kind: str) -> Task[..., dict[str, int]]:
    def record(self: EventTask, /, **fields: Any) -> dict[str, int]:
        return self.ingest([fields], kind=kind)

    name = TASK_OF_KIND[kind]
    record.__name__ = record.__qualname__ = name.rpartition(".")[2]
    record.__doc__ = f"{EVENT_MODELS[kind].__doc__} Fields: {_fields_help(kind)}."
    task: Task[..., dict[str, int]] = app.task(base=EventTask, bind=True, name=name)(record)
    return task


#: kind -> its task, for every kind of the catalogue.
EVENT_TASKS = {kind: _event_task(kind) for kind in EVENT_KINDS}
globals().update({task.name.rpartition(".")[2]: task for task in EVENT_TASKS.values()})


@app.task(base=EventTask, bind=True, name=BATCH_TASK)
def record_events(self: EventTask, /, events: Any) -> dict[str, int]:
    """Many events of any kinds, each a dict with its `kind`: the fast path, one INSERT."""
    return self.ingest(events if isinstance(events, list) else [events], kind=None)
