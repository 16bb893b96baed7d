"""Pending counts: what a batch is about to add, written down before its COMMIT.

A pool child stores a batch, COMMITs, then increments its counters. Killed
between the two, or cut off from the database while its COMMIT was in
flight, it used to leave events stored but never counted. Now the child
first computes, for every mmap entry the batch will move, the exact value
the entry will hold afterwards (the same float additions, in the same order,
from the entry's current value: the child is the only writer of its files),
and writes those targets to ``pending-<pid>-<token>.json`` in the
multiprocess directory. Then it COMMITs, sets the entries to their targets
and deletes the record.

Setting an entry to its target is idempotent, so a half-applied record is
finished exactly, never doubled. Whoever finds a record of a dead process
(the compactor, before it merges that pid's files) asks the database whether
the attempt committed (its token is in the rows it inserted) and either
writes the targets into the dead child's files or drops the record. The
record need not survive a power cut: nor do the mmap files it describes,
and the worker wipes the directory at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.mmap_dict import MmapedDict

from panic_metrics_client.exact_sum import grow

log = logging.getLogger(__name__)

PREFIX = "pending-"
SUFFIX = ".json"
#: Not ``.tmp``: the compactor removes ``*.tmp`` files, and a live child's
#: half-written record is not a merge leftover.
PART_SUFFIX = ".part"


@dataclass
class Target:
    """One mmap entry of this process and the value (and timestamp) it will hold."""

    value: Any  # prometheus_client's per-process value object of one series
    base: float
    target: float
    timestamp: float
    #: For an entry summed exactly: the exact sum `target` rounds, as partials.
    partials: list[float] | None = None


#: This process's entries summed exactly (a histogram's `_sum` that took a
#: summary): id(value) -> (value, the exact sum its entry holds, rounded).
#: Kept per process, as its files are; an entry found holding anything else
#: (another writer, a forked child's new file) starts again from its value.
_exact_sums: dict[int, tuple[Any, list[float]]] = {}


def _exact_partials(value: Any, current: float) -> list[float] | None:
    """The exact sum behind `value`'s entry (a copy to grow), or None if it is not summed exactly."""
    known = _exact_sums.get(id(value))
    if known is None or known[0] is not value:
        return None
    return list(known[1]) if math.fsum(known[1]) == current else [current]


@dataclass
class Tally:
    """The increments one batch will make, recorded instead of made."""

    _ops: list[tuple[Any, str, float, float]] = field(default_factory=list)

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """What ``child.inc(amount)`` would do, for a counter child."""
        self._ops.append((child._value, "inc", float(amount), 0.0))

    def observe_many(self, child: Any, buckets: Sequence[int], exact_sum: Sequence[float]) -> None:
        """What observing many values does to a histogram child, given how many fell in each bucket
        and their sum as exact partials: the `_sum` entry then holds its exact sum, correctly rounded."""
        for partial in exact_sum:
            self._ops.append((child._sum, "exact", float(partial), 0.0))
        for value, count in zip(child._buckets, buckets, strict=True):
            if count:
                self._ops.append((value, "inc", float(count), 0.0))

    def observe(self, child: Any, amount: float) -> None:
        """What ``child.observe(amount)`` does to a histogram child: its sum, then its first bucket."""
        amount = float(amount)
        self._ops.append((child._sum, "inc", amount, 0.0))
        # The first bound not below `amount`, as the library's scan finds it; NaN lands in none, as there.
        bounds = child._upper_bounds
        first = bisect_left(bounds, amount)
        if first < len(bounds) and amount <= bounds[first]:
            self._ops.append((child._buckets[first], "inc", 1.0, 0.0))

    def set(self, child: Any, value: float) -> None:
        """What ``child.set(value)`` does to a gauge child (stamped now for ``mostrecent``)."""
        stamp = time.time() if child._is_most_recent else 0.0
        self._ops.append((child._value, "set", float(value), stamp))

    def __len__(self) -> int:
        return len(self._ops)

    def targets(self) -> list[Target]:
        """Every entry's value after the batch, by the additions ``inc`` would make, in order.

        An entry summed exactly (it took an ``exact`` addition, now or before
        in this process) adds every amount to its partials instead, and its
        target is their sum correctly rounded: never below its current value
        when the amounts add up to no less than zero, as rounding is monotone.
        """
        found: dict[int, Target] = {}
        for value, op, amount, stamp in self._ops:
            entry = found.get(id(value))
            if entry is None:
                current = float(value.get())  # also re-opens this process's files after a fork
                entry = found[id(value)] = Target(value, current, current, float(getattr(value, "_timestamp", 0.0)))
                entry.partials = _exact_partials(value, current)
            if op == "set":
                entry.target, entry.timestamp, entry.partials = amount, stamp, None
                continue
            entry.timestamp = 0.0
            if op == "exact" and entry.partials is None:
                entry.partials = [entry.target]
            if entry.partials is None:
                entry.target += amount
            else:
                grow(entry.partials, amount)
                entry.target = math.fsum(entry.partials)
        return list(found.values())


def apply(targets: list[Target]) -> None:
    """Set every entry to its target: lands exactly where the increments would."""
    for target in targets:
        target.value.set(target.target, target.timestamp or None)
        if target.partials is not None:
            _exact_sums[id(target.value)] = (target.value, target.partials)


@dataclass(frozen=True)
class Record:
    """A pending record as stored: the attempt, its rows, and its targets by file and key."""

    path: Path
    pid: int
    token: uuid.UUID
    expected_rows: int
    entries: list[tuple[str, str, float, float, float]]  # (file, key, base, target, timestamp)


def _entry(target: Target) -> tuple[str, str, float, float, float]:
    # os.path, not Path: a message has a hundred entries or more, and Path() costs 2 us each.
    return (
        os.path.basename(target.value._file._fname),  # noqa: PTH119 - see above
        target.value._key,
        target.base,
        target.target,
        target.timestamp,
    )


def is_mmaped(targets: list[Target]) -> bool:
    """Whether these values live in multiprocess files (a record means something)."""
    return all(hasattr(t.value, "_file") for t in targets)


def backed(targets: list[Target]) -> bool:
    """Whether every entry has its place, space reserved, in its file: setting it then cannot fail.

    A value made while the disk was full has no file yet (it waits in memory,
    panic_metrics_client.metric_files); its count could be lost.
    """
    return all(getattr(t.value, "_file", None) is not None for t in targets)


def write(directory: Path, *, token: uuid.UUID, expected_rows: int, targets: list[Target]) -> Path:
    """Write the record of one attempt, whole or not at all (rename), before its COMMIT."""
    pid = os.getpid()
    path = directory / f"{PREFIX}{pid}-{token}{SUFFIX}"
    part = path.with_name(path.name + PART_SUFFIX)
    body = {
        "version": 1,
        "pid": pid,
        "token": str(token),
        "expected_rows": expected_rows,
        "entries": [_entry(t) for t in targets],
    }
    try:
        part.write_text(json.dumps(body, allow_nan=False), encoding="utf-8")
        part.replace(path)
    except OSError:
        part.unlink(missing_ok=True)  # a full disk: no half record left behind
        raise
    return path


def read(path: Path) -> Record:
    """One stored record."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Record(
        path=path,
        pid=int(raw["pid"]),
        token=uuid.UUID(raw["token"]),
        expected_rows=int(raw["expected_rows"]),
        entries=[(str(f), str(k), float(b), float(t), float(s)) for f, k, b, t, s in raw["entries"]],
    )


def records_of(directory: Path, pid: int) -> list[Path]:
    """The pending records a process left in the directory."""
    return sorted(directory.glob(f"{PREFIX}{pid}-*{SUFFIX}"))


def pids_with_records(directory: Path) -> set[int]:
    """Pids that have pending records here."""
    pids = set()
    for path in directory.glob(f"{PREFIX}*{SUFFIX}"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit():
            pids.add(int(pid))
    return pids


@dataclass
class _Files:
    directory: Path
    open: dict[str, MmapedDict] = field(default_factory=dict)

    def get(self, name: str) -> MmapedDict:
        if name not in self.open:
            self.open[name] = MmapedDict(str(self.directory / name))
        return self.open[name]

    def close(self) -> None:
        for mmaped in self.open.values():
            mmaped.close()


def finish_for_dead_process(record: Record, *, committed: bool) -> None:
    """Write a dead process's committed targets into its files, or drop a rolled-back record.

    The caller holds the directory's exclusive lock and knows the pid is dead,
    so nobody writes these files meanwhile. An entry already at its target
    (applied before the process died) is left as it is. An entry at neither
    base nor target was written by a later process that reused the pid; it
    gets the increment the record stands for, the best that can be done.
    """
    if committed:
        files = _Files(record.path.parent)
        try:
            for name, key, base, target, timestamp in record.entries:
                mmaped = files.get(name)
                current, _ = mmaped.read_value(key)
                if current in (base, target):
                    mmaped.write_value(key, target, timestamp)
                else:
                    log.warning("pending entry moved by another process", extra={"file": name, "key": key})
                    mmaped.write_value(key, current + (target - base), timestamp)
        finally:
            files.close()
    record.path.unlink(missing_ok=True)


Resolver = Callable[[uuid.UUID, int], bool]


def iter_records(directory: Path, pids: set[int]) -> Iterator[Record]:
    """Records of the given pids, oldest first (by name: same pid, any order is fine)."""
    for pid in sorted(pids):
        for path in records_of(directory, pid):
            yield read(path)
