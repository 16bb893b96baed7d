"""Keeps the multiprocess directory small while the worker runs, and reports on it.

A daemon thread in the worker's main process (or in the standalone endpoint)
merges the files of dead pool children every few seconds; `scrape` exports
what the directory costs beside the metrics, so an alert can fire before a
scrape times out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app import forksafe
from app.metrics import pending
from app.metrics.multiproc import CompactionReport, collect_registry, compact, directory_stats, writable

log = logging.getLogger(__name__)


class Housekeeper:
    """Compacts one multiprocess directory on an interval and counts what it did."""

    def __init__(self, path: Path, interval_seconds: float, *, resolve: pending.Resolver | None = None) -> None:
        self.path = path
        self.interval_seconds = interval_seconds
        # Whether a dead child's attempt committed: the store answers (app.store.resolve_attempt),
        # handed in by whoever builds the keeper, as the metrics layer imports no service.
        self.resolve = resolve
        self.compactions = 0
        self.merged_processes = 0
        self.failures = 0
        self.last_scrape_seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="multiproc-housekeeper", daemon=True)
        self._warned_unproven: set[int] = set()

    def compact_now(self) -> CompactionReport | None:
        """Merge dead processes' files now; never raises (a failure is logged and counted)."""
        with self._lock:
            try:
                report = compact(self.path, resolve=self.resolve)
            except Exception:
                self.failures += 1
                log.exception("multiprocess compaction failed", extra={"path": str(self.path)})
                return None
            if report.merged_pids:
                self.compactions += 1
                self.merged_processes += len(report.merged_pids)
            if new := set(report.unproven_pids) - self._warned_unproven:
                # Files of a writer with no lease (an older version, a stray
                # process): nobody can prove it dead, so they are never merged.
                self._warned_unproven |= new
                log.warning(
                    "metric files without a lease are never merged",
                    extra={"path": str(self.path), "pids": sorted(new)},
                )
            if report.unresolved_pids:
                log.warning(
                    "dead processes wait for their pending counts to be settled (database unreachable?)",
                    extra={"path": str(self.path), "pids": list(report.unresolved_pids)},
                )
            return report

    def start(self) -> None:
        """Start compacting in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            with forksafe.unit():  # it imports, locks and queries: never forked half-way (app.forksafe)
                self.compact_now()


class HousekeepingCollector(Collector):
    """The directory's own metrics: files, bytes, merges, last scrape time, writability."""

    def __init__(self, housekeeper: Housekeeper) -> None:
        self._housekeeper = housekeeper

    def collect(self) -> Iterable[Metric]:
        keeper = self._housekeeper
        stats = directory_stats(keeper.path)
        yield GaugeMetricFamily(
            "metrics_multiproc_files", "Metric files a scrape reads in the multiprocess directory.", value=stats.files
        )
        yield GaugeMetricFamily(
            "metrics_multiproc_bytes", "Bytes of the metric files a scrape reads.", value=stats.bytes
        )
        yield GaugeMetricFamily(
            "metrics_multiproc_writable",
            "1 when the multiprocess directory accepts new files.",
            value=float(writable(keeper.path)),
        )
        yield CounterMetricFamily(
            "metrics_multiproc_compactions",
            "Compactions that merged at least one dead process.",
            value=keeper.compactions,
        )
        yield CounterMetricFamily(
            "metrics_multiproc_merged_processes",
            "Dead processes whose metric files were merged into the archive.",
            value=keeper.merged_processes,
        )
        yield CounterMetricFamily(
            "metrics_multiproc_compaction_failures", "Compactions that failed (see the logs).", value=keeper.failures
        )
        yield GaugeMetricFamily(
            "metrics_scrape_duration_seconds",
            "How long the previous /metrics scrape took to collect.",
            value=keeper.last_scrape_seconds,
        )


def scrape(housekeeper: Housekeeper, accept: str | None = None) -> tuple[bytes, str]:
    """Every process's metrics and the directory's own, from a fresh registry: the body and its Content-Type.

    The format is the one a scraper's ``Accept`` header asks for, chosen as
    prometheus_client's own handler chooses it (``choose_encoder``):
    OpenMetrics 1.0.0 (ending in ``# EOF``) for ``application/openmetrics-text``,
    the text format 0.0.4 when no format is asked for.
    """
    started = time.perf_counter()
    encoder, content_type = choose_encoder(accept or "")
    registry = collect_registry(housekeeper.path)
    registry.register(HousekeepingCollector(housekeeper))
    body = encoder(registry)
    housekeeper.last_scrape_seconds = time.perf_counter() - started
    return body, content_type
