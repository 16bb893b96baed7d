"""The seed's task names, so app code changes one import line: `.delay(**fields)` or a plain call."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from panic_metrics_client.events import Event
from panic_metrics_client.messages import BATCH_TASK, TASK_OF_KIND
from panic_metrics_client.state import get_client


class EventRecorder:
    """Records one kind of event, the way its Celery task was called; returns the event_id."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = TASK_OF_KIND[kind]

    def __call__(self, **fields: Any) -> uuid.UUID | None:
        """Validate the fields and record the event; None when refused (production mode)."""
        return get_client().record_fields(self.kind, fields)

    delay = __call__

    def apply_async(
        self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None, **_: Any
    ) -> uuid.UUID | None:
        """As `.delay(**kwargs)`; Celery's routing options mean nothing here and are ignored."""
        if tuple(args):
            raise TypeError(f"{self.name} takes keyword arguments only")
        return get_client().record_fields(self.kind, kwargs or {})

    def __repr__(self) -> str:
        return f"<EventRecorder {self.name}>"


class BatchRecorder:
    """`record_events`: many events of any kinds, each a dict naming its `kind` (or a typed event)."""

    name = BATCH_TASK

    def __call__(self, events: Iterable[Event | Mapping[str, Any]]) -> list[uuid.UUID | None]:
        """Validate every event, then record the valid ones; returns their event_ids (None: refused)."""
        return get_client().record_many(events)

    delay = __call__


record_panic_request_metrics = EventRecorder("panic_request")
record_auth_metrics = EventRecorder("auth")
record_notification_metrics = EventRecorder("notification")
record_subscription_metrics = EventRecorder("subscription")
record_credit_transaction_metrics = EventRecorder("credit_transaction")
record_prank_detection_metrics = EventRecorder("prank_detection")
record_http_request_metrics = EventRecorder("http_request")
record_gauge_report = EventRecorder("gauge_report")
record_events = BatchRecorder()
