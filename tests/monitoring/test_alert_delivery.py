"""Alert delivery end to end: worker down -> Prometheus -> Alertmanager -> webhook, and back when it returns.

Real processes: a celery worker, Prometheus (1 s scrape and evaluation) with
the real recording rules and a copy of the real alert rules in which only
PanicMetricsWorkerDown's `for` is 2 s instead of 1 m, Alertmanager with the
real routing tree and inhibitions whose receivers all point at an HTTP
server in this test (group waits shortened), and `panic-metrics
serve-metrics` with ALERTMANAGER_URL, serving `GET /api/v1/metrics/alerts`.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitoring.generator import thresholds
from tests.monitoring.support import RULE_FILES, Alertmanager, Prometheus
from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, free_port, wait_until
from tests.support.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALERT = "PanicMetricsWorkerDown"
TEST_FOR = "2s"


class Webhook:
    """An HTTP server that keeps every Alertmanager notification it receives."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with received._lock:
                    received.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self, *, receiver: str, status: str) -> list[dict[str, Any]]:
        """Alerts named ALERT that reached `receiver` in a notification with `status` (firing, resolved)."""
        with self._lock:
            return [
                alert
                for notification in self.notifications
                if notification["receiver"] == receiver
                for alert in notification["alerts"]
                if alert["labels"].get("alertname") == ALERT and alert["status"] == status
            ]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook._thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The real alertmanager.yml, every receiver sending to `webhook_url`, groups flushed within a second."""
    config = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())
    config["global"] = {"resolve_timeout": "5m"}  # no SMTP or Slack secrets to read here
    config["receivers"] = [
        {"name": receiver["name"], "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        for receiver in config["receivers"]
    ]
    config["route"].update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    return config


def alert_rules_with_short_for(path: Path) -> Path:
    """A copy of the real alert rules where only ALERT's `for` is TEST_FOR."""
    rules = yaml.safe_load(RULE_FILES[1].read_text())
    changed = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == ALERT:
                rule["for"] = TEST_FOR
                changed += 1
    assert changed == 1
    path.write_text(yaml.safe_dump(rules))
    return path


def test_worker_down_reaches_the_webhook_and_the_alerts_api_then_resolves(
    own_redis: RedisServer,
    own_database: PostgresDatabase,
    processes: list[LoggedProcess],
    webhook: Webhook,
    tmp_path: Path,
) -> None:
    """Stop the worker: the alert reaches both critical receivers with its labels and annotations, and
    /api/v1/metrics/alerts lists it; start the worker again: the alert resolves."""
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url}
    worker = Worker(env, tmp_path / "worker")
    alertmanager = Alertmanager(tmp_path / "alertmanager", alertmanager_config(webhook.url))
    prometheus = Prometheus(
        tmp_path / "prometheus",
        targets=[f"127.0.0.1:{worker.port}"],
        rule_files=(RULE_FILES[0], alert_rules_with_short_for(tmp_path / "alerts.yml")),
        alertmanager=f"127.0.0.1:{alertmanager.port}",
    )
    api_port = free_port()
    api = LoggedProcess(
        [sys.executable, "-m", "app.cli", "serve-metrics", "--host", "127.0.0.1", "--port", str(api_port)],
        {**env, "ALERTMANAGER_URL": alertmanager.url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "api_multiproc")},
        tmp_path / "serve-metrics.log",
    )
    processes.extend([alertmanager, prometheus, worker, api])
    alertmanager.start()
    prometheus.start()
    worker.start()
    api.start_process()
    alerts_url = f"http://127.0.0.1:{api_port}/api/v1/metrics/alerts"
    wait_until(prometheus.targets_up, timeout=30, what="Prometheus to scrape the worker")

    worker.stop()
    instance = f"127.0.0.1:{worker.port}"
    for receiver in ("webhook", "oncall"):  # a critical goes to the incident webhook and to on-call
        wait_until(
            lambda receiver=receiver: bool(webhook.alerts(receiver=receiver, status="firing")),
            timeout=60,
            what=f"{ALERT} firing at receiver {receiver} (Prometheus log: {prometheus.log_path})",
        )
    fired = webhook.alerts(receiver="oncall", status="firing")[0]
    assert fired["labels"] == {
        "alertname": ALERT,
        "severity": "critical",
        "job": thresholds.WORKER_JOB,
        "instance": instance,
    }
    assert fired["annotations"] == {
        "summary": f"Worker endpoint {instance} is down",
        "description": (
            f"Prometheus cannot scrape {instance}: the worker or its metrics endpoint is not running."
            " Its events wait in Redis and its host's metrics are not collected."
        ),
        "runbook_url": f"{thresholds.RUNBOOK_URL}#panicmetricsworkerdown",
    }
    assert webhook.alerts(receiver="slack", status="firing") == []  # warnings only

    def listed() -> list[dict[str, Any]]:
        try:
            response = httpx.get(alerts_url, timeout=5)
        except httpx.HTTPError:
            return []
        return (
            [a for a in response.json().get("alerts", []) if a["name"] == ALERT] if response.status_code == 200 else []
        )

    wait_until(lambda: bool(listed()), timeout=30, what=f"{ALERT} in GET /api/v1/metrics/alerts")
    shown = listed()[0]
    assert shown["severity"] == "critical"
    assert shown["state"] == "active"
    assert shown["summary"] == f"Worker endpoint {instance} is down"
    assert shown["labels"]["instance"] == instance

    worker.start()
    wait_until(
        lambda: bool(webhook.alerts(receiver="oncall", status="resolved")),
        timeout=60,
        what=f"{ALERT} resolved at receiver oncall",
    )
    resolved = webhook.alerts(receiver="oncall", status="resolved")[-1]
    assert resolved["labels"] == fired["labels"]
    wait_until(lambda: not listed(), timeout=30, what=f"{ALERT} gone from GET /api/v1/metrics/alerts")
