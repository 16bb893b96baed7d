"""The base of every task (run time, retries, failures) and of every event task (retries, dead letters, event ids).

Delivery settings (acks_late, reject_on_worker_lost, time limits, results)
are the Celery app's configuration (workers/celery_app.py), for every task
at once; what a task does around its body lives here, in one class.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from app.config import get_settings
from app.dead_letters import write_dead_letters
from app.ingest import DatabaseUnavailable, IngestResult, ingest
from app.metrics import definitions as m
from app.quarantine import forget_delivery, quarantine, record_delivery

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


class MetricsTask(Task):  # type: ignore[type-arg]
    """Every task of the app (its `task_cls`): run time, retries and failures counted under the task's name.

    Subclasses add their own bookkeeping of a run through `run_succeeded`
    and `run_failed` (scheduled jobs record their last success there).
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = super().__call__(*args, **kwargs)
        except Retry:
            raise  # not a failure: counted by on_retry
        except Exception:
            self.run_failed()
            raise
        finally:
            m.TASK_DURATION.labels(task=self.name).observe(time.perf_counter() - started)
        self.run_succeeded(time.perf_counter() - started)
        return result

    def run_succeeded(self, seconds: float) -> None:
        """Called after a run that returned, with its duration; nothing by default."""

    def run_failed(self) -> None:
        """Called after a run that raised (not a retry); nothing by default."""

    def on_retry(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:  # noqa: ARG002 - Celery's signature
        """A retry scheduled (the database unreachable): counted."""
        m.TASK_RETRIES.labels(task=self.name).inc()

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:  # noqa: ARG002 - Celery's signature
        """A run failed for good: counted (in the child, or in the main process at a hard time limit)."""
        m.TASK_FAILURES.labels(task=self.name).inc()


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
