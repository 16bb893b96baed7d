"""Events set aside when the database stayed unreachable past the retry budget.

They go to JSON-lines files on the worker host (the database is the thing that
is down). `panic-metrics replay-dead-letters` publishes them back to the broker
as `record_events` messages, keeping their event_ids, so they take the same
store-then-count path as any event, are counted by the workers that store
them, and a replay is safe to repeat.

Safe while workers still write: a writer appends under an exclusive flock and
checks, once it holds the lock, that the path still names the file it opened;
the replayer first renames the file away, then takes the same lock (so a
writer mid-append finishes first), so a late writer finds the name gone and
starts a fresh file that the next replay picks up.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from app.config import get_settings

log = logging.getLogger(__name__)

#: A file being replayed: renamed away from writers, deleted once published.
REPLAYING = ".replaying-"
#: Events per replayed message: one INSERT each, like a client's batch.
REPLAY_BATCH = 100

Publish = Callable[[list[Any], float | None], None]


@contextmanager
def _locked_append(path: Path) -> Iterator[IO[str]]:
    """The file at `path`, opened for appending and flock'd, still named `path` once locked."""
    while True:
        handle = path.open("a", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(handle.fileno()).st_ino == path.stat().st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield handle
                return
        finally:
            handle.close()  # also releases the flock


def write_dead_letters(payloads: Sequence[Any], *, kind: str | None, published_at: datetime | None) -> Path:
    """Append one record per payload to this process's dead-letter file, durably."""
    directory = get_settings().dead_letter_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dead-letters-{os.getpid()}.jsonl"
    stamp = published_at.isoformat() if published_at else None
    lines = "".join(
        json.dumps({"kind": kind, "payload": payload, "published_at": stamp}, default=str) + "\n"
        for payload in payloads
    )
    with _locked_append(path) as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    log.error("events dead-lettered", extra={"count": len(payloads), "kind": kind, "path": str(path)})
    return path


def read_dead_letters(directory: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """Every dead-letter file under `directory` (being replayed or not) with its records."""
    found = []
    for path in sorted(directory.glob("dead-letters-*.jsonl*")):
        with path.open(encoding="utf-8") as handle:
            found.append((path, [json.loads(line) for line in handle if line.strip()]))
    return found


def as_event(record: dict[str, Any]) -> Any:
    """The `record_events` item of one dead letter: its payload, naming its kind."""
    payload = record["payload"]
    if isinstance(payload, dict) and record.get("kind") and "kind" not in payload:
        return {**payload, "kind": record["kind"]}
    return payload


def _take_for_replay(path: Path) -> Path:
    if REPLAYING in path.name:
        return path  # a replay that died half way: publish it again (event ids dedupe)
    taken = path.with_name(f"{path.name}{REPLAYING}{uuid.uuid4().hex}")
    path.rename(taken)
    # A writer that opened the file before the rename may be mid-append: its
    # lock makes us wait for the whole record; after us it finds the name gone.
    with taken.open("a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return taken


def replay_dead_letters(directory: Path, publish: Publish) -> int:
    """Publish every dead letter in `directory` back to the broker; delete each file once all of it is sent."""
    sent = 0
    for path in sorted(directory.glob("dead-letters-*.jsonl*")):
        taken = _take_for_replay(path)
        with taken.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        # Records keep their original publish time where they had one, in groups of one stamp.
        groups: dict[str | None, list[Any]] = {}
        for record in records:
            groups.setdefault(record.get("published_at"), []).append(as_event(record))
        for stamp, events in groups.items():
            published = datetime.fromisoformat(stamp).timestamp() if stamp else None
            for start in range(0, len(events), REPLAY_BATCH):
                publish(events[start : start + REPLAY_BATCH], published)
        taken.unlink()
        sent += len(records)
        log.info("dead letters replayed", extra={"count": len(records), "path": str(path)})
    return sent
