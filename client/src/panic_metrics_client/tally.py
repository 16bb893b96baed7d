"""What became of every event a client was given, counted where it happens, with its reason."""

from __future__ import annotations

import logging
import threading
from typing import Any

from panic_metrics_client.metrics import ClientMetrics

logger = logging.getLogger("panic_metrics_client")

# Each count, and the `outcome` label it moves on panic_metrics_client_events_total.
OUTCOMES = {
    "sent": "sent",
    "spooled": "spooled",
    "invalid": "invalid",
    "dropped_queue_full": "dropped",
    "dropped_spool_error": "dropped",
}


class Tally:
    """Events sent, spooled, refused and dropped (by reason), in `stats()` and the client's own metrics."""

    def __init__(self, metrics: ClientMetrics | None) -> None:
        self.metrics = metrics
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._logged: set[tuple[str, str]] = set()
        self.after_fork()

    def after_fork(self) -> None:
        """A new lock in a forked child: a thread of the parent may have held the old one at the fork."""
        self._lock = threading.Lock()

    def add(self, name: str, events: int) -> None:
        """`events` more with this outcome (a key of OUTCOMES)."""
        with self._lock:
            self._counts[name] += events
        if self.metrics is not None:
            self.metrics.count(OUTCOMES[name], events)

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        """Every count, as of now."""
        with self._lock:
            return dict(self._counts)

    def refused(self, kind: str, reason: str, detail: str, events: int = 1) -> None:
        """`events` refused by the catalogue for `reason`: counted, and logged once per kind and reason."""
        self.add("invalid", events)
        self.log_once((kind, reason), "metric event refused", kind=kind, reason=reason, detail=detail)

    def log_once(self, key: tuple[str, str], message: str, **extra: Any) -> None:
        """A warning the first time `key` is seen in this client: a flood of the same refusal logs once."""
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(message, extra=extra)
