"""Two beat-running worker hosts, found by Prometheus through file_sd: the newest window wins whichever host ran it.

Each host is `celery worker --beat` (as `make run` deploys it) with its own
hostname, multiprocess directory, endpoint and beat schedule file, on the
test's own Redis and PostgreSQL. Prometheus runs the shipped worker job
(file_sd, a targets file listing both hosts) and the generated rules. The
window claim moves by stopping and starting hosts, not by steering queues:

1. host A alone (B not started) computes window W1;
2. A stopped, B started: B computes W2 (A's target down);
3. A restarted, B still up: whichever wins W3.

Each window's events carry a response time of their own (300, 200, 100 s),
so the README's expression, and the `:newest` rules recording it, must show
each round's figure and never an older one after it.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Row, create_engine, select

from app.db.models import ScheduledJobRun
from app.windows import window_start
from tests.integration.test_scheduled_beat import SHORT_INTERVALS
from tests.monitoring.support import Prometheus, scraping_by_file_sd
from tests.monitoring.test_expressions_live import publish
from tests.monitoring.test_job_gauges_live import panic, stored_events
from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, wait_until
from tests.support.worker import Worker
from workers.tasks import events as tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Windows of several seconds: a beat's run expires after 0.9 of its interval in the
# queue (beat_schedule.EXPIRY_SHARE), and a round's figure is shown for about one window.
WINDOW = 10
GRACE = 2
INTERVALS = {
    **SHORT_INTERVALS,
    "HEALTH_REFRESH_INTERVAL_SECONDS": "5",
    "SUBSCRIPTION_REFRESH_INTERVAL_SECONDS": "5",
    "PERFORMANCE_WINDOW_SECONDS": str(WINDOW),
    "PERFORMANCE_GRACE_SECONDS": str(GRACE),
    "CLEANUP_INTERVAL_SECONDS": "10",
}
PERFORMANCE_JOBS = ("aggregate_zone_performance", "aggregate_firm_performance")


def documented_expression(metric: str) -> str:
    """README's expression for reading a job gauge across hosts, for `metric` (it shows zone_completion_ratio)."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"### Job gauges across hosts.*?```promql\n(.*?)```", readme, re.DOTALL)
    assert found is not None, "README.md has no PromQL block under 'Job gauges across hosts'"
    return found.group(1).replace("zone_completion_ratio", metric)


def claims(engine: Engine) -> Sequence[Row[tuple[str, datetime, str, datetime | None]]]:
    """Every claim row: job, window, owner, finished."""
    columns = (ScheduledJobRun.job, ScheduledJobRun.window_start, ScheduledJobRun.owner, ScheduledJobRun.finished_at)
    with engine.connect() as connection:
        return connection.execute(select(*columns)).all()


def owner_pid(owner: str) -> int:
    """The process that held a claim: owner is `host:pid:task id` (app.jobs.default_owner)."""
    return int(owner.split(":")[1])


def history(prometheus: Prometheus, expr: str, label: str, subject: str) -> list[float]:
    """Every value `expr` took for `subject` in the last quarter hour, oldest first (one series, or none)."""
    response = prometheus.query(f"({expr})[15m:1s]")
    response.raise_for_status()
    series = [r for r in response.json()["data"]["result"] if r["metric"].get(label) == subject]
    assert len(series) <= 1, f"{expr} gave several series for {subject}: counted once per host"
    return [float(v) for _, v in series[0]["values"]] if series else []


def shown_in_turn(prometheus: Prometheus, expr: str, label: str, subject: str) -> list[float]:
    """The figures `expr` showed, in order: one entry per run of equal values, NaN runs (empty windows) left out.

    A figure that comes back after a NaN (an empty window) is listed again: an older window shown again.
    """
    runs: list[float] = []
    for figure in history(prometheus, expr, label, subject):
        if not runs or not (figure == runs[-1] or (math.isnan(figure) and math.isnan(runs[-1]))):
            runs.append(figure)
    return [figure for figure in runs if not math.isnan(figure)]


def ran_once_on(engine: Engine, start: datetime, running: Mapping[str, Worker]) -> None:
    """Each performance job claimed `start` once, from a pool child of a host that is up; every claim is finished."""
    rows = claims(engine)
    children = {name: set(worker.children()) for name, worker in running.items()}
    for job in PERFORMANCE_JOBS:
        (claim,) = (row for row in rows if row.job == job and row.window_start == start)
        winners = [name for name, pids in children.items() if owner_pid(claim.owner) in pids]
        assert winners, (job, claim.owner, children)
    assert all(row.finished_at is not None for row in rows), [row for row in rows if row.finished_at is None]


def every_window_once(engine: Engine, newest: datetime) -> None:
    """Across the handovers no performance window was missed or run twice: one claim each, back to back."""
    rows = claims(engine)
    for job in PERFORMANCE_JOBS:
        starts = sorted(row.window_start for row in rows if row.job == job)
        assert len(starts) == len(set(starts))
        assert starts[-1] == newest
        gaps = {later - earlier for earlier, later in itertools.pairwise(starts)}
        assert gaps == {timedelta(seconds=WINDOW)}, (job, starts)


def test_claim_moves_between_beat_running_hosts_and_prometheus_shows_the_newest_window(
    own_redis: RedisServer, own_database: PostgresDatabase, processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """A alone wins W1, B alone W2, both up for W3: the documented expression shows each window's figure in turn."""
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url, **INTERVALS}
    hosts = {
        name: Worker(
            env,
            tmp_path / name,
            concurrency=1,
            extra=("--beat", "--schedule", str(tmp_path / name / "celerybeat-schedule")),
        )
        for name in ("a", "b")
    }
    address = {name: f"127.0.0.1:{worker.port}" for name, worker in hosts.items()}
    prometheus = scraping_by_file_sd(tmp_path / "prometheus", address.values())
    processes.extend([prometheus, *hosts.values()])
    prometheus.start()
    engine = create_engine(own_database.url)

    # The documented expression (evaluated over the past by a subquery) and the rules recording it.
    readings = {
        "README, zone p95": (documented_expression("zone_response_time_p95_seconds"), "zone", "harbour"),
        "README, firm p50": (
            documented_expression("firm_response_time_p50_seconds").replace(
                "aggregate_zone_performance", "aggregate_firm_performance"
            ),
            "firm_id",
            "firm-ember",
        ),
        "rule, zone p95": ("zone:zone_response_time_p95_seconds:newest", "zone", "harbour"),
        "rule, firm p50": ("firm_id:firm_response_time_p50_seconds:newest", "firm_id", "firm-ember"),
    }

    def up(expected: Mapping[str, str]) -> None:
        want = {address[name]: health for name, health in expected.items()}
        wait_until(
            lambda: prometheus.targets() == want, timeout=60, what=f"targets {want} (log: {prometheus.log_path})"
        )

    # (who is up, the window's response time). Falling figures: a host still serving an
    # older window (B in round 3, if A wins W3) shows a greater one, which a plain max would pick.
    rounds = [({"a"}, 300.0), ({"b"}, 200.0), ({"a", "b"}, 100.0)]
    windows: list[datetime] = []
    for step, (running, response_time) in enumerate(rounds):
        for name, worker in hosts.items():
            if name not in running:
                worker.stop()
        for name in sorted(running):
            if hosts[name].process is None:
                hosts[name].start_process()
        for name in sorted(running):
            hosts[name].wait_ready(timeout=120)
        up({name: "up" if name in running else "down" for name in hosts})

        # The next window: no run has claimed it yet, whichever host runs it.
        start = window_start(datetime.now(UTC), WINDOW) + timedelta(seconds=WINDOW)
        windows.append(start)
        publish(
            own_redis.url,
            tasks.record_events,
            [panic("harbour", "firm-ember", response_time, start + timedelta(seconds=1))],
        )
        wait_until(lambda n=step + 1: stored_events(engine) == n, timeout=60, what=f"round {step}'s event stored")
        assert datetime.now(UTC) < start + timedelta(seconds=WINDOW + GRACE), "stored after its window was due"

        for what, (expr, label, subject) in readings.items():
            wait_until(
                lambda e=expr, la=label, s=subject, n=step: (
                    shown_in_turn(prometheus, e, la, s) == [r[1] for r in rounds[: n + 1]]
                ),
                timeout=120,
                what=f"round {step} ({sorted(running)} up): {what} showing {response_time} after the earlier rounds",
            )

        ran_once_on(engine, start, {name: hosts[name] for name in running})

    every_window_once(engine, windows[-1])
    engine.dispose()
