"""The client: a call validates and hands the event to memory; a background thread sends it.

A call never touches the network or the disk: it validates the event with the
catalogue and hands its JSON to the background sender's bounded queue (the
pattern of sentry-sdk's BackgroundWorker and posthog-python's consumer
thread). The parts, each in its own module:

- this module, the public recording API and what it was told (`stats()`);
- `sender`: the queue and the thread (submit, flush, close, is_alive);
- `batching`: which messages a cycle sends, a pure function;
- `delivery`: the publish-or-spool rule, and `spool`, where unsent messages wait;
- `http_summaries`: HTTP requests summed per route, status and interval;
- `process_counts`: cache and WebSocket counts summed in the process;
- `tally`: every outcome counted where it happens, with its reason;
- `process_hooks`: SIGTERM, fork and exit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from panic_metrics_client import process_hooks
from panic_metrics_client.delivery import Delivery
from panic_metrics_client.events import MAX_DURATION_SECONDS, Event, HttpMethod, HttpRequestEvent
from panic_metrics_client.http_summaries import HttpSummaries
from panic_metrics_client.metrics import metric_file_counts, metrics_for
from panic_metrics_client.parsing import InvalidEvent, parse_any_event, parse_event
from panic_metrics_client.process_counts import ProcessCounts
from panic_metrics_client.sender import BackgroundSender
from panic_metrics_client.settings import ClientSettings
from panic_metrics_client.spool import Spool
from panic_metrics_client.tally import Tally
from panic_metrics_client.transport import Publisher

_METHODS = frozenset(HttpMethod)


class Client:
    """Records events without ever blocking the caller; see the module docstring."""

    def __init__(self, settings: ClientSettings | None = None, *, registry: Any = None, metrics: bool = True) -> None:
        self.settings = settings or ClientSettings.from_env()
        # In `registry` (default: prometheus_client's global one) when prometheus_client is installed.
        client_metrics = metrics_for(registry, enabled=metrics)
        self._tally = Tally(client_metrics)
        self._spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes)
        self._publisher = Publisher(self.settings)
        self._delivery = Delivery(self.settings, self._spool, self._publisher, self._tally, client_metrics)
        self._counts = ProcessCounts()
        self._summaries = HttpSummaries()
        self._sigterm = process_hooks.SigtermChain(self.close)
        self._sender = BackgroundSender(
            self.settings,
            self._delivery,
            self._tally,
            client_metrics,
            counts=self._counts,
            summaries=self._summaries,
            on_start=self._sigterm.install,
        )
        process_hooks.track(self)

    # -- the calls app code makes -------------------------------------------------

    def record(self, event: Event) -> uuid.UUID:
        """Record a typed event (already validated by its model); return its event_id.

        An `HttpRequestEvent` is added to its route's summary (see `record_http_request`):
        its event_id is not stored.
        """
        self._accept(event)
        return event.event_id

    def record_fields(self, kind: str, fields: Mapping[str, Any]) -> uuid.UUID | None:
        """Validate `fields` as an event of `kind` and record it; None when refused (production mode).

        An `http_request` is added to its route's summary (see `record_http_request`).
        """
        try:
            event = parse_event(kind, dict(fields))
        except InvalidEvent as exc:
            self._refused(exc)
            return None
        self._accept(event)
        return event.event_id

    def record_many(self, events: Iterable[Event | Mapping[str, Any]]) -> list[uuid.UUID | None]:
        """Record many events (typed, or dicts naming their `kind`); all are validated before any is queued."""
        valid: list[Event | None] = []
        for item in events:
            if isinstance(item, Event):
                valid.append(item)
                continue
            try:
                valid.append(parse_any_event(dict(item)))
            except InvalidEvent as exc:
                self._refused(exc)
                valid.append(None)
        for event in valid:
            if event is not None:
                self._accept(event)
        return [event.event_id if event is not None else None for event in valid]

    def record_http_request(self, *, method: str, endpoint: str, status: int, duration: float) -> None:
        """One HTTP request served, by route template: summed in the process, never sent alone.

        The hot path of a web app (the middleware calls it per request): a table
        update, no validation. Requests go out as one `http_summary` per (method,
        route, status) every `summary_interval_seconds`, at `flush()` and at
        `close()`. An unknown method counts as GET; the duration is clamped to
        [0, a day]. A raw path or a bad template is refused when the summary is
        built: its requests are counted as invalid and the reason logged once.
        """
        method = method.upper()
        seconds = min(float(duration), MAX_DURATION_SECONDS) if duration >= 0.0 else 0.0  # NaN too
        self._summaries.add(method if method in _METHODS else "GET", endpoint, status, seconds)
        self._sender.requests_summed()

    def server_stopped(self) -> None:
        """The ASGI server ended its lifespan, after its last request (the middleware calls this).

        A graceful shutdown answers the requests in flight after SIGTERM closed
        the client, and a server that re-raises the signal then dies without
        exit hooks: what those requests summed is spooled here (or sent, if the
        client is still open), so even the last interval is kept.
        """
        self._sender.server_stopped(self.settings.flush_timeout_ms / 1000)

    def record_cache(self, *, hit: bool, count: int = 1) -> None:
        """Count cache hits or misses in this process; they go out as one gauge report per interval."""
        self._counts.cache(hit=hit, count=count)
        self._sender.start()

    def websocket_opened(self) -> None:
        """One more open WebSocket connection in this process (reported per interval)."""
        self._counts.websockets(+1)
        self._sender.start()

    def websocket_closed(self) -> None:
        """One WebSocket connection of this process closed."""
        self._counts.websockets(-1)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every recorded event is published or spooled; False if `timeout` ran out first,
        or if events were lost meanwhile (nowhere left to keep them)."""
        return self._sender.flush(self.settings.flush_timeout_ms / 1000 if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send or spool everything in memory within `timeout`, then stop the sender. Safe to call twice."""
        self._sender.close(self.settings.flush_timeout_ms / 1000 if timeout is None else timeout)

    def start(self) -> None:
        """Start the sender now (it also starts on the first event): it resends what earlier processes spooled."""
        self._sender.start()

    @property
    def counts(self) -> dict[str, int]:
        """Events sent, spooled, refused and dropped by reason, since the client was made."""
        return self._tally.snapshot()

    def stats(self) -> dict[str, int]:
        """Events sent, spooled, refused and dropped, and what waits in memory and in the spool.

        `http_requests_pending`: requests summed in the process, not yet taken into a summary.
        """
        return {
            **self._tally.snapshot(),
            "dropped_spool_full": self._spool.dropped_events,
            "queued": self._sender.queued_events(),
            "http_requests_pending": self._summaries.pending(),
            "spool_events": self._spool.events,
            **metric_file_counts(),
        }

    def before_fork(self) -> None:
        """Before this process forks: no spool call in progress (the child would inherit SQLite's locks)."""
        self._spool.hold_for_fork()

    def after_fork_in_parent(self) -> None:
        """After the fork, in the parent: the sender may use its spool again."""
        self._spool.release_after_fork()

    def after_fork_in_child(self) -> None:
        """In a forked child: its own queue, thread, spool file and broker connection; the parent's stay its own."""
        self._spool.forget_after_fork()
        self._publisher.forget_after_fork()
        self._tally.after_fork()
        self._delivery.after_fork()
        self._counts.after_fork()
        self._summaries.after_fork()
        self._sender.after_fork()

    def _accept(self, event: Event) -> None:
        if isinstance(event, HttpRequestEvent):
            # Already validated: into its route's summary, like the middleware's requests.
            self._summaries.add(event.method.value, event.endpoint, event.status, float(event.duration))
            self._sender.requests_summed()
        else:
            self._sender.submit(event)

    def _refused(self, exc: InvalidEvent) -> None:
        if self.settings.mode == "development":
            self._tally.add("invalid", 1)
            raise exc
        self._tally.refused(exc.kind, exc.reason, exc.detail)
