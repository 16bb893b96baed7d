"""The client installs alone into a web app's environment, beside the platform's own package `app`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import redis

from tests.support.processes import ROOT
from tests.support.services import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The platform's own `app` package, with the seed's module names.
PLATFORM_APP = {
    "app/__init__.py": "",
    "app/core/__init__.py": "",
    "app/core/metrics.py": "SEED = 'platform'\n",
    "app/tasks/__init__.py": "",
    "app/tasks/metrics.py": (
        "from panic_metrics_client import record_panic_request_metrics, record_http_request_metrics\n"
        "def on_panic(zone):\n"
        "    return record_panic_request_metrics.delay(service_type='security', status='requested', zone=zone)\n"
    ),
}

SCRIPT = """
import json, sys
import app.core.metrics, app.tasks.metrics
from panic_metrics_client import flush, record_http_request_metrics
ids = [str(app.tasks.metrics.on_panic("harbour"))]
ids.append(str(record_http_request_metrics(method="GET", endpoint="/api/{id}", status=200, duration=0.2)))
assert flush(30)
print(json.dumps({"ids": ids, "app": app.core.metrics.SEED, "modules": sorted(sys.modules)}))
"""


def test_client_installed_alone_records_events_beside_a_package_named_app(tmp_path: Path) -> None:
    """A fresh venv with only client/ installed: the platform's `app` stays its own, and events reach Redis."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT / "client")],
        check=True,
        timeout=600,
    )
    platform = tmp_path / "platform"
    for name, text in PLATFORM_APP.items():
        (platform / name).parent.mkdir(parents=True, exist_ok=True)
        (platform / name).write_text(text)
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "panic-metrics-client" in names
    assert not names & {"celery", "panic-metrics", "sqlalchemy", "fastapi", "prometheus-client"}

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        result = subprocess.run(
            [str(python), "-c", SCRIPT],
            cwd=platform,
            env={"PANIC_METRICS_BROKER_URL": server.url, "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool")},
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(result.stdout)
        with redis.Redis.from_url(server.url) as connection:
            messages = [json.loads(raw) for raw in connection.lrange("events", 0, -1)]
    finally:
        server.stop()
    assert report["app"] == "platform"
    assert not [m for m in report["modules"] if m.startswith(("workers", "celery", "app.config", "app.events"))]
    tasks = sorted(m["headers"]["task"] for m in messages)
    assert tasks == ["panic_metrics.events.record_events", "panic_metrics.events.record_panic_request_metrics"]
    (batch,) = [m for m in messages if m["headers"]["task"] == "panic_metrics.events.record_events"]
    _args, kwargs, _embed = json.loads(base64.b64decode(batch["body"]))
    assert [(e["kind"], e["count"]) for e in kwargs["events"]] == [("http_summary", 1)]  # the request, summed
    assert all(m["headers"]["published_at"] for m in messages)
    assert len(report["ids"]) == 2
    assert sys.executable != str(python)
