"""A one-shot process (a script, a cron job, a management command) records an event and exits at once.

Its sender first connects at interpreter exit: that connect must work, what it
recorded must go out within the flush bound, and so must what earlier one-shot
processes left in the same spool directory while the broker was away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from panic_metrics_client.delivery import DRAIN_CHUNK
from panic_metrics_client.messages import event_json, event_message
from panic_metrics_client.parsing import parse_event
from panic_metrics_client.spool import Spool
from tests.client.conftest import BreakableRedis, stored_count
from tests.client.test_client import delivered_event_ids
from tests.client.test_spool import events_on_disk
from tests.integration.conftest import WorkerFactory
from tests.support.payloads import sample_payload
from tests.support.services import free_port, wait_until
from tests.support.worker import total

# Records one panic request through the seed's `.delay()` and exits without flushing or closing.
ONE_SHOT = """
import sys
from panic_metrics_client import record_panic_request_metrics
print(record_panic_request_metrics.delay(
    service_type="medical", status="completed", zone=sys.argv[1], firm_id="f1", response_time=42.0
))
"""


def one_shot(tmp_path: Path, zone: str, **env: str) -> str:
    """Run a one-shot script to its end; return the event_id it printed."""
    script = tmp_path / "one_shot.py"
    script.write_text(ONE_SHOT)
    environment = {
        "PATH": "/usr/bin:/bin",
        "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool"),
        "PANIC_METRICS_SEND_TIMEOUT_MS": "300",
        "PANIC_METRICS_MODE": "development",
        **env,
    }
    done = subprocess.run(
        [sys.executable, str(script), zone], env=environment, capture_output=True, text=True, timeout=60, check=True
    )
    assert "Traceback" not in done.stderr, done.stderr
    return str(uuid.UUID(done.stdout.strip()))


@pytest.mark.integration
def test_one_shot_scripts_deliver_with_the_broker_up_and_after_an_outage(
    tmp_path: Path, breakable_redis: BreakableRedis, start_worker: WorkerFactory, pg_engine: Engine
) -> None:
    """20 scripts with Redis up: 20 stored; 20 with it refused, then one with it up: all 41 stored exactly once."""
    zone = f"t{uuid.uuid4().hex[:10]}"
    worker = start_worker(BROKER_URL=breakable_redis.url)
    up = {"PANIC_METRICS_BROKER_URL": breakable_redis.url}
    ids = [one_shot(tmp_path, zone, **up) for _ in range(20)]
    wait_until(lambda: stored_count(pg_engine, ids) == 20, timeout=60, what="20 one-shot events stored")
    assert not list((tmp_path / "spool").glob("spool-*.sqlite3"))

    refused = {"PANIC_METRICS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    ids += [one_shot(tmp_path, zone, **refused) for _ in range(20)]
    assert events_on_disk(tmp_path / "spool") == 20  # left for the next process, none lost
    ids.append(one_shot(tmp_path, zone, **up))

    assert not list((tmp_path / "spool").glob("spool-*.sqlite3"))  # the last one delivered them all at exit
    wait_until(lambda: stored_count(pg_engine, ids) == 41, timeout=60, what="all 41 one-shot events stored")
    wait_until(
        lambda: total(worker.scrape(), "panic_requests_total", zone=zone) == 41,
        timeout=60,
        what="all 41 counted",
    )
    assert len(set(ids)) == stored_count(pg_engine, ids) == 41
    assert total(worker.scrape(), "panic_requests_total", zone=zone) == 41


def test_a_one_shot_script_sends_a_spool_longer_than_one_resend_chunk(tmp_path: Path) -> None:
    """At exit the sender resends everything an earlier process left, not only one chunk of it."""
    left = Spool(tmp_path / "spool", max_bytes=10**8)
    texts = [event_json(parse_event("auth", sample_payload("auth"))) for _ in range(3 * DRAIN_CHUNK + 7)]
    left.append([event_message(text) for text in texts])
    left.close()
    assert left._lock_file is not None
    os.close(left._lock_file)  # the earlier process ends: the kernel frees its lock

    folder = tmp_path / "broker"
    own = one_shot(
        tmp_path, "harbour", PANIC_METRICS_BROKER_URL="filesystem://", PANIC_METRICS_BROKER_FOLDER=str(folder)
    )

    assert sorted(delivered_event_ids(folder)) == sorted([*(json.loads(text)["event_id"] for text in texts), own])
    assert events_on_disk(tmp_path / "spool") == 0
