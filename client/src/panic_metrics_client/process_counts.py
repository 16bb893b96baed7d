"""Cache hits and misses and open WebSockets, summed in the process and reported once per interval."""

from __future__ import annotations

import threading

from panic_metrics_client.events import GaugeReportEvent


class ProcessCounts:
    """This process's counts since the last report: exact deltas for the cache, a level for WebSockets."""

    def __init__(self) -> None:
        self.after_fork()

    def after_fork(self) -> None:
        """From zero: a forked child reports only its own (the parent reports what it had)."""
        self._lock = threading.Lock()
        self._cache = [0, 0]  # hits, misses since the last report
        self._websockets = 0
        self._websockets_reported = 0

    def cache(self, *, hit: bool, count: int) -> None:
        """`count` more cache hits (or misses)."""
        with self._lock:
            self._cache[0 if hit else 1] += count

    def websockets(self, change: int) -> None:
        """A WebSocket opened (+1) or closed (-1)."""
        with self._lock:
            self._websockets += change

    def report(self) -> GaugeReportEvent | None:
        """What changed since the last report, as one event; None when nothing did."""
        with self._lock:
            hits, misses = self._cache
            websockets = self._websockets if self._websockets != self._websockets_reported else None
            if not (hits or misses) and websockets is None:
                return None
            self._cache = [0, 0]
            self._websockets_reported = self._websockets
        return GaugeReportEvent.model_validate(
            {
                "websocket_connections": max(0, websockets) if websockets is not None else None,
                "cache_hits": hits,
                "cache_misses": misses,
            }
        )
