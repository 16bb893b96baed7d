"""The durable local spool: messages that could not be sent wait here, in order, until they can.

One SQLite file per process (WAL, synchronous=FULL), held with an exclusive
flock on a sidecar lock file for the life of the process. The kernel releases
that lock when the process dies, however it dies, so the next process to
start finds the file unlocked and adopts its messages (SIGKILL loses nothing
that reached the spool). A process never adopts its own file: closing a
non-empty spool keeps its lock until the process exits, so an event recorded
after `close()` (a request finishing during a graceful shutdown) goes to the
same file, and no sibling adopts it while the process lives. The byte and
event counts are read from the file whenever it is opened, never carried over
from memory. The cap counts the stored message bytes; past it the oldest
messages are dropped, and every dropped event is counted and logged.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from panic_metrics_client.messages import Message

logger = logging.getLogger("panic_metrics_client")

_PARENTS_HANDLES: list[sqlite3.Connection] = []

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    events INTEGER NOT NULL,
    bytes INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class Spooled:
    """A message read from the spool, with its row id (to remove it once sent)."""

    row_id: int
    size: int
    message: Message


class Spool:
    """This process's spool file under `directory`, capped at `max_bytes` of messages."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        self.path: Path | None = None
        self.bytes = 0
        self.events = 0
        self.dropped_events = 0

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if self.path is not None and self._lock_file is not None:
            # Closed while it held messages, and still locked by us: reopened, never adopted.
            self._db = _connect(self.path)
            self._count_from_file(self._db)
            return self._db
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"spool-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked before it is visible under its name, so no other process ever sees it unlocked.
        temporary = self.directory / f"{name}.lock.tmp"
        self._lock_file = _locked(temporary, blocking=True)
        temporary.rename(self.directory / f"{name}.lock")
        self.path = self.directory / f"{name}.sqlite3"
        self._db = _connect(self.path)
        self._count_from_file(self._db)
        self._adopt_orphans()
        return self._db

    def _count_from_file(self, db: sqlite3.Connection) -> None:
        totals = db.execute("SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(events), 0) FROM messages").fetchone()
        self.bytes, self.events = int(totals[0]), int(totals[1])

    def _adopt_orphans(self) -> None:
        # Files of processes that died with messages in them: their lock is free.
        if self._db is None:
            return
        for orphan in sorted(self.directory.glob("spool-*.sqlite3"), key=_mtime):
            if orphan == self.path:
                continue
            lock_path = orphan.with_suffix(".lock")
            fd = _locked(lock_path, blocking=False)
            if fd is None:
                continue  # a live process holds it
            try:
                if orphan.exists():
                    moved = self._move_from(orphan)
                    if moved:
                        logger.info("spool adopted", extra={"file": orphan.name, "messages": moved})
                for suffix in (".sqlite3", ".sqlite3-wal", ".sqlite3-shm"):
                    Path(str(orphan.with_suffix("")) + suffix).unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _move_from(self, orphan: Path) -> int:
        # SQLite copies the rows from file to file (ATTACH, INSERT ... SELECT): an orphan of any
        # size streams through its page cache, never into this process's memory at once.
        db = self._open()
        db.execute("ATTACH DATABASE ? AS orphan", (str(orphan),))
        try:
            if db.execute("SELECT 1 FROM orphan.sqlite_master WHERE name = 'messages'").fetchone() is None:
                return 0  # created, never written
            with db:
                moved, size, events = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(events), 0) FROM orphan.messages"
                ).fetchone()
                db.execute(
                    "INSERT INTO messages (body, events, bytes)"
                    " SELECT body, events, bytes FROM orphan.messages ORDER BY id"
                )
        finally:
            db.execute("DETACH DATABASE orphan")
        self.bytes += int(size)
        self.events += int(events)
        self._enforce_cap()
        return int(moved)

    def adopt_orphans(self) -> None:
        """Move the messages of spool files whose process died into this one, oldest file first."""
        with self._lock:
            self._open()
            self._adopt_orphans()

    def open(self) -> None:
        """Open (or create) this process's file and adopt the files of dead processes."""
        with self._lock:
            self._open()

    def append(self, messages: list[Message]) -> None:
        """Store `messages` after those already waiting; drop the oldest past the cap (counted)."""
        if not messages:
            return
        rows = [(text, m.events, len(text)) for m in messages for text in (m.encode(),)]
        with self._lock:
            db = self._open()
            with db:
                db.executemany("INSERT INTO messages (body, events, bytes) VALUES (?, ?, ?)", rows)
            self.bytes += sum(r[2] for r in rows)
            self.events += sum(r[1] for r in rows)
            self._enforce_cap()

    def _enforce_cap(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        db = self._open()
        # Walk the oldest rows only as far as the overshoot reaches (a cursor, not the whole
        # spool in memory), then drop them in one statement.
        over = self.bytes - self.max_bytes
        freed = dropped_events = 0
        last_id = None
        oldest = db.execute("SELECT id, events, bytes FROM messages ORDER BY id")
        for row_id, events, size in oldest:
            if freed >= over:
                break
            last_id, freed, dropped_events = row_id, freed + size, dropped_events + events
        oldest.close()
        if last_id is None:
            return
        with db:
            db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
        self.bytes -= freed
        self.events -= dropped_events
        self.dropped_events += dropped_events
        logger.error(
            "spool full: oldest events dropped",
            extra={"dropped_events": dropped_events, "max_bytes": self.max_bytes},
        )

    def oldest(self, limit: int, *, max_bytes: int | None = None) -> list[Spooled]:
        """Up to `limit` waiting messages, oldest first; with `max_bytes`, as many as fit in it (at least one)."""
        with self._lock:
            if self._db is None and not self.events:
                return []
            db = self._open()
            if max_bytes is None:
                rows = db.execute("SELECT id, bytes, body FROM messages ORDER BY id LIMIT ?", (limit,)).fetchall()
            else:
                # Sizes first, bodies only for what fits: a full spool of 500-event batches
                # would otherwise put tens of MB in memory for one resend attempt.
                taken = last_id = 0
                sizes = db.execute("SELECT id, bytes FROM messages ORDER BY id LIMIT ?", (limit,)).fetchall()
                for row_id, size in sizes:
                    if last_id and taken + size > max_bytes:
                        break
                    taken, last_id = taken + size, row_id
                fitting = "SELECT id, bytes, body FROM messages WHERE id <= ? ORDER BY id"
                rows = db.execute(fitting, (last_id,)).fetchall()
        return [Spooled(row_id, size, Message.decode(text)) for row_id, size, text in rows]

    def remove(self, spooled: list[Spooled]) -> None:
        """Forget messages that were sent."""
        if not spooled:
            return
        with self._lock:
            db = self._open()
            with db:
                db.executemany("DELETE FROM messages WHERE id = ?", [(s.row_id,) for s in spooled])
            self.bytes -= sum(s.size for s in spooled)
            self.events -= sum(s.message.events for s in spooled)
            if self.events <= 0:
                self.bytes = self.events = 0

    def close(self) -> None:
        """Close the file; an empty one is deleted, a non-empty one waits for the next process.

        A non-empty file stays locked until this process exits (the kernel then
        releases the lock and the next process adopts it): an event appended after
        `close()` reopens the same file instead of creating one that would adopt it.
        """
        with self._lock:
            if self._db is None or self.path is None:
                return
            empty = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
            self._db.close()
            self._db = None
            if not empty:
                return
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self.path.with_suffix(".lock").unlink(missing_ok=True)
            self.path = None
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None

    def hold_for_fork(self) -> None:
        """Before a fork: wait for this process's SQLite call in progress to end, and start none until
        `release_after_fork`. A child forked inside one inherits SQLite's locks held by a thread it does
        not have, and hangs at its own first use of SQLite (seen: a fork while the sender opened the spool)."""
        self._lock.acquire()

    def release_after_fork(self) -> None:
        """In the parent, after a fork: the spool is usable again (the child has a lock of its own)."""
        self._lock.release()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's file and lock stay the parent's; this child opens its own."""
        self._lock = threading.RLock()
        if self._db is not None:
            # Never close the parent's SQLite handle here (SQLite forbids using it across fork); keep it unreachable.
            _PARENTS_HANDLES.append(self._db)
        self._db = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # flock is shared across fork: closing our copy keeps the parent's lock
        self._lock_file = None
        self.path = None
        self.bytes = self.events = 0


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
    db.isolation_level = "DEFERRED"
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a spooled message survives a power loss too; the spool is written only while the broker is away.
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    return db


def _locked(path: Path, *, blocking: bool) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
