"""The operator's commands from a fresh shell: no environment but PATH, HOME and the broker, on both brokers.

`celery` loads Flower's command plugin, and with it prometheus_client, before
`-A` imports our app: these processes start with single-process values, and
must run all the same. One worker per broker, itself started from a fresh
shell, answers every command of the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.flower import running_flower
from tests.support.processes import LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, free_port, wait_until
from tests.support.worker import scrape, total, value

pytestmark = pytest.mark.integration

#: An operator's shell with the virtualenv on its PATH and nothing else set.
FRESH_PATH = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
CELERY = ("celery", "-A", "workers.celery_app")


@dataclass
class FreshShell:
    """A working directory (the embedded default's `var/` lands there) and the few variables an operator sets."""

    cwd: Path
    broker: dict[str, str]  # empty on the embedded default: nothing to set
    database: dict[str, str]
    hostname: str
    metrics_port: int

    def env(self, **more: str) -> dict[str, str]:
        return {"PATH": FRESH_PATH, "HOME": str(self.cwd), **self.broker, **more}

    def run(self, *argv: str, database: bool = False, timeout: float = 60) -> str:
        """Run a command as typed; its output (stdout and stderr), asserting it exited 0."""
        env = self.env(**(self.database if database else {}))
        done = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{output}"
        return output

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@pytest.fixture(scope="module", params=["embedded", "redis"])
def shell(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshShell]:
    """A worker started from a fresh shell on the embedded default (SQLite, filesystem broker) or on Redis."""
    cwd = tmp_path_factory.mktemp(f"fresh-{request.param}")
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        database: PostgresDatabase = request.getfixturevalue("pg_database")
        shell = FreshShell(cwd, {"BROKER_URL": redis.url}, {"DATABASE_URL": database.url}, "", 0)
    else:
        shell = FreshShell(cwd, {}, {}, "", 0)
    shell.metrics_port = free_port()
    shell.hostname = f"fresh-{shell.metrics_port}@localhost"
    shell.run("panic-metrics", "migrate", database=True)
    worker = LoggedProcess(
        [*CELERY, "worker", "--queues", "events,scheduled", "--concurrency", "1", "--hostname", shell.hostname],
        shell.env(**shell.database, METRICS_PORT=str(shell.metrics_port)),
        cwd / "worker.log",
        inherit=False,
        cwd=cwd,
    )
    worker.start_process()
    try:

        def answers() -> bool:
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"worker exited; log:\n{worker.log()[-4000:]}")
            try:
                return httpx.get(shell.metrics_url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=90, what=f"the fresh-shell worker's endpoint (log: {worker.log_path})")
        yield shell
    finally:
        worker.stop()


def test_status_and_ping_hear_the_worker(shell: FreshShell) -> None:
    """`celery status` and `inspect ping` start, and the worker answers them."""
    assert f"{shell.hostname}: OK" in shell.run(*CELERY, "status")
    assert f"{shell.hostname}: OK" in shell.run(*CELERY, "inspect", "ping")


def test_inspect_and_control_reach_the_worker(shell: FreshShell) -> None:
    """`inspect active` lists the worker; `control enable_events` is acknowledged by it."""
    active = shell.run(*CELERY, "inspect", "active")
    assert f"{shell.hostname}: OK" in active
    assert "1 node online" in active
    assert f"{shell.hostname}: OK" in shell.run(*CELERY, "control", "enable_events")


def test_call_publishes_a_task_the_worker_runs_and_counts(shell: FreshShell) -> None:
    """`celery call` prints a task id; the fresh-shell worker stores and counts the event in the directory."""
    zone = f"fresh{uuid.uuid4().hex[:8]}"
    kwargs = json.dumps({"service_type": "fire", "status": "requested", "zone": zone})
    output = shell.run(*CELERY, "call", "panic_metrics.events.record_panic_request_metrics", "--kwargs", kwargs)

    uuid.UUID(output.strip().splitlines()[-1])  # the task id, nothing else
    wait_until(
        lambda: total(scrape(shell.metrics_url), "panic_requests_total", zone=zone) == 1,
        timeout=60,
        what="the called task counted on /metrics",
    )


def test_a_plain_python_shell_reruns_a_window_with_delay(shell: FreshShell) -> None:
    """The scheduled task's docstring, typed in `python`: .delay() publishes and the worker runs the window."""
    code = (
        "from workers.tasks.scheduled import aggregate_zone_performance\n"
        "print(aggregate_zone_performance.delay(window_start='2026-11-24T12:00:00Z').id)\n"
    )
    output = shell.run("python", "-c", code)

    uuid.UUID(output.strip().splitlines()[-1])
    wait_until(
        lambda: (
            value(
                scrape(shell.metrics_url),
                "metrics_job_windows_total",
                scheduled_job="aggregate_zone_performance",
                outcome="done",
            )
            >= 1
        ),
        timeout=60,
        what="the window aggregated",
    )


def test_rerun_window_queues_the_window_and_a_worker_aggregates_it(shell: FreshShell) -> None:
    """`panic-metrics rerun-window --job firm --start …` names the aligned window; the worker aggregates it."""

    def done() -> float:
        return value(
            scrape(shell.metrics_url),
            "metrics_job_windows_total",
            scheduled_job="aggregate_firm_performance",
            outcome="done",
        )

    before = done()
    output = shell.run("panic-metrics", "rerun-window", "--job", "firm", "--start", "2026-11-24T12:03:10Z")

    assert (
        "queued aggregate_firm_performance for the window 2026-11-24T12:00:00+00:00 to 2026-11-24T12:05:00+00:00"
        in output
    )
    uuid.UUID(output.split("(task ")[1].split(")")[0])
    wait_until(lambda: done() == before + 1, timeout=60, what="the re-run window aggregated by the worker")


def test_rerun_window_refuses_a_time_it_cannot_read(shell: FreshShell) -> None:
    """A bad --start is a clear error, exit 2, and nothing is queued."""
    done = subprocess.run(
        ["panic-metrics", "rerun-window", "--job", "zone", "--start", "24/11/2026 noon"],
        cwd=shell.cwd,
        env=shell.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "not an ISO 8601 time" in done.stderr
    assert "queued" not in done.stdout


def test_report_purge_and_events_start(shell: FreshShell) -> None:
    """`report` prints the app's configuration, `purge -f` empties both queues, `events --dump` shows the worker."""
    assert "task_acks_late: True" in shell.run(*CELERY, "report")
    assert "from 2 queues" in shell.run(*CELERY, "purge", "-f")
    dump = LoggedProcess(
        [*CELERY, "events", "--dump"], shell.env(), shell.cwd / "events.log", inherit=False, cwd=shell.cwd
    )
    dump.start_process()
    try:
        wait_until(lambda: shell.hostname in dump.log(), timeout=30, what="the worker's events in the dump")
    finally:
        dump.stop()


def test_beat_starts_and_keeps_running(shell: FreshShell) -> None:
    """`celery beat` starts from a fresh shell (it writes no metric) and is still up seconds later."""
    beat = LoggedProcess(
        [*CELERY, "beat", "--loglevel", "INFO", "--schedule", str(shell.cwd / "beat-schedule")],
        shell.env(**shell.database),
        shell.cwd / "beat.log",
        inherit=False,
        cwd=shell.cwd,
    )
    beat.start_process()
    try:
        wait_until(lambda: "beat: Starting" in beat.log(), timeout=30, what="beat started")
        assert beat.process is not None
        assert beat.process.poll() is None, beat.log()
    finally:
        beat.stop()


def test_flower_started_as_the_readme_says_lists_the_worker(shell: FreshShell) -> None:
    """`FLOWER_BASIC_AUTH=… celery -A workers.celery_app flower --address=127.0.0.1` serves the worker in its API."""
    auth = ("ops", "fresh-shell-secret")
    broker = shell.broker.get("BROKER_URL", "filesystem://")
    env = shell.env()
    env.pop("BROKER_URL", None)
    with running_flower(broker, shell.cwd / "flower.log", fresh_env=env, auth=auth, cwd=shell.cwd) as api:
        assert httpx.get(f"{api}/workers", timeout=5).status_code == 401  # never without authentication

        def lists_the_worker() -> bool:
            return shell.hostname in httpx.get(f"{api}/workers", auth=auth, timeout=5).json()

        wait_until(lists_the_worker, timeout=60, what="the worker in Flower's /api/workers", interval=0.5)


def test_panic_metrics_commands_run(shell: FreshShell) -> None:
    """Every `panic-metrics` sub-command starts from a fresh shell and does its job."""
    assert "demo: sent" in shell.run("panic-metrics", "demo", "--rate", "5", "--duration", "1", database=True)
    replayed = shell.run("panic-metrics", "replay-dead-letters", database=True)
    assert "no dead letters in" in replayed or "published" in replayed
    shell.run("panic-metrics", "rejected", "list", database=True)
    assert "published 0 rejected payloads" in shell.run("panic-metrics", "rejected", "replay", "--all", database=True)


def test_serve_metrics_reads_the_workers_directory(shell: FreshShell) -> None:
    """`panic-metrics serve-metrics` from a fresh shell serves what the worker wrote in the default directory."""
    zone = f"served{uuid.uuid4().hex[:8]}"
    kwargs = json.dumps({"service_type": "medical", "status": "requested", "zone": zone})
    shell.run(*CELERY, "call", "panic_metrics.events.record_panic_request_metrics", "--kwargs", kwargs)
    port = free_port()
    endpoint = LoggedProcess(
        ["panic-metrics", "serve-metrics", "--port", str(port)],
        shell.env(**shell.database),
        shell.cwd / "serve-metrics.log",
        inherit=False,
        cwd=shell.cwd,
    )
    endpoint.start_process()
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def counted() -> bool:
            try:
                return total(scrape(url), "panic_requests_total", zone=zone) == 1
            except httpx.HTTPError:
                return False

        wait_until(counted, timeout=60, what="the worker's counts on the standalone endpoint")
    finally:
        endpoint.stop()
