"""Database outage: retries with backoff, then dead letters; a replay through the broker stores and counts each once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from tests.integration.conftest import WorkerFactory
from tests.support.services import PostgresDatabase, free_port, wait_until
from tests.support.worker import ROOT, total
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def test_unreachable_database_retries_then_dead_letters_and_replay_stores_once(
    start_worker: WorkerFactory, pg_database: PostgresDatabase, pg_engine: Engine, unique: str
) -> None:
    """No event is lost while the database is down: retries, dead letters, replay, each stored once."""
    nowhere = f"postgresql+psycopg://nobody:nothing@127.0.0.1:{free_port()}/none"
    worker = start_worker(DATABASE_URL=nowhere, TASK_MAX_RETRIES="2", TASK_RETRY_BACKOFF_MAX_SECONDS="1")
    for _ in range(3):
        tasks.record_panic_request_metrics.delay(service_type="fire", status="requested", zone=unique)
    tasks.record_events.delay(
        [{"kind": "panic_request", "service_type": "medical", "status": "requested", "zone": unique}] * 4
    )

    wait_until(
        lambda: total(worker.scrape(), "metrics_events_dead_lettered_total") == 7,
        timeout=60,
        what="7 events dead-lettered",
    )
    samples = worker.scrape()
    assert total(samples, "celery_task_retries_total") == 4 * 2
    assert total(samples, "panic_requests_total", zone=unique) == 0
    dead_letter_dir = worker.workdir / "dead_letter"
    assert sum(len(path.read_text().splitlines()) for path in dead_letter_dir.glob("*.jsonl")) == 7

    # The database is back: the outage's worker goes, a healthy one takes the replayed messages.
    worker.stop()
    healthy = start_worker()
    replay_env = {**os.environ, "DATABASE_URL": pg_database.url, "DEAD_LETTER_DIR": str(dead_letter_dir)}
    for _ in range(2):  # a repeated replay (the first crashed, say) stores nothing twice
        for path in dead_letter_dir.glob("*.jsonl"):
            path.with_suffix(".copy").write_bytes(path.read_bytes())
        subprocess.run([sys.executable, "-m", "app.cli", "replay-dead-letters"], cwd=ROOT, env=replay_env, check=True)
        for path in dead_letter_dir.glob("*.copy"):
            path.rename(path.with_suffix(".jsonl"))

    def stored() -> int:
        with pg_engine.connect() as connection:
            query = select(func.count()).select_from(MetricEvent).where(MetricEvent.zone == unique)
            return int(connection.execute(query).scalar_one())

    wait_until(lambda: stored() == 7, timeout=60, what="7 replayed events stored")
    wait_until(
        lambda: total(healthy.scrape(), "metrics_events_duplicate_total", kind="panic_request") == 7,
        timeout=60,
        what="the repeated replay seen as 7 duplicates",
    )
    samples = healthy.scrape()
    assert total(samples, "panic_requests_total", zone=unique) == 7
    assert stored() == 7
