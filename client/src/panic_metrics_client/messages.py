"""Celery task messages, built without Celery: what the worker's event tasks consume.

A message is Celery's protocol 2 (headers carry the task name and id, the body
is `[args, kwargs, embed]`, JSON), so the worker cannot tell it from a
`.delay()`. The `argsrepr`/`kwargsrepr` headers are what Flower and the task
event stream show; customer, subscription and request ids are masked there.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from panic_metrics_client.events import Event

TASK_PREFIX = "panic_metrics.events."
BATCH_TASK = f"{TASK_PREFIX}record_events"
#: The queue event tasks travel on: the contract app code publishes to.
EVENTS_QUEUE = "events"
#: The worker's other queue (beat's scheduled jobs), named here too so every queue name lives in one module.
SCHEDULED_QUEUE = "scheduled"
QUEUES = (EVENTS_QUEUE, SCHEDULED_QUEUE)
PUBLISHED_AT_HEADER = "published_at"

# The seed's task names, one per kind.
TASK_OF_KIND: dict[str, str] = {
    "panic_request": f"{TASK_PREFIX}record_panic_request_metrics",
    "auth": f"{TASK_PREFIX}record_auth_metrics",
    "notification": f"{TASK_PREFIX}record_notification_metrics",
    "subscription": f"{TASK_PREFIX}record_subscription_metrics",
    "credit_transaction": f"{TASK_PREFIX}record_credit_transaction_metrics",
    "prank_detection": f"{TASK_PREFIX}record_prank_detection_metrics",
    "http_request": f"{TASK_PREFIX}record_http_request_metrics",
    "http_summary": f"{TASK_PREFIX}record_http_summary_metrics",
    "gauge_report": f"{TASK_PREFIX}record_gauge_report",
}

# Ids of people and their requests: never shown by Flower or the task event stream.
MASKED_FIELDS = frozenset({"customer_id", "subscription_id", "request_id"})
MASK = "***"
# Celery cuts argsrepr/kwargsrepr at 1024 characters too.
MAX_REPR = 1024
# A batch of more events is shown by what it holds, not event by event.
BATCH_REPR_OVER = 3
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Message:
    """One task message: a task name, its id (kept when the message is resent), its kwargs as JSON.

    The kwargs travel as JSON text from the call onwards: a call serialises its
    event once (in C), and the sender joins texts into a message without
    building Python objects again, which keeps its work (and its hold on the
    GIL, which the callers need) small.
    """

    task: str
    task_id: str
    kwargs_json: str
    events: int
    # What Flower shows for the kwargs, ids masked (see masked_repr).
    kwargsrepr: str = ""

    def encode(self) -> str:
        """The message as stored in the spool: a JSON line of its envelope, then its kwargs as they are."""
        # json.dumps escapes newlines, so the first one ends the envelope; the kwargs (a batch
        # can be 100 kB) are neither encoded nor parsed again on the way through the spool.
        head = json.dumps(
            {"task": self.task, "task_id": self.task_id, "events": self.events, "kwargsrepr": self.kwargsrepr}
        )
        return f"{head}\n{self.kwargs_json}"

    @classmethod
    def decode(cls, text: str) -> Message:
        """A message read back from the spool."""
        head, _, kwargs_json = text.partition("\n")
        data = json.loads(head)
        return cls(
            task=data["task"],
            task_id=data["task_id"],
            kwargs_json=kwargs_json,
            events=data["events"],
            kwargsrepr=data["kwargsrepr"],
        )


_KIND_PREFIX = '{"kind":"'


def event_json(event: Event) -> str:
    """An event as it travels in a message (JSON, `kind` first): what the client queues."""
    return event.model_dump_json()


def kind_of(event_text: str) -> str:
    """The kind of an event made by event_json, read without parsing it (`kind` is the first field)."""
    if not event_text.startswith(_KIND_PREFIX):
        return str(json.loads(event_text)["kind"])
    return event_text[len(_KIND_PREFIX) : event_text.index('"', len(_KIND_PREFIX))]


def event_message(event_text: str) -> Message:
    """One event (as event_json made it) as its kind's own task (the seed's names), as `.delay(**fields)` sends it."""
    fields = json.loads(event_text)
    kind = fields.pop("kind")
    return Message(TASK_OF_KIND[kind], str(uuid.uuid4()), json.dumps(fields), 1, masked_repr(fields))


def batch_message(events: Sequence[str]) -> Message:
    """Events of any kinds (as event_json made them) in one `record_events` message: stored with one INSERT."""
    kwargs_json = '{"events": [' + ",".join(events) + "]}"
    if len(events) > BATCH_REPR_OVER:
        kinds = Counter(kind_of(text) for text in events)
        summary = f"<{len(events)} events: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ">"
        kwargsrepr = repr({"events": summary})
    else:
        kwargsrepr = masked_repr({"events": [json.loads(text) for text in events]})
    return Message(BATCH_TASK, str(uuid.uuid4()), kwargs_json, len(events), kwargsrepr)


def _mask(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: MASK if key in MASKED_FIELDS else _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > BATCH_REPR_OVER and all(isinstance(item, Mapping) and "kind" in item for item in value):
            # A batch: what it holds, not each event (hundreds would be cut at MAX_REPR anyway).
            kinds = Counter(str(item["kind"]) for item in value)
            return f"<{len(value)} events: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ">"
        return [_mask(item) for item in value]
    return value


def masked_repr(value: Any) -> str:
    """`repr` of task args or kwargs with customer/subscription/request ids masked, at most MAX_REPR long."""
    text = repr(_mask(value))
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def headers(message: Message, *, retries: int = 0) -> dict[str, Any]:
    """Celery protocol-2 headers for `message`, stamped with the publish time."""
    return {
        "lang": "py",
        "task": message.task,
        "id": message.task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": message.task_id,
        "parent_id": None,
        "argsrepr": masked_repr(()),
        "kwargsrepr": message.kwargsrepr,
        "origin": _ORIGIN,
        "ignore_result": True,
        # The worker measures the lag from publish to stored from this stamp.
        PUBLISHED_AT_HEADER: time.time(),
    }


_EMBED = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def body(message: Message) -> str:
    """Celery protocol-2 body as JSON: args, kwargs, and no callbacks, errbacks, chain or chord."""
    return f"[[], {message.kwargs_json}, {_EMBED}]"
