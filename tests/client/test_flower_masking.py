"""Flower never sees customer, subscription or request ids: the client and the worker mask the reprs."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from app.db.models import MetricEvent
from tests.client.conftest import ClientFactory
from tests.integration.conftest import WorkerFactory
from tests.support.flower import running_flower
from tests.support.payloads import sample_payload
from tests.support.services import RedisServer, wait_until
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


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
        # The worker's own publishing path (a retry republishes the same way) is masked by its signal.
        delayed = tasks.record_credit_transaction_metrics.delay(customer_id=f"d{secret}", type="spend", credits=1)

        def all_succeeded() -> bool:
            listed = httpx.get(f"{api}/tasks", timeout=5).json()
            succeeded = [t for t in listed.values() if t.get("state") == "SUCCESS"]
            return delayed.id in listed and len(succeeded) >= 5

        wait_until(all_succeeded, timeout=60, what="the tasks listed as succeeded in Flower", interval=0.5)
        listed = httpx.get(f"{api}/tasks", timeout=5)
        infos = [httpx.get(f"{api}/task/info/{task_id}", timeout=5) for task_id in listed.json()]
        assert all(info.status_code == 200 for info in infos)
        seen = listed.text + "".join(info.text for info in infos)
        assert "***" in seen
        assert secret not in seen, seen[max(0, seen.find(secret) - 700) : seen.find(secret) + 100]
        with pg_engine.connect() as connection:
            stored = connection.execute(
                select(MetricEvent.customer_id).where(MetricEvent.event_id.in_([i for i in ids if i is not None]))
            ).scalars()
            assert f"c{secret}" in set(stored)  # the worker received the real value
