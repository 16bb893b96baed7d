"""Redis with a password and an ACL user, given through BROKER_URL and REDIS_URL, on real workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from app.broker import check_broker
from app.config import get_settings
from app.db.models import MetricEvent
from tests.access.conftest import AuthRedisServer, Tls
from tests.access.test_endpoint_access import TOKEN
from tests.support.services import PostgresDatabase, wait_until
from tests.support.worker import Worker
from workers.celery_app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test starts; all stopped afterwards."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def publish(broker_url: str, zone: str, **settings: object) -> None:
    """Send one panic request event through `broker_url`, as app code would."""
    publisher = create_app(get_settings().model_copy(update={"broker_url": broker_url, **settings}))
    try:
        payload = {"kind": "panic_request", "service_type": "medical", "status": "requested", "zone": zone}
        publisher.send_task("panic_metrics.events.record_events", args=[[payload]])
    finally:
        publisher.close()


def stored(engine: Engine, zone: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).where(MetricEvent.zone == zone)
        return int(connection.execute(query).scalar_one())


def test_a_worker_with_credentials_in_its_urls_consumes_and_reports_healthy(
    *,
    auth_redis: AuthRedisServer,
    pg_database: PostgresDatabase,
    pg_engine: Engine,
    workers: list[Worker],
    tls: Tls,
    tmp_path: Path,
) -> None:
    """BROKER_URL with an ACL user, REDIS_URL with the default user's password: health is green, events stored.

    The worker's own endpoint serves over TLS with a token (the same access
    policy as serve-metrics). No password appears in any log line (DEBUG),
    in /health or in the API's health report.
    """
    broker = auth_redis.url_for(auth_redis.user, auth_redis.user_password)
    env = {
        "BROKER_URL": broker,
        "REDIS_URL": auth_redis.url_for("", auth_redis.password, db=1),
        "DATABASE_URL": pg_database.url,
        "LOG_LEVEL": "DEBUG",
        "METRICS_AUTH_TOKEN": TOKEN,
        "METRICS_TLS_CERT_FILE": str(tls.cert_file),
        "METRICS_TLS_KEY_FILE": str(tls.key_file),
    }
    worker = Worker(env, tmp_path / "worker", concurrency=1)
    workers.append(worker)
    worker.start_process()
    base = f"https://127.0.0.1:{worker.port}"
    client = httpx.Client(base_url=base, verify=tls.client_context(), timeout=30)

    def answers() -> bool:
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker exited; log:\n{worker.log()[-3000:]}")
        try:
            return client.get("/health").status_code in {200, 503}
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=90, what=f"the worker's TLS endpoint (log: {worker.log_path})")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer).status_code == 200
    health = client.get("/health", headers=bearer)
    assert health.status_code == 200
    assert health.json()["checks"]["broker"]["ok"] is True
    report = client.get("/api/v1/metrics/health", headers=bearer)
    assert report.status_code == 200
    assert report.json()["dependencies"] == {"broker": True, "database": True, "redis": True}

    zone = f"acl-{uuid.uuid4().hex[:8]}"
    publish(broker, zone)
    wait_until(lambda: stored(pg_engine, zone) == 1, timeout=60, what="the event sent through the ACL user")

    client.close()
    for secret in (auth_redis.user_password, auth_redis.password, TOKEN):
        assert secret not in worker.log()
        assert secret not in health.text
        assert secret not in report.text


def test_failing_connections_with_passwords_in_their_urls_log_no_password(
    auth_redis: AuthRedisServer, pg_database: PostgresDatabase, workers: list[Worker], tmp_path: Path
) -> None:
    """A wrong database password (task retry log, /health) and a wrong broker password (start-up): none logged."""
    database_password = "wrong-db-Pw-8d1e"
    database = make_url(pg_database.url).set(password=database_password).render_as_string(hide_password=False)
    broker = auth_redis.url_for(auth_redis.user, auth_redis.user_password, db=2)  # a queue of its own
    retrying = Worker(
        {
            "BROKER_URL": broker,
            "DATABASE_URL": database,
            "LOG_LEVEL": "DEBUG",
            "TASK_MAX_RETRIES": "1",
            "TASK_RETRY_BACKOFF_MAX_SECONDS": "1",
        },
        tmp_path / "retrying",
        concurrency=1,
    )
    workers.append(retrying.start())
    health = httpx.get(retrying.health_url, timeout=30)
    assert health.status_code == 503
    assert health.json()["checks"]["database"]["ok"] is False
    publish(broker, f"retry-{uuid.uuid4().hex[:8]}")
    wait_until(lambda: "Retry in" in retrying.log(), timeout=60, what=f"a task retry logged in {retrying.log_path}")

    wrong_broker_password = "wrong-broker-Pw-3f9a"
    refused = Worker(
        {"BROKER_URL": auth_redis.url_for(auth_redis.user, wrong_broker_password, db=3), "LOG_LEVEL": "DEBUG"},
        tmp_path / "refused",
        concurrency=1,
    )
    refused.start_process()
    try:
        wait_until(lambda: "Cannot connect" in refused.log(), timeout=60, what=f"a broker error in {refused.log_path}")
    finally:
        refused.kill()  # it holds nothing: no need to wait for a warm shutdown

    for log in (retrying.log(), refused.log()):
        for secret in (database_password, wrong_broker_password, auth_redis.user_password):
            assert secret not in log
    assert database_password not in health.text


def test_rediss_verifies_the_certificate_and_carries_events(
    *,
    tls_redis: AuthRedisServer,
    pg_database: PostgresDatabase,
    pg_engine: Engine,
    workers: list[Worker],
    tls: Tls,
    tmp_path: Path,
) -> None:
    """`rediss://` with REDIS_TLS_CA_FILE: a worker consumes over TLS and reports Redis up.

    Without the CA the same URL is refused (the server's certificate is
    verified, where kombu alone would fall back to no verification at all).
    """
    broker = tls_redis.url_for(tls_redis.user, tls_redis.user_password)
    untrusted = get_settings().model_copy(update={"broker_url": broker, "redis_tls_ca_file": None})
    assert check_broker(untrusted)["ok"] is False
    assert check_broker(untrusted.model_copy(update={"redis_tls_ca_file": tls.ca_file}))["ok"] is True

    env = {"BROKER_URL": broker, "REDIS_TLS_CA_FILE": str(tls.ca_file), "DATABASE_URL": pg_database.url}
    worker = Worker(env, tmp_path / "worker", concurrency=1)
    workers.append(worker.start())
    report = httpx.get(f"http://127.0.0.1:{worker.port}/api/v1/metrics/health", timeout=30)
    assert report.json()["dependencies"] == {"broker": True, "database": True, "redis": True}
    zone = f"tls-{uuid.uuid4().hex[:8]}"
    publish(broker, zone, redis_tls_ca_file=tls.ca_file)
    wait_until(lambda: stored(pg_engine, zone) == 1, timeout=60, what="the event sent over rediss://")
    assert tls_redis.user_password not in worker.log()
