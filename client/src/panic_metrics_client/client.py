"""The client: a call validates and hands the event to memory; a background thread sends it.

A call never touches the network or the disk: it validates the event with the
catalogue and appends it to a bounded in-memory queue (the pattern of
sentry-sdk's BackgroundWorker and posthog-python's consumer thread). One
sender thread per process turns events into task messages and publishes
them; what it cannot publish goes to the spool, and while the spool holds
anything new messages queue up behind it, so events reach the broker in the
order they were recorded. The thread is started on first use, again in a
forked child (a pre-forking web server forks after import), and drained
within a bound at exit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from panic_metrics_client.events import Event, GaugeReportEvent
from panic_metrics_client.messages import Message, batch_message, event_json, event_message, kind_of
from panic_metrics_client.metrics import metric_file_counts, metrics_for
from panic_metrics_client.parsing import InvalidEvent, parse_any_event, parse_event
from panic_metrics_client.settings import ClientSettings
from panic_metrics_client.spool import Spool
from panic_metrics_client.transport import Publisher

logger = logging.getLogger("panic_metrics_client")

# One message per web request would be one broker message and one stored row per
# request: these travel together in `record_events` messages (one INSERT each).
HIGH_RATE_KINDS = frozenset({"http_request", "gauge_report"})
# Spooled messages resent per cycle, so new events keep moving into the spool meanwhile; and
# no more bytes than this read for one attempt (a retry against a broker still away reads little).
DRAIN_CHUNK = 200
DRAIN_BYTES = 1024 * 1024
# Low-rate kinds go out one message each under their own task names, unless more than
# this many arrived since the sender's last cycle: then they travel batched too.
BURST_OVER = 20
ADOPT_INTERVAL_SECONDS = 30.0
LINGER_SECONDS = 0.02

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


class Client:
    """Records events without ever blocking the caller; see the module docstring."""

    def __init__(self, settings: ClientSettings | None = None, *, registry: Any = None, metrics: bool = True) -> None:
        self.settings = settings or ClientSettings.from_env()
        # In `registry` (default: prometheus_client's global one) when prometheus_client is installed.
        self._metrics = metrics_for(registry, enabled=metrics)
        self._spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes)
        self._publisher = Publisher(self.settings)
        self._previous_sigterm: Any = None
        self.counts = {"sent": 0, "spooled": 0, "invalid": 0, "dropped_queue_full": 0, "dropped_spool_error": 0}
        self._refusals_logged: set[tuple[str, str]] = set()
        self._fresh_process()
        _CLIENTS.add(self)

    def _fresh_process(self) -> None:
        # Everything that belongs to one process: after a fork the child starts from here.
        # Events as JSON text: a str is no work for the garbage collector (a queued model would
        # be several objects it walks, and a burst of them triggers full collections), and the
        # sender joins texts into messages without encoding them again.
        self._queue: deque[str] = deque()
        self._wake = threading.Event()
        self._linger = threading.Event()  # never set: an interruptible pause that releases the GIL
        self._start_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._idle = threading.Condition(self._state_lock)
        self._counts_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._closed = False
        self._flush_requests = 0
        self._flushes_done = 0
        self._spool_opened = False
        self._pending: list[str] = []
        self._pending_since: float | None = None
        self._in_flight: list[Message] = []
        # Messages the spool could not take (a full or failing disk): kept here, in order, up to
        # the memory queue's bound in events, and written or sent by a later cycle.
        self._unspooled: list[Message] = []
        self._broker_down_until = 0.0
        self._broker_down = False
        self._cache = [0, 0]  # hits, misses since the last gauge report
        self._websockets = 0
        self._websockets_reported = 0
        self._last_report = time.monotonic()
        self._last_adoption = time.monotonic()

    # -- the calls app code makes -------------------------------------------------

    def record(self, event: Event) -> uuid.UUID:
        """Record a typed event (already validated by its model); return its event_id."""
        self._enqueue(event)
        return event.event_id

    def record_fields(self, kind: str, fields: Mapping[str, Any]) -> uuid.UUID | None:
        """Validate `fields` as an event of `kind` and record it; None when refused (production mode)."""
        try:
            event = parse_event(kind, dict(fields))
        except InvalidEvent as exc:
            self._refused(exc)
            return None
        self._enqueue(event)
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
                self._enqueue(event)
        return [event.event_id if event is not None else None for event in valid]

    def record_cache(self, *, hit: bool, count: int = 1) -> None:
        """Count cache hits or misses in this process; they go out as one gauge report per interval."""
        with self._counts_lock:
            self._cache[0 if hit else 1] += count
        self._ensure_started()

    def websocket_opened(self) -> None:
        """One more open WebSocket connection in this process (reported per interval)."""
        with self._counts_lock:
            self._websockets += 1
        self._ensure_started()

    def websocket_closed(self) -> None:
        """One WebSocket connection of this process closed."""
        with self._counts_lock:
            self._websockets -= 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every recorded event is published or spooled; False if `timeout` ran out first."""
        timeout = self.settings.flush_timeout_ms / 1000 if timeout is None else timeout
        self.start()
        if self._thread is None:
            return not self._queue
        dropped_before = self.counts["dropped_spool_error"]
        with self._idle:
            # Wait for a whole cycle begun after this request (it also sends the in-process counts).
            self._flush_requests += 1
            wanted = self._flush_requests
            self._wake.set()
            idle = self._idle.wait_for(lambda: self._flushes_done >= wanted and self._is_idle(), timeout)
        # Events lost while it waited (nowhere left to keep them) make it a failed flush too.
        return idle and self.counts["dropped_spool_error"] == dropped_before

    def close(self, timeout: float | None = None) -> None:
        """Send or spool everything in memory within `timeout`, then stop the sender. Safe to call twice."""
        timeout = self.settings.flush_timeout_ms / 1000 if timeout is None else timeout
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is not None:
            self._stop_deadline = time.monotonic() + timeout
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                # The broker did not answer in time: what is still in memory goes to the spool.
                self._spool_what_is_in_memory()
                return
        self._spool.close()

    def stats(self) -> dict[str, int]:
        """Events sent, spooled, refused and dropped, and what waits in memory and in the spool."""
        return {
            **self.counts,
            "dropped_spool_full": self._spool.dropped_events,
            "queued": len(self._queue) + len(self._pending) + sum(m.events for m in self._unspooled),
            "spool_events": self._spool.events,
            **metric_file_counts(),
        }

    # -- the call path ------------------------------------------------------------------

    def _enqueue(self, event: Event) -> None:
        if self._thread is None:
            self._ensure_started()
        text = event_json(event)
        if self._closed:
            # After close (a request finishing during a graceful shutdown): straight to this
            # process's own spool file, counted like any spooled event; never raises into the request.
            self._to_spool([event_message(text)])
            self._lose_unspooled()  # no sender is left to retry what the disk refused
            return
        if len(self._queue) >= self.settings.queue_size:
            self._count("dropped_queue_full", 1, "dropped")
            self._log_once(("queue_full", ""), "metrics queue full: event dropped (the sender cannot keep up)")
            return
        self._queue.append(text)
        if event.kind not in HIGH_RATE_KINDS and not self._wake.is_set():
            self._wake.set()

    def _refused(self, exc: InvalidEvent) -> None:
        self._count("invalid", 1, "invalid")
        if self.settings.mode == "development":
            raise exc
        self._log_once(
            (exc.kind, exc.reason),
            "metric event refused",
            kind=exc.kind,
            reason=exc.reason,
            detail=exc.detail,
        )

    def _count(self, name: str, n: int, outcome: str) -> None:
        with self._counts_lock:
            self.counts[name] += n
        if self._metrics is not None:
            self._metrics.count(outcome, n)

    def _log_once(self, key: tuple[str, str], message: str, **extra: Any) -> None:
        if key not in self._refusals_logged:
            self._refusals_logged.add(key)
            logger.warning(message, extra=extra)

    def start(self) -> None:
        """Start the sender now (it also starts on the first event): it resends what earlier processes spooled."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        # The only wait a call can meet: another thread starting the sender at this instant.
        if not self._start_lock.acquire(timeout=self.settings.timeout_ms / 1000):
            return
        try:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name="panic-metrics-sender", daemon=True)
                thread.start()
                self._thread = thread
                self._install_sigterm_handler()
        finally:
            self._start_lock.release()

    def _install_sigterm_handler(self) -> None:
        # Only the main thread may set handlers; a web server that sets its own later
        # exits normally on SIGTERM, and atexit flushes instead.
        if threading.current_thread() is not threading.main_thread() or self._previous_sigterm is not None:
            return
        try:
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main interpreter
            self._previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    # -- the sender thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._spool.open()  # adopts the spools of processes that died with events in them
        except Exception:
            logger.exception("metrics spool unavailable: events are kept in memory only")
        self._spool_opened = True
        while True:
            self._wake.wait(self._seconds_to_next_cycle())
            if not self._stopping and self._flush_requests == self._flushes_done:
                # Let events gather: the sender holds the GIL while it serialises, and working
                # in short bursts rather than once per event keeps it off the callers' way.
                self._linger.wait(LINGER_SECONDS)
            self._wake.clear()
            stopping = self._stopping
            with self._idle:
                flushing = self._flush_requests
            try:
                self._adopt_now_and_then()
                self._cycle(force=stopping or flushing > self._flushes_done)
            except Exception:
                logger.exception("metrics sender cycle failed; retrying")
                self._broker_down_until = time.monotonic() + self.settings.retry_interval_ms / 1000
            with self._idle:
                self._flushes_done = flushing
                self._idle.notify_all()
            if stopping and not self._queue:
                self._drain_before_stop()
                self._spool.close()
                self._lose_unspooled()
                return

    def _drain_before_stop(self) -> None:
        # A one-shot process (a script, a cron job) lives only this long: what it adopted from
        # earlier processes goes out now too, within the bound close() waits, while the broker answers.
        try:
            while self._spool.events and self._broker_down_until <= time.monotonic() < self._stop_deadline:
                self._resend_spooled()
        except Exception:
            logger.exception("metrics spool could not be resent at exit; it waits for the next process")

    def _adopt_now_and_then(self) -> None:
        # A sibling process (another web worker) that exited with a non-empty spool.
        now = time.monotonic()
        if now - self._last_adoption >= ADOPT_INTERVAL_SECONDS and not self._broker_down:
            self._last_adoption = now
            self._spool.adopt_orphans()

    def _is_idle(self) -> bool:
        busy = self._queue or self._pending or self._in_flight or self._unspooled or not self._spool_opened
        return not busy and (not self._spool.events or self._broker_down or self._stopping)

    def _seconds_to_next_cycle(self) -> float:
        now = time.monotonic()
        if self._spool.events and now >= self._broker_down_until:
            return 0.0
        waits = [self.settings.batch_interval_ms / 1000]
        if self._pending_since is not None:
            waits.append(self._pending_since + self.settings.batch_interval_ms / 1000 - now)
        if self._spool.events:
            waits.append(self._broker_down_until - now)
        return max(0.0, min(waits))

    def _cycle(self, *, force: bool) -> None:
        now = time.monotonic()
        with self._state_lock:
            messages: list[Message] = []
            single: list[str] = []
            while self._queue:
                text = self._queue.popleft()
                (self._pending if kind_of(text) in HIGH_RATE_KINDS else single).append(text)
            size = self.settings.batch_size
            if len(single) > BURST_OVER:
                # A burst: one message each would keep the sender busy (and holding the GIL the
                # callers need) for a long while, and cost a broker message each; sent now, batched.
                messages += [batch_message(single[i : i + size]) for i in range(0, len(single), size)]
            else:
                messages += [event_message(text) for text in single]
            if self._pending and self._pending_since is None:
                self._pending_since = now
            interval = self.settings.batch_interval_ms / 1000
            if force or now - self._last_report >= interval:
                self._last_report = now
                report = self._gauge_report()
                if report is not None:
                    self._pending.append(event_json(report))
                    self._pending_since = self._pending_since or now
            due = force or (self._pending_since is not None and now - self._pending_since >= interval)
            while len(self._pending) >= size or (self._pending and due):
                messages.append(batch_message(self._pending[:size]))
                del self._pending[:size]
            if not self._pending:
                self._pending_since = None
            self._in_flight = messages
        try:
            self._deliver(messages)
        finally:
            with self._state_lock:
                self._in_flight = []
            if self._metrics is not None:
                in_memory = len(self._queue) + len(self._pending) + sum(m.events for m in self._unspooled)
                self._metrics.depths(in_memory, self._spool.events)

    def _gauge_report(self) -> GaugeReportEvent | None:
        # Cache hits and misses are summed in the process: one report per interval, exact deltas.
        with self._counts_lock:
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

    def _deliver(self, messages: list[Message]) -> None:
        # What the spool could not take earlier goes first, to keep the order of recording.
        messages, self._unspooled = self._unspooled + messages, []
        now = time.monotonic()
        if self._spool.events or now < self._broker_down_until:
            # Behind what is already spooled, so resending keeps the order of recording.
            self._to_spool(messages)
            if now >= self._broker_down_until:
                self._resend_spooled()
            return
        for index, message in enumerate(messages):
            try:
                self._publish(message)
            except Exception as exc:  # noqa: BLE001 - any failure means: keep it for later
                self._broker_unavailable(exc)
                self._to_spool(messages[index:])
                return

    def _resend_spooled(self) -> None:
        waiting = self._spool.oldest(DRAIN_CHUNK, max_bytes=DRAIN_BYTES)
        sent = []
        try:
            for spooled in waiting:
                self._publish(spooled.message)
                sent.append(spooled)
        except Exception as exc:  # noqa: BLE001 - the broker went away again; the rest stays spooled
            self._broker_unavailable(exc)
        finally:
            self._spool.remove(sent)

    def _publish(self, message: Message) -> None:
        seconds = self._publisher.publish(message)
        if self._broker_down:
            self._broker_down = False
            logger.info("metrics broker reachable again; resending the spool", extra={"spooled": self._spool.events})
        self._count("sent", message.events, "sent")
        if self._metrics is not None:
            self._metrics.sent(seconds)

    def _broker_unavailable(self, exc: BaseException) -> None:
        self._broker_down_until = time.monotonic() + self.settings.retry_interval_ms / 1000
        if not self._broker_down:
            self._broker_down = True
            logger.warning("metrics broker unavailable; spooling events: %r", exc, extra={"error": type(exc).__name__})

    def _to_spool(self, messages: list[Message]) -> None:
        waiting, self._unspooled = self._unspooled + messages, []
        if not waiting:
            return
        try:
            self._spool.append(waiting)
        except Exception as exc:  # noqa: BLE001 - a full or failing disk: keep them in memory and retry
            self._hold_in_memory(waiting, exc)
            return
        self._count("spooled", sum(m.events for m in waiting), "spooled")

    def _hold_in_memory(self, messages: list[Message], exc: BaseException) -> None:
        # Bounded like the memory queue (in events): past it the oldest go, each counted and logged.
        held = sum(m.events for m in messages)
        dropped = 0
        while messages and held > self.settings.queue_size:
            held -= messages[0].events
            dropped += messages.pop(0).events
        self._unspooled = messages
        self._log_once(
            ("spool_unwritable", type(exc).__name__),
            "metrics spool unwritable (a full disk?): events kept in memory and retried",
            error=repr(exc),
        )
        if dropped:
            logger.error("metrics spool unwritable and memory bound reached: events dropped", extra={"events": dropped})
            self._count("dropped_spool_error", dropped, "dropped")

    def _lose_unspooled(self) -> None:
        # The process ends with the disk still refusing them and the broker away: they die with it.
        lost = sum(m.events for m in self._unspooled)
        self._unspooled = []
        if lost:
            logger.error("metrics spool unwritable at exit: events lost", extra={"events": lost})
            self._count("dropped_spool_error", lost, "dropped")

    def _spool_what_is_in_memory(self) -> None:
        with self._state_lock:
            events = list(self._queue) + self._pending
            self._queue.clear()
            self._pending = []
            messages = [*self._in_flight, *([batch_message(events)] if events else [])]
        # An in-flight message may still reach the broker too: the worker dedupes by event_id.
        self._to_spool(messages)
        self._lose_unspooled()

    def _after_fork_in_child(self) -> None:
        self._spool.forget_after_fork()
        self._publisher.forget_after_fork()
        self._fresh_process()


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


def _close_all() -> None:
    for client in list(_CLIENTS):
        client.close()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)
