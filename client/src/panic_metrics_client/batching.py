"""Which messages a sender cycle sends: a pure function of what is queued and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from panic_metrics_client.messages import Message, batch_message, event_message, kind_of

# One message per web request would be one broker message and one stored row per
# request: these travel together in `record_events` messages (one INSERT each).
HIGH_RATE_KINDS = frozenset({"http_request", "http_summary", "gauge_report"})
# Low-rate kinds go out one message each under their own task names, unless more than
# this many arrived since the sender's last cycle: then they travel batched too.
BURST_OVER = 20


@dataclass
class Pending:
    """High-rate events waiting for their batch to fill or to be due, and since when the oldest waits."""

    texts: list[str] = field(default_factory=list)
    since: float | None = None


def plan(queued: list[str], pending: Pending, *, now: float, force: bool, size: int, interval: float) -> list[Message]:
    """The messages to send now for `queued` (events as JSON, oldest first); high-rate ones join `pending`.

    Low-rate events go one message each, or batched when more than BURST_OVER
    came at once; high-rate events go in batches of `size` once a batch is
    full, or once the oldest has waited `interval` (at once when `force`).
    """
    single: list[str] = []
    for text in queued:
        (pending.texts if kind_of(text) in HIGH_RATE_KINDS else single).append(text)
    if len(single) > BURST_OVER:
        # A burst: one message each would keep the sender busy (and holding the GIL the
        # callers need) for a long while, and cost a broker message each; sent now, batched.
        messages = [batch_message(single[i : i + size]) for i in range(0, len(single), size)]
    else:
        messages = [event_message(text) for text in single]
    if pending.texts and pending.since is None:
        pending.since = now
    due = force or (pending.since is not None and now - pending.since >= interval)
    while len(pending.texts) >= size or (pending.texts and due):
        messages.append(batch_message(pending.texts[:size]))
        del pending.texts[:size]
    if not pending.texts:
        pending.since = None
    return messages
