"""HTTP requests summed where they happen: one summary per (method, route, status) and interval.

A request adds itself to a table of its thread (a shard): a count, its
duration's bucket and the exact sum of the durations (Shewchuk partials,
panic_metrics_client.exact_sum), under a lock only the sender ever contends
for, once an interval, when it swaps the table out. The sender merges the
shards into one `HttpSummaryEvent` per key; the worker counts each exactly as
its requests one by one would have moved the counters and buckets, and its
`_sum` to the exact sum correctly rounded.

What a process loses: only the open interval, if it is killed (SIGKILL,
OOM); at exit and on SIGTERM the sender takes the table before it stops.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from panic_metrics_client.events import HTTP_DURATION_BUCKETS, HttpSummaryEvent
from panic_metrics_client.exact_sum import grow
from panic_metrics_client.parsing import InvalidEvent, parse_event

Key = tuple[str, str, int]  # method, route template, status
#: A key's sums: [count, exact partials of the durations, count in each bucket (the last past 30 s)].
Row = list[Any]  # [int, list[float], list[int]]: one list, mutated in place on the hot path

_BUCKETS = HTTP_DURATION_BUCKETS
_SLOTS = len(_BUCKETS) + 1


class Refused(NamedTuple):
    """A key the catalogue refused when its summary was built, and how many requests it held."""

    invalid: InvalidEvent
    requests: int


class _Shard:
    """One thread's table; its lock is held by that thread per request, and by the sender once an interval."""

    __slots__ = ("__weakref__", "lock", "table", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.table: dict[Key, Row] = {}
        self.thread = weakref.ref(threading.current_thread())


class HttpSummaries:
    """This process's requests since the last summary, by (method, route template, status)."""

    def __init__(self) -> None:
        self.after_fork()

    def after_fork(self) -> None:
        """From empty: a forked child summarises only its own requests (the parent sends what it had)."""
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._shards_lock = threading.Lock()
        self._since = datetime.now(UTC)

    def add(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """One request served: the hot path, a dictionary update under this thread's own lock."""
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._new_shard()
        key = (method, endpoint, status)
        with shard.lock:
            row = shard.table.get(key)
            if row is None:
                row = shard.table[key] = [0, [], [0] * _SLOTS]
            row[0] += 1
            grow(row[1], seconds)
            row[2][bisect_left(_BUCKETS, seconds)] += 1

    def pending(self) -> int:
        """Requests added since the last summary (read without stopping anyone)."""
        return sum(row[0] for shard in list(self._shards) for row in list(shard.table.values()))

    def take(self) -> tuple[list[HttpSummaryEvent], list[Refused]]:
        """Everything added since the last call, as one event per key; the next interval starts now.

        A key the catalogue refuses (a raw path given as the route, an unknown
        method) comes back as why, with its requests, instead of an event.
        """
        merged: dict[Key, Row] = {}
        with self._shards_lock:
            shards = list(self._shards)
            # A thread that ended leaves its shard behind; once emptied here it is dropped.
            self._shards = [shard for shard in shards if shard.thread() is not None]
        for shard in shards:
            with shard.lock:
                table, shard.table = shard.table, {}
            for key, (count, partials, buckets) in table.items():
                into = merged.get(key)
                if into is None:
                    merged[key] = [count, partials, buckets]
                    continue
                into[0] += count
                for partial in partials:
                    grow(into[1], partial)
                into[2] = [a + b for a, b in zip(into[2], buckets, strict=True)]
        since, until = self._since, datetime.now(UTC)
        self._since = until
        events: list[HttpSummaryEvent] = []
        refused: list[Refused] = []
        for (method, endpoint, status), (count, partials, buckets) in merged.items():
            fields = {
                "method": method,
                "endpoint": endpoint,
                "status": status,
                "interval_start": since,
                "occurred_at": until,
                "count": count,
                "buckets": buckets,
                "duration_sum": partials,
            }
            try:
                events.append(cast("HttpSummaryEvent", parse_event("http_summary", fields)))
            except InvalidEvent as invalid:
                refused.append(Refused(invalid, count))
        return events, refused

    def _new_shard(self) -> _Shard:
        shard = _Shard()
        with self._shards_lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard
