"""The background sender: one thread per process that turns queued events into messages and delivers them.

Its verbs are few (submit, flush, close, is_alive), as in sentry-sdk's
BackgroundWorker. A submit never waits: it appends the event's JSON to a
bounded deque and wakes the thread for a low-rate kind. The thread lingers a
moment so events gather, plans the cycle's messages (batching), and hands
them to the publish-or-spool rule (delivery). Once an interval, and at every
flush and at close, it also takes the HTTP requests summed in the process
(http_summaries) and the cache and WebSocket counts (process_counts) and sends
them as events like any other. It starts on first use, again in a forked
child, and is drained within a bound at close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from panic_metrics_client.batching import HIGH_RATE_KINDS, Pending, plan
from panic_metrics_client.delivery import Delivery
from panic_metrics_client.events import Event
from panic_metrics_client.http_summaries import HttpSummaries
from panic_metrics_client.messages import Message, batch_message, event_json, event_message
from panic_metrics_client.metrics import ClientMetrics
from panic_metrics_client.process_counts import ProcessCounts
from panic_metrics_client.settings import ClientSettings
from panic_metrics_client.tally import Tally

logger = logging.getLogger("panic_metrics_client")

LINGER_SECONDS = 0.02


class BackgroundSender:
    """The queue and the thread that empties it; see the module docstring."""

    def __init__(
        self,
        settings: ClientSettings,
        delivery: Delivery,
        tally: Tally,
        metrics: ClientMetrics | None,
        *,
        counts: ProcessCounts,
        summaries: HttpSummaries,
        on_start: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._delivery = delivery
        self._spool = delivery.spool
        self._counts = counts
        self._summaries = summaries
        self._tally = tally
        self._metrics = metrics
        self._on_start = on_start
        self.after_fork()

    def after_fork(self) -> None:
        """Everything that belongs to one process: after a fork the child starts from here."""
        # Events as JSON text: a str is no work for the garbage collector (a queued model would
        # be several objects it walks, and a burst of them triggers full collections), and the
        # sender joins texts into messages without encoding them again.
        self._queue: deque[str] = deque()
        self._wake = threading.Event()
        self._linger = threading.Event()  # never set: an interruptible pause that releases the GIL
        self._start_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._idle = threading.Condition(self._state_lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._closed = False
        self._flush_requests = 0
        self._flushes_done = 0
        self._spool_opened = False
        self._pending = Pending()
        self._in_flight: list[Message] = []
        self._last_report = time.monotonic()
        self._last_summary = time.monotonic()

    # -- the verbs ------------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Queue `event` for the thread; never waits. Full: dropped and counted. Closed: spooled at once."""
        if self._thread is None:
            self.start()
        text = event_json(event)
        if self._closed:
            # After close (a request finishing during a graceful shutdown): straight to this
            # process's own spool file, counted like any spooled event; never raises into the request.
            self._delivery.keep([event_message(text)])
            self._delivery.lose_held()  # no sender is left to retry what the disk refused
            return
        if len(self._queue) >= self.settings.queue_size:
            self._tally.add("dropped_queue_full", 1)
            self._tally.log_once(("queue_full", ""), "metrics queue full: event dropped (the sender cannot keep up)")
            return
        self._queue.append(text)
        if event.kind not in HIGH_RATE_KINDS and not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Start the thread if it is not running (the only wait: another thread starting it this instant)."""
        if self._thread is not None:
            return
        if not self._start_lock.acquire(timeout=self.settings.timeout_ms / 1000):
            return
        try:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name="panic-metrics-sender", daemon=True)
                thread.start()
                self._thread = thread
                self._on_start()
        finally:
            self._start_lock.release()

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event is published or spooled; False on timeout or if any were lost meanwhile."""
        self.start()
        if self._thread is None:
            return not self._queue
        dropped_before = self._tally["dropped_spool_error"]
        with self._idle:
            # Wait for a whole cycle begun after this request (it also sends the in-process counts).
            self._flush_requests += 1
            wanted = self._flush_requests
            self._wake.set()
            idle = self._idle.wait_for(lambda: self._flushes_done >= wanted and self._is_idle(), timeout)
        # Events lost while it waited (nowhere left to keep them) make it a failed flush too.
        return idle and self._tally["dropped_spool_error"] == dropped_before

    def close(self, timeout: float) -> None:
        """Send or spool everything in memory within `timeout`, then stop the thread. Safe to call twice:
        a second call (the exit hook after SIGTERM's) spools the requests summed since the first."""
        with self._start_lock:
            if self._closed:
                self._spool_late_requests()
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
        else:
            self._spool_late_requests()  # never started (it starts on the first request): spool what is summed
        self._spool.close()

    def requests_summed(self) -> None:
        """Requests were added to the table: the thread takes it once an interval; after close, see below."""
        if self._closed:
            # Requests finishing during a graceful shutdown, after the last take: still one summary per key
            # and interval, spooled by the request thread once an interval and by the exit hook's close().
            if time.monotonic() - self._last_summary >= self.settings.summary_interval_seconds:
                self._spool_late_requests()
        elif self._thread is None:
            self.start()

    def server_stopped(self, timeout: float) -> None:
        """The web server answered its last request: send what was summed (flush), or spool it if closed."""
        if self._closed:
            self._spool_late_requests()
        else:
            self.flush(timeout)

    def _spool_late_requests(self) -> None:
        with self._state_lock:
            self._last_summary = time.monotonic()
            texts = self._take_summaries()
        if texts:
            self._delivery.keep([batch_message(texts)])
            self._delivery.lose_held()

    def queued_events(self) -> int:
        """Events in memory: queued, waiting for their batch, or refused by the spool."""
        return len(self._queue) + len(self._pending.texts) + self._delivery.held_events

    # -- the thread -----------------------------------------------------------------------

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
                self._delivery.adopt_now_and_then()
                self._cycle(force=stopping or flushing > self._flushes_done)
            except Exception:
                logger.exception("metrics sender cycle failed; retrying")
                self._delivery.back_off()
            with self._idle:
                self._flushes_done = flushing
                self._idle.notify_all()
            if stopping and not self._queue:
                self._delivery.drain(self._stop_deadline)
                self._spool.close()
                self._delivery.lose_held()
                return

    def _is_idle(self) -> bool:
        busy = self._queue or self._pending.texts or self._in_flight or self._delivery.unspooled
        if busy or not self._spool_opened:
            return False
        return not self._spool.events or self._delivery.broker_down or self._stopping

    def _seconds_to_next_cycle(self) -> float:
        now = time.monotonic()
        if self._spool.events and self._delivery.retry_due(now):
            return 0.0
        interval = self.settings.batch_interval_ms / 1000
        waits = [interval]
        if self._pending.since is not None:
            waits.append(self._pending.since + interval - now)
        if self._spool.events:
            waits.append(self._delivery.broker_down_until - now)
        if self._summaries.pending():
            # Only with requests in the table: an idle process has no summary to wake for. A request
            # never wakes the thread itself (the hot path); the next cycle, at most a batch interval on, sees it.
            waits.append(self._last_summary + self.settings.summary_interval_seconds - now)
        return max(0.0, min(waits))

    def _cycle(self, *, force: bool) -> None:
        now = time.monotonic()
        interval = self.settings.batch_interval_ms / 1000
        with self._state_lock:
            queued = [self._queue.popleft() for _ in range(len(self._queue))]
            if force or now - self._last_report >= interval:
                # Cache hits and misses are summed in the process: one report per interval, exact deltas.
                self._last_report = now
                report = self._counts.report()
                if report is not None:
                    queued.append(event_json(report))
            if force or now - self._last_summary >= self.settings.summary_interval_seconds:
                self._last_summary = now
                queued += self._take_summaries()
            messages = plan(
                queued, self._pending, now=now, force=force, size=self.settings.batch_size, interval=interval
            )
            self._in_flight = messages
        try:
            self._delivery.deliver(messages)
        finally:
            with self._state_lock:
                self._in_flight = []
            if self._metrics is not None:
                self._metrics.depths(self.queued_events(), self._spool.events)

    def _take_summaries(self) -> list[str]:
        """The requests summed since the last take, one summary each key (as JSON); refused keys counted."""
        summaries, refused = self._summaries.take()
        for invalid, requests in refused:
            # Never raised, even in development: no caller is left to see it (the requests are served).
            self._tally.refused(invalid.kind, invalid.reason, invalid.detail, requests)
        return [event_json(summary) for summary in summaries]

    def _spool_what_is_in_memory(self) -> None:
        with self._state_lock:
            events = list(self._queue) + self._pending.texts + self._take_summaries()
            self._queue.clear()
            self._pending = Pending()
            messages = [*self._in_flight, *([batch_message(events)] if events else [])]
        # An in-flight message may still reach the broker too: the worker dedupes by event_id.
        self._delivery.keep(messages)
        self._delivery.lose_held()
