"""What a `.delay()` shows Flower and the task event stream: customer, subscription and request ids masked,
in the message headers and in the `task-sent` event alike (workers.celery_app.MaskingAMQP)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Retry
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from panic_metrics_client.messages import MASK, TASK_OF_KIND
from tests.support.payloads import sample_payload
from workers.tasks import events as tasks


class RecordingProducer(Producer):
    """A producer that keeps what it is asked to publish (task messages and events) and sends nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **options: Any) -> None:  # type: ignore[override]
        self.published.append((body, options.get("headers") or {}))

    def task_headers(self) -> list[dict[str, Any]]:
        """The headers of the task messages published (an event's body is a dict, a task's a tuple)."""
        return [headers for body, headers in self.published if isinstance(body, tuple)]

    def sent_events(self) -> list[dict[str, Any]]:
        """The `task-sent` events published."""
        return [body for body, _ in self.published if isinstance(body, dict) and body.get("type") == "task-sent"]

    def explain(self) -> str:
        """Everything published, for a failure message."""
        return "\n".join(f"body={body!r}\n  headers={headers!r}" for body, headers in self.published)


@pytest.fixture
def producer() -> Iterator[RecordingProducer]:
    with Connection("memory://") as connection:
        yield RecordingProducer(connection.default_channel, auto_declare=False)


# One task per masked field: the id a .delay() carries and the field it travels in.
MASKED_CALLS = [
    ("credit_transaction", "customer_id"),
    ("subscription", "subscription_id"),
    ("prank_detection", "request_id"),
]


def _task(kind: str) -> Task[Any, Any]:
    task: Task[Any, Any] = getattr(tasks, TASK_OF_KIND[kind].rsplit(".", 1)[1])
    return task


def _assert_masked(producer: RecordingProducer, secret: str) -> None:
    """No header and no task-sent event holds `secret`; each task message's body still does."""
    headers, events = producer.task_headers(), producer.sent_events()
    assert headers, producer.explain()
    assert len(events) == len(headers), producer.explain()  # the app sends task-sent events (Flower reads them)
    for seen in [*headers, *events]:
        assert secret not in repr(seen), producer.explain()
    for header, event in zip(headers, events, strict=True):
        assert MASK in header["kwargsrepr"], producer.explain()
        assert (event["args"], event["kwargs"]) == (header["argsrepr"], header["kwargsrepr"]), producer.explain()
    assert all(secret in repr(body) for body, _ in producer.published if isinstance(body, tuple))


@pytest.mark.parametrize(("kind", "field"), MASKED_CALLS)
def test_delay_shows_no_id_in_headers_or_task_sent_event(producer: RecordingProducer, kind: str, field: str) -> None:
    """A worker-side `.delay()` masks the id in the headers and in the task-sent event Flower also reads."""
    secret = "id-that-must-not-show"
    # .delay(**fields) is apply_async(kwargs=fields); apply_async takes the producer.
    _task(kind).apply_async(kwargs=sample_payload(kind, **{field: secret}), producer=producer)
    _assert_masked(producer, secret)


def test_batch_and_send_task_by_name_are_masked(producer: RecordingProducer) -> None:
    """record_events and a send_task by name go through the same masking."""
    secret = "id-that-must-not-show"
    events = [{"kind": kind, **sample_payload(kind, **{field: secret})} for kind, field in MASKED_CALLS]
    tasks.record_events.apply_async(kwargs={"events": events}, producer=producer)
    tasks.record_events.app.send_task(
        TASK_OF_KIND["credit_transaction"],
        kwargs=sample_payload("credit_transaction", customer_id=secret),
        producer=producer,
    )
    _assert_masked(producer, secret)


def test_reprs_given_by_the_caller_are_replaced(producer: RecordingProducer) -> None:
    """A caller's own argsrepr/kwargsrepr could show the id: ours are used instead."""
    secret = "id-that-must-not-show"
    _task("credit_transaction").apply_async(
        args=[{"customer_id": secret}],
        kwargs=sample_payload("credit_transaction", customer_id=secret),
        argsrepr=f"[{secret!r}]",
        kwargsrepr=f"{{'customer_id': {secret!r}}}",
        producer=producer,
    )
    _assert_masked(producer, secret)


def test_retry_republishes_masked(producer: RecordingProducer) -> None:
    """A retry publishes the message again (with a task-sent event): still masked."""
    secret = "id-that-must-not-show"
    task = _task("credit_transaction")
    kwargs = sample_payload("credit_transaction", customer_id=secret)
    task.push_request(id="retried-task", args=(), kwargs=kwargs, called_directly=False, retries=0, delivery_info={})
    try:
        with pytest.raises(Retry):
            task.retry(countdown=5, max_retries=None, producer=producer)
    finally:
        task.pop_request()
    _assert_masked(producer, secret)
    assert producer.task_headers()[0]["retries"] == 1


def test_another_celery_app_publishing_our_task_has_masked_headers(producer: RecordingProducer) -> None:
    """A plain Celery app (app code's own, the replay's) gets its headers masked by our before_task_publish."""
    secret = "id-that-must-not-show"
    elsewhere = Celery("elsewhere", set_as_current=False)
    elsewhere.send_task(
        TASK_OF_KIND["subscription"], kwargs=sample_payload("subscription", subscription_id=secret), producer=producer
    )
    (headers,) = producer.task_headers()
    assert secret not in repr(headers), producer.explain()
    assert MASK in headers["kwargsrepr"], producer.explain()


@settings(max_examples=60, deadline=None)
@given(call=st.sampled_from(MASKED_CALLS), secret=st.text(min_size=1, max_size=80))
def test_any_id_value_is_masked_where_flower_reads(call: tuple[str, str], secret: str) -> None:
    """Whatever the id's text, the task-sent event and the headers show the field as the mask."""
    kind, field = call
    with Connection("memory://") as connection:
        producer = RecordingProducer(connection.default_channel, auto_declare=False)
        _task(kind).apply_async(kwargs=sample_payload(kind, **{field: secret}), producer=producer)
    (headers,), (event,) = producer.task_headers(), producer.sent_events()
    for shown in (headers["kwargsrepr"], event["kwargs"]):
        assert ast.literal_eval(shown)[field] == MASK, producer.explain()
    assert producer.published[0][0][1][field] == secret  # the worker still receives the real value
