"""Every setting of the worker, read once from the environment (and `.env`)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from panic_metrics_client.events import set_max_clock_skew

VAR_DIR = Path("var")


class Settings(BaseSettings):
    """The worker's configuration; the defaults run on one machine with no server."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    database_url: str = f"sqlite:///{VAR_DIR / 'panic_metrics.sqlite3'}"
    # The filesystem transport needs no server and works across processes
    # (prefork children and beat); production uses Redis.
    broker_url: str = "filesystem://"
    broker_folder: Path = VAR_DIR / "broker"

    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 8001
    prometheus_multiproc_dir: Path = VAR_DIR / "prometheus_multiproc"
    # How often the main process merges the metric files of dead pool children.
    multiproc_compact_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0

    worker_concurrency: Annotated[int, Field(ge=1, le=256)] = 2
    worker_max_tasks_per_child: Annotated[int, Field(ge=0)] = 1000

    # Redis redelivers a message not acknowledged within this time (acks_late):
    # the recovery time after a worker host dies. Keep it above the longest
    # retry countdown, or a message waiting to retry is also redelivered.
    broker_visibility_timeout_seconds: Annotated[int, Field(ge=1)] = 3600
    task_max_retries: Annotated[int, Field(ge=0, le=100)] = 10
    task_retry_backoff_max_seconds: Annotated[int, Field(ge=1)] = 600
    dead_letter_dir: Path = VAR_DIR / "dead_letter"

    # Label caps: values past the cap are counted under `other`.
    max_zones: Annotated[int, Field(ge=1, le=10_000)] = 200
    max_firms: Annotated[int, Field(ge=1, le=10_000)] = 500
    max_endpoints: Annotated[int, Field(ge=1, le=10_000)] = 200
    max_notification_types: Annotated[int, Field(ge=1, le=10_000)] = 50
    max_plans: Annotated[int, Field(ge=1, le=10_000)] = 50
    # user types, prank detectors, gauge report sources: a handful each
    max_small_dimension: Annotated[int, Field(ge=1, le=1_000)] = 20

    # An occurred_at further in the future than this is rejected.
    max_clock_skew_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0

    event_retention_days: Annotated[int, Field(ge=1)] = 30
    snapshot_retention_days: Annotated[int, Field(ge=1)] = 400

    # --- scheduled jobs (beat_schedule.py) ---
    health_refresh_interval_seconds: Annotated[int, Field(ge=1)] = 60
    subscription_refresh_interval_seconds: Annotated[int, Field(ge=1)] = 60
    # Zone and firm performance windows, aligned to the UTC day (12:00-12:05);
    # the job runs once a window.
    performance_window_seconds: Annotated[int, Field(ge=1, le=86_400)] = 300
    # A window is aggregated this long after it ends, so events in flight land in it.
    performance_grace_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    # After an outage the job fills in at most this many missed windows (a day of 5 minutes).
    performance_backfill_windows: Annotated[int, Field(ge=1, le=10_000)] = 288
    cleanup_interval_seconds: Annotated[int, Field(ge=1)] = 86_400
    # Raw events deleted (and rolled up) per statement: bounds how long a lock is held.
    cleanup_batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000
    # Daily rollups of deleted events (the archive) are kept this long.
    rollup_retention_days: Annotated[int, Field(ge=1)] = 730
    # A cleanup that holds its window longer than this is presumed dead; another may take over.
    job_lease_seconds: Annotated[int, Field(ge=1)] = 3600
    # Alertmanager (its /-/healthy and /api/v2/alerts); unset: not monitored.
    alertmanager_url: str | None = None
    # The Redis whose clients, memory and hit ratio are reported; default: the broker, if Redis.
    redis_url: str | None = None
    # Bearer token for the endpoint's POST routes; unset: no token needed.
    metrics_api_token: SecretStr | None = None

    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        """Accept the usual `postgres://` spellings and pin the psycopg 3 driver."""
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith(("postgresql+psycopg://", "sqlite://")):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        return value

    @field_validator("performance_window_seconds")
    @classmethod
    def _divides_the_day(cls, value: int) -> int:
        # Windows are aligned to midnight UTC: every day must hold whole windows.
        if 86_400 % value:
            raise ValueError("must divide 86400 (a day) so windows align, e.g. 60, 300, 900, 3600")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")


def load_settings() -> Settings:
    """Read the settings; a bad value stops the process with one line naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors())
        sys.exit(f"panic-metrics: invalid configuration: {problems}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    settings = load_settings()
    # The catalogue lives in the client distribution, which reads no worker settings.
    set_max_clock_skew(settings.max_clock_skew_seconds)
    return settings
