"""Every setting of the worker, read once from the environment (and `.env`)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    # How often a worker looks for a dead worker's unacknowledged messages whose
    # visibility timeout has passed (kombu's scan; its default is about 100 s).
    broker_unacked_restore_interval_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    # Redis: how long a worker waits for any answer from the broker before it
    # drops that connection and reconnects. Without it, a broker that goes
    # silent (a partition without a reset) freezes an acknowledgement, and with
    # it the whole worker, for as long as TCP takes to notice (about 15 min).
    # Above the 1 s a consuming connection waits for messages.
    broker_socket_timeout_seconds: Annotated[float, Field(ge=2, le=600)] = 30.0
    # Messages each pool process reserves ahead (worker_prefetch_multiplier);
    # a killed worker's reserved messages wait out the visibility timeout.
    worker_prefetch_multiplier: Annotated[int, Field(ge=1, le=64)] = 4
    # A message delivered this many times without finishing (it killed its
    # child each time) is quarantined instead of run again.
    task_max_deliveries: Annotated[int, Field(ge=1, le=100)] = 5
    quarantine_dir: Path = VAR_DIR / "quarantine"
    # An event task past the soft limit sets its payloads aside (quarantine);
    # the hard limit kills a child that does not stop.
    task_soft_time_limit_seconds: Annotated[int, Field(ge=1)] = 120
    task_time_limit_seconds: Annotated[int, Field(ge=2)] = 150
    # How often a worker sends itself a probe through the broker; /health says
    # "not consuming" when none arrived for three intervals.
    worker_consuming_probe_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0
    # PostgreSQL: a connect or statement past these fails (and is retried)
    # instead of wedging a pool child.
    database_connect_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 5
    database_statement_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0

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
    # CA bundle (PEM) that signs the certificate of every rediss:// server (broker and
    # REDIS_URL); unset: the system's. The certificate is always verified.
    redis_tls_ca_file: Path | None = None
    # --- access to the endpoint (README "Access and security") ---
    # A bearer token, and/or a user and password (basic auth), for /metrics,
    # /health details, /docs and the JSON API. Unset on a loopback address:
    # open (`make run`). A non-loopback METRICS_HOST without one is refused.
    # The POST routes always need the token. `*_FILE`: read from a file (a
    # Docker or Kubernetes secret), trailing newline stripped.
    metrics_auth_token: SecretStr | None = None
    metrics_auth_token_file: Path | None = None
    metrics_auth_username: str | None = None
    metrics_auth_password: SecretStr | None = None
    metrics_auth_password_file: Path | None = None
    # TLS for the endpoint: both or neither (PEM files, passed to uvicorn).
    metrics_tls_cert_file: Path | None = None
    metrics_tls_key_file: Path | None = None
    # Renamed METRICS_AUTH_TOKEN; read only to stop with a clear message (see below).
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

    @model_validator(mode="after")
    def _timeouts_fit(self) -> Settings:
        # A message waiting for its retry is unacknowledged on Redis: a
        # countdown past the visibility timeout gets it delivered twice over.
        if (
            self.broker_url.startswith(("redis://", "rediss://"))
            and self.broker_visibility_timeout_seconds <= self.task_retry_backoff_max_seconds
        ):
            raise ValueError(
                "BROKER_VISIBILITY_TIMEOUT_SECONDS "
                f"({self.broker_visibility_timeout_seconds}) must be above TASK_RETRY_BACKOFF_MAX_SECONDS "
                f"({self.task_retry_backoff_max_seconds}), the longest retry countdown"
            )
        if self.task_time_limit_seconds <= self.task_soft_time_limit_seconds:
            raise ValueError(
                f"TASK_TIME_LIMIT_SECONDS ({self.task_time_limit_seconds}) must be above "
                f"TASK_SOFT_TIME_LIMIT_SECONDS ({self.task_soft_time_limit_seconds})"
            )
        return self

    @field_validator("metrics_api_token")
    @classmethod
    def _renamed(cls, value: SecretStr | None) -> SecretStr | None:
        # Not an alias: the new token also guards /metrics and the API, so a
        # silent alias would turn a working Prometheus scrape into 401s.
        if value is not None:
            raise ValueError(
                "renamed METRICS_AUTH_TOKEN, which now also guards /metrics, /health details and the API "
                "(give Prometheus the token too)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        # `X_FILE` fills `X` from a file, as the official Docker images do.
        if not isinstance(data, dict):
            return data
        for name in ("metrics_auth_token", "metrics_auth_password"):
            path = data.get(f"{name}_file")
            if path is None:
                continue
            variable = f"{name.upper()}_FILE"
            if data.get(name) is not None:
                raise ValueError(f"{variable}: set {name.upper()} or {variable}, not both")
            try:
                secret = Path(path).read_text().strip()
            except OSError as exc:
                raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
            if not secret:
                raise ValueError(f"{variable}: {path} is empty")
            data = {**data, name: secret}
        return data

    @model_validator(mode="after")
    def _complete_access_settings(self) -> Settings:
        if (self.metrics_auth_username is None) != (self.metrics_auth_password is None):
            raise ValueError("METRICS_AUTH_USERNAME and METRICS_AUTH_PASSWORD go together: set both or neither")
        if (self.metrics_tls_cert_file is None) != (self.metrics_tls_key_file is None):
            raise ValueError("METRICS_TLS_CERT_FILE and METRICS_TLS_KEY_FILE go together: set both or neither")
        for secret in (self.metrics_auth_token, self.metrics_auth_password):
            if secret is not None and not secret.get_secret_value():
                raise ValueError("METRICS_AUTH_TOKEN and METRICS_AUTH_PASSWORD must not be empty")
        return self

    @property
    def metrics_auth_configured(self) -> bool:
        """Whether the endpoint asks for credentials (a token or a user and password)."""
        return self.metrics_auth_token is not None or self.metrics_auth_password is not None

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")


def load_settings() -> Settings:
    """Read the settings; a bad value stops the process with one line naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        # A field's error names its variable; a cross-field one names them in its message.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        sys.exit(f"panic-metrics: invalid configuration: {problems}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    # Imported here, not at the top: the client package imports prometheus_client,
    # and reading the settings must not, so that app.metrics can still point
    # prometheus_client at the multiprocess directory first.
    from panic_metrics_client.events import set_max_clock_skew

    settings = load_settings()
    # The catalogue lives in the client distribution, which reads no worker settings.
    set_max_clock_skew(settings.max_clock_skew_seconds)
    return settings
