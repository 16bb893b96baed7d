"""Poison messages: a cap on deliveries of a message that never finishes, and where it goes after.

A message whose payload kills its pool child (a segfault in a driver, an OOM
kill) is rejected with `reject_on_worker_lost`, redelivered, and kills the
next child: with no cap it loops for ever. Each delivery is counted before the
task runs, in a file on the worker host that a kill cannot roll back: one
byte appended per delivery, so the count survives the crash it is counting.

Quarantined messages go to JSON-lines files on the host, not the database:
the database may be what is failing, and a quarantine that needs it could
lose the very message it exists to keep. The files are read by an operator
(the reason is in each record); a fixed payload can be replayed with
`panic-metrics replay-dead-letters` after moving its records into the
dead-letter directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import get_settings

log = logging.getLogger(__name__)

_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")


def _delivery_file(key: str) -> Path:
    directory = get_settings().quarantine_dir / "deliveries"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / _SAFE_KEY.sub("_", key)[:200]


def record_delivery(key: str) -> int:
    """Count one delivery of the message `key` (task id and retry number); return the deliveries so far."""
    path = _delivery_file(key)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # O_APPEND of one byte is atomic; the page cache keeps it through a
        # SIGKILL of this process (only a host crash loses it, and then the
        # count restarts, still bounded).
        os.write(descriptor, b".")
    finally:
        os.close(descriptor)
    return path.stat().st_size


def forget_delivery(key: str) -> None:
    """The message finished (stored, retried, set aside): drop its count."""
    _delivery_file(key).unlink(missing_ok=True)


def quarantine(
    payloads: Sequence[Any], *, kind: str | None, reason: str, task_id: str, deliveries: int | None = None
) -> Path:
    """Append the message's payloads with the reason to this host's quarantine file, durably."""
    directory = get_settings().quarantine_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"quarantine-{os.getpid()}.jsonl"
    record = {
        "task_id": task_id,
        "kind": kind,
        "reason": reason,
        "deliveries": deliveries,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "payloads": list(payloads),
    }
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    log.error(
        "message quarantined",
        extra={"task_id": task_id, "kind": kind, "reason": reason, "deliveries": deliveries, "path": str(path)},
    )
    return path
