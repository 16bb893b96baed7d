"""Hostile input: a flood of distinct, huge and newline-carrying label values."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import MetricEvent
from tests.faults.conftest import Stream, WorkerStarter
from tests.support.services import wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MAX_ZONES = 50
CONCURRENCY = 2
# The 10,000 values took about two minutes on a loaded 2-core machine
# (when each value past the cap was a query); `make test` floods 3,000 and
# PANIC_METRICS_FAULT_FLOOD=10000 runs the full count.
FLOOD = int(os.environ.get("PANIC_METRICS_FAULT_FLOOD", "3000"))
HUGE = NEWLINE = FLOOD // 20
DISTINCT = FLOOD - HUGE - NEWLINE
PER_MESSAGE = 500
# Every series of every family, with the caps this worker runs with, fits far below this.
MAX_METRICS_BYTES = 1_000_000


def test_label_flood_is_capped_and_metrics_stay_valid_and_bounded(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter
) -> None:
    """11. 10,000 distinct, huge or newline-carrying zones: capped as `other`, /metrics valid and bounded."""
    env, stream = redis_stream
    worker = start_fault_worker({**env, "MAX_ZONES": str(MAX_ZONES)}, concurrency=CONCURRENCY)
    prefix = stream.zone
    # Quotes, backslashes and non-ASCII are valid zone names that the exposition must escape.
    distinct = [stream.event(zone=f'{prefix}-{i}-"q"\\b\\ü'.ljust(100 + i % 28, "z")) for i in range(DISTINCT)]
    huge = [stream.event(zone=prefix + "h" * 10_000) for _ in range(HUGE)]  # 78 times the limit
    newline = [stream.event(zone=f"{prefix}\n{i}") for i in range(NEWLINE)]
    flood = distinct + huge + newline
    for start in range(0, len(flood), PER_MESSAGE):
        stream.app.send_task("panic_metrics.events.record_events", args=[flood[start : start + PER_MESSAGE]])

    def stored_flood() -> int:
        with stream.engine.connect() as connection:
            query = select(func.count()).select_from(MetricEvent).where(MetricEvent.zone.startswith(prefix))
            return int(connection.execute(query).scalar_one())

    wait_until(lambda: stored_flood() == DISTINCT, timeout=120, what="every valid event stored")
    wait_until(
        lambda: total(worker.scrape(), "metrics_events_rejected_total", kind="panic_request") >= HUGE + NEWLINE,
        timeout=60,
        what="huge and newline zones rejected",
    )
    body = httpx.get(worker.metrics_url, timeout=30).content
    assert len(body) < MAX_METRICS_BYTES
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    zones = {dict(labels)["zone"] for (name, labels), _ in worker.scrape().items() if name == "panic_requests_total"}
    flood_zones = {zone for zone in zones if zone.startswith(prefix)}
    # Exact, whatever the pool children admit at once (app/metrics/labels.py).
    assert len(flood_zones) <= MAX_ZONES
    assert total(worker.scrape(), "panic_requests_total", zone="other") == DISTINCT - len(flood_zones)
    stream.assert_complete()  # and still consuming
