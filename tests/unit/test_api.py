"""The JSON summaries of the metrics API, over HTTP against a real uvicorn server, bad parameters included."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, insert
from sqlalchemy.orm import Session

from app.cleanup import MEASURES
from app.config import Settings, get_settings
from app.db.models import DailyEventRollup, PerformanceSnapshot
from app.http.dependencies import engine_dependency, settings_dependency
from app.http.server import create_api
from app.metrics import definitions as m
from tests.support.metric_rows import insert_rows, row
from tests.support.services import free_port, wait_until
from tests.support.worker import scrape

NOW = datetime.now(UTC)
Serve = Callable[..., str]


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    return get_settings().model_copy(update={"broker_url": "filesystem://", "broker_folder": tmp_path / "broker"})


@pytest.fixture
def serve(sqlite_engine: Engine, embedded_settings: Settings) -> Iterator[Serve]:
    """Start the endpoint (with the API router) on a free port; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*, settings: Settings | None = None, engine: Engine | None = None) -> str:
        api = create_api(settings or embedded_settings)
        api.dependency_overrides[settings_dependency] = lambda: settings or embedded_settings
        api.dependency_overrides[engine_dependency] = lambda: engine or sqlite_engine
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, timeout=10, what="the API server")
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def alertmanager() -> Iterator[str]:
    """A stand-in Alertmanager answering /api/v2/alerts with one firing alert."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/api/v2/alerts") and "active=true" in self.path:
                body = [
                    {
                        "labels": {"alertname": "ZoneResponseSlow", "severity": "warning", "zone": "downtown"},
                        "annotations": {"summary": "p95 above 10 minutes"},
                        "status": {"state": "active"},
                        "startsAt": "2026-11-24T12:00:00Z",
                    }
                ]
                payload, status = json.dumps(body).encode(), 200
            else:
                payload, status = b"{}", 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def seed_business(engine: Engine) -> None:
    hour_ago = NOW - timedelta(hours=1)
    panic = [("requested", 4), ("completed", 2), ("prank", 1), ("cancelled", 1)]
    rows = [
        row("panic_request", hour_ago, service_type="security", status=status, zone="downtown")
        for status, count in panic
        for _ in range(count)
    ]
    rows.append(row("panic_request", NOW - timedelta(hours=30), service_type="fire", status="requested", zone="x"))
    rows += [row("auth", hour_ago, user_type="registered_user", success=False, account_locked=i == 0) for i in range(2)]
    rows += [row("auth", hour_ago, user_type="registered_user", success=True, account_locked=False) for _ in range(3)]
    rows += [
        row(
            "subscription",
            hour_ago,
            subscription_id="s1",
            plan="premium",
            action="purchased",
            amount=349,
            currency="ZAR",
        ),
        row("subscription", hour_ago, subscription_id="s2", plan="basic", action="renewed", amount=99, currency="ZAR"),
        row("credit_transaction", hour_ago, customer_id="c", credit_type="purchase", credits=25, amount=50),
        row("credit_transaction", hour_ago, customer_id="c", credit_type="spend", credits=5),
        row("prank_detection", hour_ago, request_id="r", zone="downtown", detector="repeat_caller"),
    ]
    archived = dict.fromkeys(("service_type", "status", "zone", "firm_id", "detector", "user_type", "channel"), "")
    archived |= dict.fromkeys(("notification_type", "plan", "action", "currency", "credit_type", "method"), "")
    archived |= {"endpoint": "", "source": "", "http_status": 0, **dict.fromkeys(MEASURES, 0)}
    archived |= {"kind": "panic_request", "service_type": "medical", "status": "requested", "zone": "old", "events": 10}
    with Session(engine) as session, session.begin():
        insert_rows(session, rows)
        session.execute(insert(DailyEventRollup), [{**archived, "day": (NOW - timedelta(days=2)).date()}])


def test_business_summary_counts_the_period(serve: Serve, sqlite_engine: Engine) -> None:
    """Panic requests by service type and status, auth, subscriptions, credits and the prank rate of 24 hours."""
    seed_business(sqlite_engine)
    body = httpx.get(f"{serve()}/api/v1/metrics/business", params={"hours": 24}).json()
    panic = body["panic_requests"]
    assert panic["total"] == 8
    assert panic["by_service_type"] == {"security": {"cancelled": 1, "completed": 2, "prank": 1, "requested": 4}}
    assert panic["prank_rate"] == 0.25
    assert body["auth"] == {
        "attempts": 5,
        "failures": 2,
        "lockouts": 1,
        "failure_rate": 0.4,
        "by_user_type": {"registered_user": {"attempts": 5, "failures": 2, "lockouts": 1}},
    }
    subscriptions = body["subscriptions"]
    assert subscriptions["active_by_plan"] == {"basic": 1, "premium": 1}
    assert subscriptions["purchases_by_plan"] == {"premium": 1}
    assert subscriptions["revenue_by_currency"] == {"ZAR": 448.0}
    assert body["credit_transactions"]["by_type"]["purchase"] == {"count": 1, "credits": 25, "amount": 50.0}
    assert body["prank_detections"] == {"total": 1, "by_detector": {"repeat_caller": 1}}


def test_business_summary_reaches_into_the_archive(serve: Serve, sqlite_engine: Engine) -> None:
    """Three days back includes the event of 30 hours ago and the daily rollup of two days ago."""
    seed_business(sqlite_engine)
    body = httpx.get(f"{serve()}/api/v1/metrics/business", params={"hours": 72}).json()
    assert body["panic_requests"]["by_service_type"]["medical"] == {"requested": 10}
    assert body["panic_requests"]["by_service_type"]["fire"] == {"requested": 1}


def test_performance_summary_from_snapshots(serve: Serve, sqlite_engine: Engine) -> None:
    """Totals per zone and firm over the hours asked; a zone filter adds that zone's windows."""
    start = NOW.replace(second=0, microsecond=0) - timedelta(hours=1)
    snapshot = {"cancelled": 0, "response_time_p50": 60.0, "response_time_p95": 200.0, "prank_ratio": 0.0}
    rows = [
        {**snapshot, "subject_type": "zone", "subject": "downtown", "requests": 3, "completed": 1, "pranks": 0}
        | {"window_start": start + timedelta(minutes=5 * i), "window_end": start + timedelta(minutes=5 * i + 5)}
        | {"completion_ratio": 1.0}
        for i in range(3)
    ]
    rows.append(
        {**snapshot, "subject_type": "firm", "subject": "firm-aegis", "requests": 1, "completed": 1, "pranks": 1}
        | {"window_start": start, "window_end": start + timedelta(minutes=5), "completion_ratio": 0.5}
    )
    with Session(sqlite_engine) as session, session.begin():
        session.execute(insert(PerformanceSnapshot), rows)
    base = serve()
    everything = httpx.get(f"{base}/api/v1/metrics/performance").json()
    (zone,) = everything["zones"]
    assert (zone["subject"], zone["requests"], zone["windows_count"], "windows" in zone) == ("downtown", 9, 3, False)
    (firm,) = everything["firms"]
    assert (firm["completion_ratio"], firm["prank_ratio"]) == (0.5, 0.5)
    one = httpx.get(f"{base}/api/v1/metrics/performance", params={"zone": "downtown", "hours": 12}).json()
    assert "firms" not in one
    assert [w["requests"] for w in one["zones"][0]["windows"]] == [3, 3, 3]
    assert httpx.get(f"{base}/api/v1/metrics/performance", params={"firm_id": "nobody"}).json()["firms"] == []


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("business", {"hours": 0}, "hours"),
        ("business", {"hours": "a day"}, "hours"),
        ("business", {"hours": 10**6}, "hours"),
        ("performance", {"hours": -1}, "hours"),
        ("performance", {"zone": ""}, "zone"),
        ("performance", {"firm_id": "x" * 200}, "firm_id"),
    ],
)
def test_bad_parameters_get_422_naming_the_parameter(
    serve: Serve, path: str, params: dict[str, Any], parameter: str
) -> None:
    """A bad query parameter is a 422 whose detail names it."""
    response = httpx.get(f"{serve()}/api/v1/metrics/{path}", params=params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", parameter]]


def test_alerts_come_from_alertmanager(serve: Serve, embedded_settings: Settings, alertmanager: str) -> None:
    """Active alerts are read from Alertmanager's v2 API."""
    settings = embedded_settings.model_copy(update={"alertmanager_url": alertmanager})
    body = httpx.get(f"{serve(settings=settings)}/api/v1/metrics/alerts").json()
    assert body["count"] == 1
    assert body["alerts"][0] | {"labels": None, "annotations": None} == {
        "name": "ZoneResponseSlow",
        "severity": "warning",
        "state": "active",
        "starts_at": "2026-11-24T12:00:00Z",
        "summary": "p95 above 10 minutes",
        "labels": None,
        "annotations": None,
    }


@pytest.mark.parametrize(
    ("url", "error"), [(None, "alertmanager_not_configured"), ("http://127.0.0.1:1", "alertmanager_unreachable")]
)
def test_alerts_without_alertmanager_are_a_clear_503(
    serve: Serve, embedded_settings: Settings, url: str | None, error: str
) -> None:
    """No Alertmanager configured, or none answering: 503 with a JSON error saying which."""
    settings = embedded_settings.model_copy(update={"alertmanager_url": url})
    response = httpx.get(f"{serve(settings=settings)}/api/v1/metrics/alerts")
    assert response.status_code == 503
    assert response.json()["error"] == error


def test_prometheus_path_serves_what_metrics_serves(serve: Serve) -> None:
    """/api/v1/metrics/prometheus is the same exposition as /metrics."""
    m.JOB_LAST_SUCCESS.labels(scheduled_job="api-test").set(1234.0)
    base = serve()
    served, metrics = scrape(f"{base}/api/v1/metrics/prometheus"), scrape(f"{base}/metrics")
    assert served.keys() == metrics.keys()

    def comparable(samples: dict[Any, float]) -> dict[Any, str]:
        # The scrape's timing of itself differs between two scrapes; NaN (a quiet zone) is not equal to itself.
        return {k: repr(v) for k, v in samples.items() if not k[0].startswith("metrics_scrape_")}

    assert comparable(served) == comparable(metrics)
    key = ("metrics_job_last_success_timestamp_seconds", frozenset({("scheduled_job", "api-test")}))
    assert scrape(f"{base}/api/v1/metrics/prometheus")[key] == 1234.0


def test_health_summary_reports_dependencies(serve: Serve) -> None:
    """Broker and database up on the embedded default: 200 and their figures."""
    response = httpx.get(f"{serve()}/api/v1/metrics/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["dependencies"] == {"broker": True, "database": True}
    assert set(body["queues"]) == {"events", "scheduled"}


def test_health_summary_is_503_when_the_database_is_down(serve: Serve) -> None:
    """A dependency down makes the summary 503, saying which."""
    down = create_engine("postgresql+psycopg://nobody:nothing@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    response = httpx.get(f"{serve(engine=down)}/api/v1/metrics/health")
    assert response.status_code == 503
    assert response.json()["dependencies"]["database"] is False


def test_update_cache_metrics_always_needs_the_token(serve: Serve, embedded_settings: Settings) -> None:
    """POST runs the health refresh now, only with the bearer METRICS_AUTH_TOKEN; with none set it is disabled."""
    guarded = serve(settings=embedded_settings.model_copy(update={"metrics_auth_token": SecretStr("s3cret")}))
    url = f"{guarded}/api/v1/metrics/update-cache-metrics"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.post(url, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert ok.json()["report"]["dependencies"]["database"] is True
    open_endpoint = serve()  # loopback, no credentials configured: reads are open, the POST is not
    assert httpx.get(f"{open_endpoint}/api/v1/metrics/health").status_code == 200
    refused = httpx.post(f"{open_endpoint}/api/v1/metrics/update-cache-metrics")
    assert refused.status_code == 403
    assert "METRICS_AUTH_TOKEN" in refused.json()["detail"]


def test_openapi_describes_every_route(serve: Serve) -> None:
    """The OpenAPI document lists the summaries, their parameters and the POST."""
    spec = httpx.get(f"{serve()}/openapi.json").json()
    paths = {p for p in spec["paths"] if p.startswith("/api/v1/metrics/")}
    assert paths == {
        f"/api/v1/metrics/{name}"
        for name in ("health", "business", "performance", "alerts", "prometheus", "update-cache-metrics")
    }
    parameters = {p["name"] for p in spec["paths"]["/api/v1/metrics/performance"]["get"]["parameters"]}
    assert parameters == {"firm_id", "zone", "hours"}


def test_health_is_one_answer_at_both_paths(serve: Serve) -> None:
    """/health and /api/v1/metrics/health give the same answer: the host's checks and the refresh's report."""
    base = serve()
    answers = [httpx.get(f"{base}{path}") for path in ("/health", "/api/v1/metrics/health")]

    assert [answer.status_code for answer in answers] == [200, 200]
    bodies = [answer.json() for answer in answers]
    assert bodies[0].keys() == bodies[1].keys()
    assert set(bodies[0]["checks"]) == {"broker", "database", "metrics_directory"}
    assert bodies[0]["dependencies"] == {"broker": True, "database": True}
    assert bodies[0]["status"] == bodies[1]["status"] == "ok"


def test_bare_health_answers_its_status_only_and_the_details_need_credentials(
    serve: Serve, embedded_settings: Settings
) -> None:
    """With a token configured, /health without it is `{"status": ...}`; with it, the checks and the report."""
    base = serve(settings=embedded_settings.model_copy(update={"metrics_auth_token": SecretStr("s3cret")}))

    bare = httpx.get(f"{base}/health")
    detailed = httpx.get(f"{base}/health", headers={"Authorization": "Bearer s3cret"})

    assert bare.status_code == 200
    assert bare.json() == {"status": "ok"}
    assert detailed.status_code == 200
    assert set(detailed.json()) >= {"status", "version", "checks", "dependencies", "queues"}
    assert httpx.get(f"{base}/api/v1/metrics/health").status_code == 401
