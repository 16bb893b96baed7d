"""Events set aside when the database stayed unreachable past the retry budget.

They go to JSON-lines files on the worker host (the database is the thing that
is down) and `panic-metrics replay-dead-letters` feeds them back through the
normal path; their event_ids make a replay safe to repeat.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from app.config import get_settings

log = logging.getLogger(__name__)


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
    with path.open("a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    log.error("events dead-lettered", extra={"count": len(payloads), "kind": kind, "path": str(path)})
    return path


def read_dead_letters(directory: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """Every dead-letter file under `directory` with its records."""
    found = []
    for path in sorted(directory.glob("dead-letters-*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            found.append((path, [json.loads(line) for line in handle if line.strip()]))
    return found
