"""Faults of PostgreSQL, on a private cluster (the machine's is shared and never stopped):
a restart mid-batch, an outage past the retry budget, a hung query."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.faults.conftest import Stream, WorkerStarter
from tests.support.processes import ROOT
from tests.support.services import PrivateCluster, RedisServer, wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.slow, pytest.mark.integration]

Private = tuple[PrivateCluster, Engine]


def test_postgres_restarted_mid_batch_is_retried_nothing_lost_or_duplicated(
    private_postgres: Private, redis_server: RedisServer, start_fault_worker: WorkerStarter
) -> None:
    """6. PostgreSQL restarted with -m immediate while batches are stored: retried, each event stored once."""
    cluster, engine = private_postgres
    env = {"BROKER_URL": redis_server.url, "DATABASE_URL": cluster.url}
    stream = Stream(env, engine)
    worker = start_fault_worker(env)
    stream.publish_many(150, per_message=20)
    stream.wait_stored(200, timeout=60, what="batches being stored")
    cluster.stop("immediate")  # every backend killed, open transactions lost
    cluster.start()
    engine.dispose()  # the test's own pooled connections died with the server
    stream.assert_complete()
    assert total(worker.scrape(), "celery_task_retries_total") >= 1, "no batch was caught by the restart"


def test_postgres_down_past_retry_budget_dead_letters_alerts_and_replays_once(
    private_postgres: Private, redis_server: RedisServer, start_fault_worker: WorkerStarter, tmp_path: Path
) -> None:
    """7. PostgreSQL down past the retry budget: dead letters, the counter rises, a replay stores each once."""
    cluster, engine = private_postgres
    dead_letters = tmp_path / "dead_letter"
    env = {
        "BROKER_URL": redis_server.url,
        "DATABASE_URL": cluster.url,
        "TASK_MAX_RETRIES": "2",
        "TASK_RETRY_BACKOFF_MAX_SECONDS": "1",
        "DEAD_LETTER_DIR": str(dead_letters),
    }
    stream = Stream(env, engine)
    worker = start_fault_worker(env)
    cluster.stop("fast")
    try:
        stream.publish_many(6)
        wait_until(
            lambda: total(worker.scrape(), "metrics_events_dead_lettered_total") == 30,
            timeout=90,
            what="30 events dead-lettered",
        )
    finally:
        cluster.start()
    engine.dispose()
    replay = {**os.environ, "DATABASE_URL": cluster.url, "BROKER_URL": redis_server.url}
    replay["DEAD_LETTER_DIR"] = str(dead_letters)
    subprocess.run([sys.executable, "-m", "app.cli", "replay-dead-letters"], cwd=ROOT, env=replay, check=True)
    stream.assert_complete()


def test_hung_query_is_cancelled_by_statement_timeout_and_child_is_not_wedged(
    private_postgres: Private, redis_server: RedisServer, start_fault_worker: WorkerStarter
) -> None:
    """12. An INSERT stuck behind a lock nobody releases: cancelled by the statement timeout, retried, stored."""
    cluster, engine = private_postgres
    env = {"BROKER_URL": redis_server.url, "DATABASE_URL": cluster.url, "DATABASE_STATEMENT_TIMEOUT_SECONDS": "1"}
    stream = Stream(env, engine)
    # One child: if the hung query wedged it, nothing else would ever be stored.
    worker = start_fault_worker(env, concurrency=1)
    with engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE metric_events IN ACCESS EXCLUSIVE MODE"))
        stream.publish_many(3)
        wait_until(
            lambda: total(worker.scrape(), "celery_task_retries_total") >= 2,
            timeout=60,
            what="the stuck INSERT cancelled and retried, twice",
        )
        blocker.rollback()
    stream.assert_complete()
