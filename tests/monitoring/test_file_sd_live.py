"""prometheus.yml's worker job on a real Prometheus: it finds two worker hosts in a targets file.

The job is the shipped one (file_sd with its relative pattern, basic auth from
a password file), scraping every second instead of every 15; the targets
file lists two real workers on this machine, as config management would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery import Celery

from monitoring.generator import thresholds
from tests.monitoring.support import scraping_by_file_sd
from tests.monitoring.test_expressions_live import publish
from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, wait_until
from tests.support.worker import Worker, total
from workers.tasks import events as tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = ROOT / "monitoring/grafana/dashboards/worker-overview.json"


def dashboard_expr(title: str) -> str:
    """The query of the worker overview panel `title`, for every host (`$instance` = All)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = (panel for panel in panels if panel["title"] == title)
    (target,) = panel["targets"]
    return str(target["expr"]).replace("$instance", ".*")


def test_prometheus_finds_both_hosts_in_the_targets_file_and_sees_one_go_down(
    own_redis: RedisServer, own_database: PostgresDatabase, processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """Both listed hosts up; the dashboard total equals their counters' sum; one stopped goes down, the other not."""
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url}
    hosts = {name: Worker(env, tmp_path / name, concurrency=1) for name in ("a", "b")}
    address = {name: f"127.0.0.1:{worker.port}" for name, worker in hosts.items()}
    prometheus = scraping_by_file_sd(tmp_path / "prometheus", address.values())
    processes.extend([prometheus, *hosts.values()])
    for worker in hosts.values():
        worker.start_process()
    for worker in hosts.values():
        worker.wait_ready()
    prometheus.start()
    wait_until(
        lambda: prometheus.targets() == {address["a"]: "up", address["b"]: "up"},
        timeout=60,
        what=f"both hosts up in /api/v1/targets (log: {prometheus.log_path})",
    )

    # Each host stores events of its own: only one consumes `events` at a time.
    control = Celery("control", broker=own_redis.url, set_as_current=False).control
    for name, count in (("a", 3), ("b", 5)):
        for other, worker in hosts.items():
            verb = control.add_consumer if other == name else control.cancel_consumer
            assert verb("events", destination=[worker.hostname], reply=True, timeout=10), worker.hostname
        publish(
            own_redis.url,
            tasks.record_events,
            [{"kind": "auth", "user_type": "registered_user", "success": True}] * count,
        )
        wait_until(
            lambda worker=hosts[name], count=count: total(worker.scrape(), "metrics_events_stored_total") == count,
            timeout=60,
            what=f"host {name} stored {count} events",
        )
    stored = {name: total(worker.scrape(), "metrics_events_stored_total") for name, worker in hosts.items()}
    assert stored == {"a": 3, "b": 5}

    expr = dashboard_expr("Events stored (all hosts)")

    def evaluated() -> list[float]:
        response = prometheus.query(expr)
        response.raise_for_status()
        return [float(sample["value"][1]) for sample in response.json()["data"]["result"]]

    wait_until(
        lambda: evaluated() == [sum(stored.values())],
        timeout=30,
        what=f"{expr} = {sum(stored.values())} in Prometheus",
    )

    hosts["b"].stop()
    wait_until(
        lambda: prometheus.targets() == {address["a"]: "up", address["b"]: "down"},
        timeout=30,
        what="host b down and host a still up in /api/v1/targets",
    )
    assert (
        prometheus.query(f'up{{job="{thresholds.WORKER_JOB}"}} == 0').json()["data"]["result"][0]["metric"]["instance"]
        == address["b"]
    )
