"""The client's settings: environment variables `PANIC_METRICS_*`, or `configure(...)` in code."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

Mode = Literal["development", "production"]


@dataclass(frozen=True)
class ClientSettings:
    """How the client sends; every field has an environment variable `PANIC_METRICS_<FIELD>`."""

    # The worker's broker. `filesystem://` is the embedded default of `make run`.
    broker_url: str = "filesystem://"
    broker_folder: Path = Path("var/broker")
    # What cannot be sent waits here (one SQLite file per process), up to the cap.
    spool_dir: Path = Path("var/metrics_spool")
    spool_max_bytes: int = 64 * 1024 * 1024
    # The bound of a call into the client (validation plus hand-off), and of the
    # wait at exit or SIGTERM for what is still in memory (then it is spooled).
    timeout_ms: float = 100.0
    flush_timeout_ms: float = 2_000.0
    # The bound of one publish by the background sender (socket and connect timeouts).
    send_timeout_ms: float = 1_000.0
    # While the broker is unreachable, try again this often (events go to the spool meanwhile).
    retry_interval_ms: float = 1_000.0
    # Events waiting in memory for the sender; past it a call drops the event and counts it.
    queue_size: int = 10_000
    # High-rate kinds travel in `record_events` messages of up to this many, at least this often.
    batch_size: int = 500
    batch_interval_ms: float = 1_000.0
    # HTTP requests are summed per (method, route, status) and sent as one summary each this often;
    # a process killed outright (SIGKILL, OOM) loses at most this long of them.
    summary_interval_seconds: float = 10.0
    # development: a bad call raises InvalidEvent; production: logged once per kind and reason, counted.
    mode: Mode = "production"

    def __post_init__(self) -> None:
        for name in ("broker_folder", "spool_dir"):  # `configure(spool_dir="...")` takes a str too
            object.__setattr__(self, name, Path(getattr(self, name)))
        positive = ("spool_max_bytes", "timeout_ms", "flush_timeout_ms", "send_timeout_ms", "retry_interval_ms")
        for name in (*positive, "queue_size", "batch_size", "batch_interval_ms", "summary_interval_seconds"):
            if not getattr(self, name) > 0:  # NaN too
                raise ValueError(f"PANIC_METRICS_{name.upper()}: must be > 0")
        if self.mode not in ("development", "production"):
            raise ValueError("PANIC_METRICS_MODE: must be development or production")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """Settings from `PANIC_METRICS_*` variables (empty ones ignored), then `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(f"PANIC_METRICS_{field.name.upper()}", "").strip()
            if raw:
                values[field.name] = _PARSERS.get(field.name, str)(raw)
        return replace(cls(**values), **overrides)

    @property
    def is_filesystem(self) -> bool:
        """True for kombu's filesystem transport, which needs a folder and no server."""
        return self.broker_url.startswith("filesystem://")


def _number(raw: str) -> float:
    return float(raw)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "broker_folder": Path,
    "spool_dir": Path,
    "spool_max_bytes": int,
    "timeout_ms": _number,
    "flush_timeout_ms": _number,
    "send_timeout_ms": _number,
    "retry_interval_ms": _number,
    "queue_size": int,
    "batch_size": int,
    "batch_interval_ms": _number,
    "summary_interval_seconds": _number,
}
