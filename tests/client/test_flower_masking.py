"""Flower never sees customer, subscription or request ids: the client and the worker mask the reprs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import signals
from sqlalchemy import Engine, select

from app.db.models import MetricEvent
from tests.client.conftest import ClientFactory
from tests.integration.conftest import WorkerFactory
from tests.support.flower import running_flower
from tests.support.payloads import sample_payload
from tests.support.services import RedisServer, wait_until
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def _flower_task(api: str, task_id: str) -> dict[str, Any]:
    info = httpx.get(f"{api}/task/info/{task_id}", timeout=5)
    return info.json() if info.status_code == 200 else {}  # type: ignore[no-any-return]


@contextmanager
def task_sent_events_held_until_success(api: str, published: list[dict[str, Any]]) -> Iterator[list[Exception]]:
    """Hold each `.delay()`'s task-sent event until Flower lists its task as succeeded; keep the headers published.

    Celery publishes the task-sent event just after the message (after
    after_task_publish). Flower applies a task-sent event that comes after the
    worker's events over the task's fields: on a busy machine that order happens
    by chance, so the test makes it every time.
    """
    failures: list[Exception] = []

    def hold(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is None:
            return
        published.append(dict(headers))
        try:
            wait_until(
                lambda: _flower_task(api, headers["id"]).get("state") == "SUCCESS",
                timeout=60,
                what=f"Flower to list {headers['id']} as succeeded before its task-sent event",
                interval=0.2,
            )
        except (TimeoutError, httpx.HTTPError) as exc:  # Celery logs and drops a receiver's error: raise it after
            failures.append(exc)

    # weak=False: the receiver is a closure, which nothing else keeps alive.
    signals.after_task_publish.connect(hold, weak=False)
    try:
        yield failures
    finally:
        signals.after_task_publish.disconnect(hold)


def test_flower_shows_no_customer_subscription_or_request_id(
    start_worker: WorkerFactory,
    redis_server: RedisServer,
    make_client: ClientFactory,
    pg_engine: Engine,
    tmp_path: Path,
) -> None:
    """Events from the client and from a worker-side .delay() carry ids; Flower's API shows none of them."""
    with running_flower(redis_server.url, tmp_path / "flower.log") as api:
        start_worker()
        secret = uuid.uuid4().hex
        client = make_client(broker_url=redis_server.url)
        ids = [
            client.record_fields("credit_transaction", sample_payload("credit_transaction", customer_id=f"c{secret}")),
            client.record_fields("subscription", sample_payload("subscription", subscription_id=f"s{secret}")),
            client.record_fields("prank_detection", sample_payload("prank_detection", request_id=f"r{secret}")),
        ]
        client.record_many(
            [{"kind": "credit_transaction", **sample_payload("credit_transaction", customer_id=f"b{secret}")}] * 1
        )
        assert client.flush(timeout=30)
        # The worker's own publishing path (a retry republishes the same way): its headers are masked,
        # and so must be the task-sent event Celery publishes with them, which Flower shows when it
        # comes last. It is made to come last here.
        published: list[dict[str, Any]] = []
        with task_sent_events_held_until_success(api, published) as failures:
            delayed = tasks.record_credit_transaction_metrics.delay(customer_id=f"d{secret}", type="spend", credits=1)
        assert not failures, failures

        def all_succeeded() -> bool:
            listed = httpx.get(f"{api}/tasks", timeout=5).json()
            succeeded = [t for t in listed.values() if t.get("state") == "SUCCESS"]
            sent_seen = listed.get(delayed.id, {}).get("sent") is not None
            return sent_seen and len(succeeded) >= 5

        wait_until(all_succeeded, timeout=60, what="the tasks listed as succeeded in Flower", interval=0.5)
        listed = httpx.get(f"{api}/tasks", timeout=5)
        infos = {task_id: httpx.get(f"{api}/task/info/{task_id}", timeout=5) for task_id in listed.json()}
        assert all(info.status_code == 200 for info in infos.values()), infos
        leaked = {task_id: info.json() for task_id, info in infos.items() if secret in info.text}
        explain = json.dumps(
            {
                "secret": secret,
                # Flower keeps the reprs of the event it handled last: a task-sent event's when
                # "sent" is later than "received" (Celery makes that event's reprs, not the headers').
                "flower_tasks_showing_it": leaked,
                "headers_published_by_this_process": published,
                "flower_list": listed.json(),
            },
            indent=1,
            default=str,
        )
        assert not leaked, explain
        assert secret not in listed.text, explain
        assert "***" in listed.text + "".join(info.text for info in infos.values()), explain
        with pg_engine.connect() as connection:
            stored = connection.execute(
                select(MetricEvent.customer_id).where(MetricEvent.event_id.in_([i for i in ids if i is not None]))
            ).scalars()
            assert f"c{secret}" in set(stored)  # the worker received the real value
