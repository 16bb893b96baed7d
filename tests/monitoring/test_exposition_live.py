"""A real Prometheus scrapes the endpoint in both formats and files no parse error.

Prometheus 2.42 (Debian's) has no ``scrape_protocols``: it always asks for
OpenMetrics first. So it scrapes the endpoint through two small proxies in
this test: one passes its ``Accept`` on (OpenMetrics comes back), one drops
it, as a scraper that asks for no format (text 0.0.4 comes back). Each
records what was asked and what was answered, so the test knows both
formats were really parsed by Prometheus.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.monitoring.support import Prometheus
from tests.support.processes import LoggedProcess
from tests.support.services import wait_until
from tests.support.worker import standalone_endpoint
from tests.unit.multiproc_helpers import FIRST_FAKE_PID, Clock, run_child, run_real_children

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPENMETRICS = "application/openmetrics-text; version=1.0.0;"
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


class RecordingProxy:
    """Forwards every GET to `upstream`, passing the Accept header on or not; records (Accept, Content-Type)."""

    def __init__(self, upstream: str, *, pass_accept: bool) -> None:
        self.seen: list[tuple[str | None, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                accept = self.headers.get("Accept")
                headers = {"Accept": accept} if pass_accept and accept else {}
                answer = httpx.get(upstream, headers=headers, timeout=10)
                proxy.seen.append((accept, answer.headers["content-type"]))
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers["content-type"])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @contextmanager
    def running(self) -> Iterator[RecordingProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def _worker_targets(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    active = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: t for t in active if t["labels"]["job"] != "prometheus"}


def test_prometheus_scrapes_openmetrics_and_text_without_a_parse_error(
    processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """Interleaved series of every type, live and merged: both targets up, lastError empty, every series stored."""
    with standalone_endpoint(tmp_path) as (url, directory):
        clock = Clock()
        for seed in range(4):
            run_child(directory, FIRST_FAKE_PID + seed, clock, seed)
        run_real_children(directory, 3)  # merged into the archive by the endpoint's keeper
        wait_until((directory / "counter_archive.partials").exists, timeout=30, what="the real children merged")
        as_asked = RecordingProxy(url, pass_accept=True)
        no_accept = RecordingProxy(url, pass_accept=False)
        with as_asked.running(), no_accept.running():
            prometheus = Prometheus(tmp_path / "prometheus", targets=[as_asked.target, no_accept.target], rule_files=())
            processes.append(prometheus)
            prometheus.start()

            def scraped_twice_each() -> bool:
                targets = _worker_targets(prometheus)
                return (
                    len(as_asked.seen) >= 2
                    and len(no_accept.seen) >= 2
                    and all(t["health"] != "unknown" for t in targets.values())
                )

            wait_until(scraped_twice_each, timeout=60, what="prometheus scraping both proxies")
            targets = _worker_targets(prometheus)
            assert set(targets) == {as_asked.target, no_accept.target}
            for target in targets.values():
                assert (target["health"], target["lastError"]) == ("up", ""), target

            assert all(accept and accept.startswith("application/openmetrics-text") for accept, _ in as_asked.seen)
            assert all(content_type.startswith(OPENMETRICS) for _, content_type in as_asked.seen)
            assert all(content_type == TEXT_0_0_4 for _, content_type in no_accept.seen)

            # Every series of both formats reached the database, under the same names.
            for name in (
                "panic_requests_total",
                "panic_response_time_seconds_bucket",
                "auth_check_seconds_count",
                "zone_gauge_all",
                "active_subscriptions",  # a mostrecent gauge, from the archive
                "metrics_multiproc_compactions_total",
            ):
                result = prometheus.query(f"count by (instance) ({name})").json()["data"]["result"]
                assert {r["metric"]["instance"] for r in result} == set(targets), name
