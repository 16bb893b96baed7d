"""Send set-aside events back through the broker, the same store-then-count path as any event.

Dead letters and fixed rejected payloads are published as `record_events`
messages, keeping their event_ids, so the workers that store them count them
(exactly once, by event_id) on their own endpoints; a replay never counts
anything in the replaying command's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from app.broker import transport_options
from app.config import Settings, get_settings
from app.dead_letters import Publish
from panic_metrics_client.messages import BATCH_TASK, EVENTS_QUEUE, PUBLISHED_AT_HEADER


def publishing_app(settings: Settings) -> Celery:
    """A Celery app that only publishes to the workers' broker: no worker, no result backend, JSON only."""
    celery = Celery("panic_metrics_publisher", broker=settings.broker_url, set_as_current=False)
    celery.conf.update(
        broker_transport_options=transport_options(settings),
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return celery


@contextmanager
def broker_publisher(settings: Settings | None = None) -> Iterator[Publish]:
    """A `Publish` that sends one `record_events` message per call; returns once the broker has it."""
    celery = publishing_app(settings or get_settings())

    def publish(events: list[Any], published_at: float | None) -> None:
        headers = {PUBLISHED_AT_HEADER: published_at} if published_at is not None else {}
        celery.send_task(
            BATCH_TASK,
            kwargs={"events": events},
            queue=EVENTS_QUEUE,
            routing_key=EVENTS_QUEUE,
            headers=headers,
            retry=True,
        )

    try:
        yield publish
    finally:
        celery.close()
