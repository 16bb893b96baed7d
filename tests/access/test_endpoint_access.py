"""The real endpoint (`panic-metrics serve-metrics`, a real `celery worker`): credentials, TLS, the bind check."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.access.conftest import EndpointFactory, Tls
from tests.support.processes import ROOT
from tests.support.services import free_port, wait_until
from tests.unit.multiproc_helpers import FIRST_FAKE_PID, Clock, run_child, run_real_children

pytestmark = pytest.mark.integration

TOKEN = "tok-9f3c2b7e-0d4a-4e51-b6c8-2a7d1e5f9c30"
USER, PASSWORD = "prometheus", "pw-5b1e8d2c-7a9f-4c36-8e0b-3d6f2a1c9e47"
API = "/api/v1/metrics"
#: What Prometheus 2.42 sends when it scrapes (scrape/scrape.go, scrapeAcceptHeader).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_over_tls_every_path_needs_credentials_but_a_bare_health(
    start_endpoint: EndpointFactory, tls: Tls, tmp_path: Path
) -> None:
    """Over real TLS (verified against the test CA): refused without credentials, served with the token or basic auth.

    A bare /health answers its status only; the details, /metrics, /docs
    and the JSON API need credentials; the POST needs the bearer token
    (basic credentials do not grant it).
    """
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as a secret file usually ends
    endpoint = start_endpoint(
        {
            "METRICS_AUTH_TOKEN_FILE": str(token_file),
            "METRICS_AUTH_USERNAME": USER,
            "METRICS_AUTH_PASSWORD": PASSWORD,
            "METRICS_TLS_CERT_FILE": str(tls.cert_file),
            "METRICS_TLS_KEY_FILE": str(tls.key_file),
        }
    )
    base = f"https://127.0.0.1:{endpoint.port}"
    endpoint.wait_ready(base, verify=tls.client_context())
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, verify=tls.client_context(), timeout=30) as client:
        for path in ("/metrics", f"{API}/business", f"{API}/health", f"{API}/prometheus", "/docs", "/openapi.json"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "Bearer" in refused.headers["www-authenticate"]
            assert "Basic" in refused.headers["www-authenticate"]
            assert client.get(path, headers={"Authorization": "Bearer not-the-token"}).status_code == 401, path
            assert client.get(path, auth=(USER, "not-the-password")).status_code == 401, path
            assert client.get(path, headers=bearer).status_code in {200, 503}, path
            assert client.get(path, auth=(USER, PASSWORD)).status_code in {200, 503}, path

        scraped = client.get("/metrics", headers=bearer)
        names = {family.name for family in text_string_to_metric_families(scraped.text)}
        assert "metrics_endpoint_unauthorized_requests" in names

        bare = client.get("/health")
        assert bare.status_code == 200
        assert bare.json() == {"status": "ok"}
        detailed = client.get("/health", auth=(USER, PASSWORD)).json()
        assert set(detailed["checks"]) >= {"broker", "database"}

        post = f"{API}/update-cache-metrics"
        assert client.post(post).status_code == 401
        assert client.post(post, auth=(USER, PASSWORD)).status_code == 401
        assert client.post(post, headers=bearer).status_code == 200

    # The same port refuses plain HTTP, and a client that does not trust the CA refuses the server.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{endpoint.port}/health", timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=10)
    assert TOKEN not in endpoint.log()
    assert PASSWORD not in endpoint.log()


def test_a_public_address_is_served_with_credentials_and_refused_without(
    start_endpoint: EndpointFactory, tmp_path: Path
) -> None:
    """On 0.0.0.0: with a token it starts and asks for it; without credentials it exits with one line naming them."""
    guarded = start_endpoint({"METRICS_HOST": "0.0.0.0", "METRICS_AUTH_TOKEN": TOKEN})  # noqa: S104 - the point
    base = f"http://127.0.0.1:{guarded.port}"
    guarded.wait_ready(base)
    assert httpx.get(f"{base}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 200

    refused = start_endpoint({"METRICS_HOST": "0.0.0.0"})  # noqa: S104 - the point
    wait_until(lambda: refused.exited() is not None, timeout=60, what="the unguarded endpoint to exit")
    assert refused.exited() != 0
    lines = refused.log().strip().splitlines()
    assert len(lines) == 1
    for variable in ("METRICS_AUTH_TOKEN", "METRICS_AUTH_USERNAME", "METRICS_AUTH_PASSWORD", "METRICS_HOST"):
        assert variable in lines[0]


def test_the_worker_refuses_a_public_endpoint_without_credentials(tmp_path: Path) -> None:
    """A real `celery worker` with METRICS_HOST=0.0.0.0 and no credentials exits before its pool starts."""
    env = {
        "PATH": "/usr/bin:/bin",
        "METRICS_HOST": "0.0.0.0",  # noqa: S104 - the point
        "METRICS_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus_multiproc"),
        "BROKER_URL": "filesystem://",
        "BROKER_FOLDER": str(tmp_path / "broker"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    (tmp_path / "prometheus_multiproc").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    refusal = [line for line in result.stderr.splitlines() if "refusing to serve" in line]
    assert len(refusal) == 1
    assert "METRICS_AUTH_TOKEN" in refusal[0]
    assert "celery@" not in result.stdout + result.stderr  # no banner: it stopped before starting


def test_metrics_answer_openmetrics_when_asked_and_text_otherwise_behind_the_same_credentials(
    start_endpoint: EndpointFactory, tmp_path: Path
) -> None:
    """/metrics and its API copy: OpenMetrics with # EOF when Accept asks for it, else text 0.0.4; 401 either way.

    The directory holds the files of several processes with interleaved
    label sets of every type (simulated children, and real ones the
    endpoint merges), beside the endpoint's own definitions: the strict
    OpenMetrics parser reads it all, and both formats carry the same series
    under the same names (a counter is `x` with samples `x_total`).
    """
    endpoint = start_endpoint({"METRICS_AUTH_USERNAME": USER, "METRICS_AUTH_PASSWORD": PASSWORD})
    directory = tmp_path / "endpoint0" / "prometheus_multiproc"
    clock = Clock()
    for seed in range(3):
        run_child(directory, FIRST_FAKE_PID + seed, clock, seed)
    run_real_children(directory, 2)
    base = f"http://127.0.0.1:{endpoint.port}"
    endpoint.wait_ready(base)
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in ("/metrics", f"{API}/prometheus"):
            for accept in ("application/openmetrics-text", PROMETHEUS_ACCEPT, None):
                headers = {"Accept": accept} if accept else {}
                assert client.get(path, headers=headers).status_code == 401, (path, accept)
                assert client.get(path, headers=headers, auth=(USER, "wrong")).status_code == 401, (path, accept)

            series = {}
            for accept in ("application/openmetrics-text", PROMETHEUS_ACCEPT):
                answer = client.get(path, headers={"Accept": accept}, auth=(USER, PASSWORD))
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0;")
                assert answer.text.endswith("# EOF\n")
                series[accept] = _series(parse_openmetrics(answer.text))

            plain = client.get(path, auth=(USER, PASSWORD))  # no Accept: the text format 0.0.4
            assert plain.status_code == 200
            assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "# EOF" not in plain.text
            text_series = _series(text_string_to_metric_families(plain.text))

            assert series["application/openmetrics-text"] == series[PROMETHEUS_ACCEPT] == text_series
            assert ("panic_requests", "counter", "panic_requests_total") in text_series
            assert ("panic_response_time_seconds", "histogram", "panic_response_time_seconds_bucket") in text_series
            assert ("auth_check_seconds", "summary", "auth_check_seconds_count") in text_series
            assert ("metrics_multiproc_compactions", "counter", "metrics_multiproc_compactions_total") in text_series


def _series(families: Iterable[Metric]) -> set[tuple[str, str, str]]:
    """(family, type, sample name) of every sample: what a scraper files each sample under."""
    return {(family.name, family.type, sample.name) for family in families for sample in family.samples}
