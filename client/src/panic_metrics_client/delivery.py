"""The publish-or-spool rule: send while the broker answers, spool while it does not, resend in order.

While the spool holds anything, new messages go behind it, so events reach
the broker in the order they were recorded; it is resent oldest first, a
bounded chunk a cycle, once the retry interval has passed. What the spool
cannot take (a full or failing disk) waits in memory, bounded, and is tried
again every cycle. Each outcome is counted in the tally where it happens.
"""

from __future__ import annotations

import logging
import time

from panic_metrics_client.messages import Message
from panic_metrics_client.metrics import ClientMetrics
from panic_metrics_client.settings import ClientSettings
from panic_metrics_client.spool import Spool
from panic_metrics_client.tally import Tally
from panic_metrics_client.transport import Publisher

logger = logging.getLogger("panic_metrics_client")

# Spooled messages resent per cycle, so new events keep moving into the spool meanwhile; and
# no more bytes than this read for one attempt (a retry against a broker still away reads little).
DRAIN_CHUNK = 200
DRAIN_BYTES = 1024 * 1024
ADOPT_INTERVAL_SECONDS = 30.0


class Delivery:
    """Publishes messages, or keeps them (spool, else memory) until the broker answers again."""

    def __init__(
        self, settings: ClientSettings, spool: Spool, publisher: Publisher, tally: Tally, metrics: ClientMetrics | None
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._publisher = publisher
        self._tally = tally
        self._metrics = metrics
        self.after_fork()

    def after_fork(self) -> None:
        """State of one process: a forked child starts with the broker presumed up and nothing held."""
        self.broker_down = False
        self.broker_down_until = 0.0
        # Messages the spool could not take: kept here, in order, up to the memory queue's
        # bound in events, and written or sent by a later cycle.
        self.unspooled: list[Message] = []
        self._last_adoption = time.monotonic()

    @property
    def held_events(self) -> int:
        """Events waiting in memory because the spool refused them."""
        return sum(m.events for m in self.unspooled)

    def retry_due(self, now: float) -> bool:
        """Whether the broker may be tried again."""
        return now >= self.broker_down_until

    def deliver(self, messages: list[Message]) -> None:
        """Publish `messages` (after what waits), or keep them; resend a chunk of the spool when due."""
        # What the spool could not take earlier goes first, to keep the order of recording.
        messages, self.unspooled = self.unspooled + messages, []
        now = time.monotonic()
        if self.spool.events or not self.retry_due(now):
            # Behind what is already spooled, so resending keeps the order of recording.
            self.keep(messages)
            if self.retry_due(now):
                self.resend_spooled()
            return
        for index, message in enumerate(messages):
            try:
                self._publish(message)
            except Exception as exc:  # noqa: BLE001 - any failure means: keep it for later
                self.broker_unavailable(exc)
                self.keep(messages[index:])
                return

    def resend_spooled(self) -> None:
        """Publish the oldest spooled messages, at most a chunk; stop at the first failure."""
        waiting = self.spool.oldest(DRAIN_CHUNK, max_bytes=DRAIN_BYTES)
        sent = []
        try:
            for spooled in waiting:
                self._publish(spooled.message)
                sent.append(spooled)
        except Exception as exc:  # noqa: BLE001 - the broker went away again; the rest stays spooled
            self.broker_unavailable(exc)
        finally:
            self.spool.remove(sent)

    def drain(self, deadline: float) -> None:
        """Resend the whole spool before `deadline`, while the broker answers (at exit)."""
        # A one-shot process (a script, a cron job) lives only this long: what it adopted from
        # earlier processes goes out now too, within the bound close() waits.
        try:
            while self.spool.events and self.broker_down_until <= time.monotonic() < deadline:
                self.resend_spooled()
        except Exception:
            logger.exception("metrics spool could not be resent at exit; it waits for the next process")

    def adopt_now_and_then(self) -> None:
        """Take over the spools of siblings (other web workers) that exited with events in them."""
        now = time.monotonic()
        if now - self._last_adoption >= ADOPT_INTERVAL_SECONDS and not self.broker_down:
            self._last_adoption = now
            self.spool.adopt_orphans()

    def back_off(self) -> None:
        """Try the broker again only once the retry interval has passed."""
        self.broker_down_until = time.monotonic() + self.settings.retry_interval_ms / 1000

    def broker_unavailable(self, exc: BaseException) -> None:
        """The broker failed: spool until the retry interval has passed."""
        self.back_off()
        if not self.broker_down:
            self.broker_down = True
            logger.warning("metrics broker unavailable; spooling events: %r", exc, extra={"error": type(exc).__name__})

    def keep(self, messages: list[Message]) -> None:
        """Spool `messages` (after any the spool refused before); if it refuses, hold them in memory."""
        waiting, self.unspooled = self.unspooled + messages, []
        if not waiting:
            return
        try:
            self.spool.append(waiting)
        except Exception as exc:  # noqa: BLE001 - a full or failing disk: keep them in memory and retry
            self._hold_in_memory(waiting, exc)
            return
        self._tally.add("spooled", sum(m.events for m in waiting))

    def lose_held(self) -> None:
        """No retry is coming (the sender stopped): what the spool refused is lost, counted and logged."""
        lost = self.held_events
        self.unspooled = []
        if lost:
            logger.error("metrics spool unwritable at exit: events lost", extra={"events": lost})
            self._tally.add("dropped_spool_error", lost)

    def _hold_in_memory(self, messages: list[Message], exc: BaseException) -> None:
        # Bounded like the memory queue (in events): past it the oldest go, each counted and logged.
        held = sum(m.events for m in messages)
        dropped = 0
        while messages and held > self.settings.queue_size:
            held -= messages[0].events
            dropped += messages.pop(0).events
        self.unspooled = messages
        self._tally.log_once(
            ("spool_unwritable", type(exc).__name__),
            "metrics spool unwritable (a full disk?): events kept in memory and retried",
            error=repr(exc),
        )
        if dropped:
            logger.error("metrics spool unwritable and memory bound reached: events dropped", extra={"events": dropped})
            self._tally.add("dropped_spool_error", dropped)

    def _publish(self, message: Message) -> None:
        seconds = self._publisher.publish(message)
        if self.broker_down:
            self.broker_down = False
            logger.info("metrics broker reachable again; resending the spool", extra={"spooled": self.spool.events})
        self._tally.add("sent", message.events)
        if self._metrics is not None:
            self._metrics.sent(seconds)
