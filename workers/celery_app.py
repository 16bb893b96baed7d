"""The Celery app: configuration (every task setting), queues, routing and the publish-side signals.

The entry point of `celery -A workers.celery_app`: it imports app.metrics
first, which points prometheus_client at the multiprocess directory before
anything else imports it.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, signals
from celery.app.amqp import AMQP, task_message
from kombu import Exchange, Queue

import app.metrics as _metrics  # noqa: F401 - first of the app's imports: see the docstring
from app.broker import redis_ssl_options, transport_options
from app.config import Settings, get_settings
from app.logs import configure_logging
from app.redis_transport import use_robust_redis_transport
from beat_schedule import build_beat_schedule
from panic_metrics_client.messages import EVENTS_QUEUE, PUBLISHED_AT_HEADER, SCHEDULED_QUEUE, TASK_PREFIX, masked_repr


class MaskingAMQP(AMQP):
    """Celery's task message factory, with ids masked in our tasks' argsrepr/kwargsrepr where they are made.

    Celery builds the `task-sent` event (what Flower and every event consumer
    read for a `.delay()`) from the reprs made here, before before_task_publish
    runs, and that signal can rewrite only the message's headers. Flower shows
    the event's kwargs whenever it handles the task-sent event after the
    worker's events (celery.events.state applies a late task-sent event's
    fields over the task's), which a busy publisher makes happen. Masking here
    covers the headers and the event alike, for `.delay()`, `apply_async`,
    `send_task` and a retry.
    """

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *more: Any,
        **options: Any,
    ) -> task_message:
        """The protocol-2 message for a task; for ours the reprs are masked, even ones the caller gave."""
        if name.startswith(TASK_PREFIX):
            # Celery passes argsrepr/kwargsrepr by keyword (from apply_async's options);
            # a caller's own reprs are replaced too: they could show the ids.
            options["argsrepr"] = masked_repr(args or ())
            options["kwargsrepr"] = masked_repr(kwargs or {})
        return super().as_task_v2(task_id, name, args, kwargs, *more, **options)


def create_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app from settings."""
    settings = settings or get_settings()
    use_robust_redis_transport()
    celery = Celery(
        "panic_metrics",
        # Every task's base: run time, retries and failures (workers/tasks/base.py).
        task_cls="workers.tasks.base:MetricsTask",
        # Masks ids in what Flower shows, the task-sent event included (see the class).
        amqp=MaskingAMQP,
        include=["workers.tasks.events", "workers.tasks.scheduled", "workers.lifecycle"],
    )
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        broker_use_ssl=redis_ssl_options(settings),
        broker_connection_retry_on_startup=True,
        # JSON only: a pickle payload on a shared broker is remote code execution.
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # Every task setting is here, for every task. Ack after the event is
        # stored; a killed worker's messages are redelivered and the unique
        # event_id keeps them from being counted twice. A scheduled job lost
        # mid-run is redelivered too; its window claim skips what was done.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        # On a lost broker connection, running acks_late tasks are cancelled:
        # their messages come back anyway, and the worker reconnects clean
        # rather than with tasks it can no longer acknowledge.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Reconnect for ever: a worker that gives up after a long Redis outage
        # stops consuming for good.
        broker_connection_max_retries=None,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        worker_concurrency=settings.worker_concurrency,
        # Prefork, with billiard's blocking pool made safe for a SIGKILLed
        # child (see workers/pool.py); on Redis Celery uses the AsynPool anyway.
        worker_pool="workers.pool:TaskPool",
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child or None,
        task_default_queue=EVENTS_QUEUE,
        task_queues=(
            Queue(EVENTS_QUEUE, Exchange(EVENTS_QUEUE), routing_key=EVENTS_QUEUE),
            Queue(SCHEDULED_QUEUE, Exchange(SCHEDULED_QUEUE), routing_key=SCHEDULED_QUEUE),
        ),
        task_routes={
            "panic_metrics.events.*": {"queue": EVENTS_QUEUE, "routing_key": EVENTS_QUEUE},
            "panic_metrics.scheduled.*": {"queue": SCHEDULED_QUEUE, "routing_key": SCHEDULED_QUEUE},
        },
        # Flower follows tasks through these events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Our JSON logging, not Celery's.
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        beat_schedule=build_beat_schedule(settings, queue=SCHEDULED_QUEUE),
        beat_schedule_filename=str((settings.prometheus_multiproc_dir.parent / "celerybeat-schedule").resolve()),
    )
    return celery


app = create_app()


# The settings every delivery guarantee rests on (README, "Reliability").
GUARANTEES: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_cancel_long_running_tasks_on_connection_loss": True,
    "task_serializer": "json",
    "accept_content": ["json"],
}


def weakened_guarantees(conf: Any) -> list[str]:
    """The guarantee settings that something (a config module, a CELERY_* override) has changed."""
    return [
        f"{name}={conf.get(name)!r} (needs {wanted!r})"
        for name, wanted in GUARANTEES.items()
        if conf.get(name) != wanted
    ]


@signals.worker_init.connect
def _refuse_weakened_guarantees(sender: Any = None, **_: Any) -> None:
    conf = sender.app.conf if sender is not None else app.conf
    problems = weakened_guarantees(conf)
    if problems:
        raise SystemExit(f"panic-metrics: refusing to start, delivery guarantees weakened: {'; '.join(problems)}")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)


@signals.before_task_publish.connect
def _stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # The publish time rides in the message so the worker can measure the lag
    # from publish to stored; a retry republishes with the original stamp.
    if headers is not None:
        headers.setdefault(PUBLISHED_AT_HEADER, time.time())


@signals.before_task_publish.connect
def _mask_ids_in_task_reprs(
    sender: str | None = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    # Flower and the task event stream show argsrepr/kwargsrepr: customer, subscription
    # and request ids are masked there, also when a retry republishes the message.
    # The worker itself still receives the real arguments in the body. Our app's
    # messages come masked already (MaskingAMQP, which also covers the task-sent
    # event); this covers any other Celery app in the process that publishes our
    # tasks (app/replay.py's, a caller's own), whose headers the worker echoes.
    if headers is None or not str(sender or headers.get("task", "")).startswith(TASK_PREFIX):
        return
    if isinstance(body, list | tuple) and len(body) >= 2:
        headers["argsrepr"] = masked_repr(body[0])
        headers["kwargsrepr"] = masked_repr(body[1])
