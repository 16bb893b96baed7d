"""Event tasks: the names and keyword arguments the platform's app code already calls.

One task per kind of the client's catalogue, under the name the client
publishes it to (`panic_metrics.events.record_panic_request_metrics`, ...),
plus `record_events` for batches. Each takes its event's fields as keyword
arguments and hands them to app.ingest; a bad payload is rejected there.
The seed's names are attributes of this module:
`events.record_panic_request_metrics.delay(...)`.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from panic_metrics_client.events import EVENT_KINDS, EVENT_MODELS
from panic_metrics_client.messages import BATCH_TASK, TASK_OF_KIND
from workers.celery_app import app
from workers.tasks.base import EventTask


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
