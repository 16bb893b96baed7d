"""The health refresh: dependencies, database connections, Redis, Celery queue depths.

`collect_health` reads, `set_health_gauges` shows; neither raises for a
dependency that is down: that is what they report. Works on the embedded
default too: the SQLite pool instead of pg_stat_activity, the filesystem
broker's folder instead of Redis lists, and no Redis figures at all.

A probe that fails is logged, counted (`metrics_health_probe_failures_total`)
and shown: `dependency_up` 0, and NaN for every figure it could not read.
NaN rather than removing the series: the gauges are `mostrecent` across
processes, and a series removed in one process would still show the value
another process (or a dead child's archived file) wrote last, healthy-looking.
NaN written now is the most recent value, and it is not a number any alert
threshold or dashboard mistakes for a real reading.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from sqlalchemy import Engine, text
from sqlalchemy.pool import QueuePool

from app.broker import check_broker, transport_options
from app.config import Settings
from app.db.session import check_database
from app.metrics import definitions as m
from panic_metrics_client.messages import PUBLISHED_AT_HEADER, QUEUES

#: The queues the worker consumes (the client's contract names them).
DEFAULT_QUEUES = QUEUES
# kombu's Redis transport keeps priorities 3, 6 and 9 in sub-lists named
# `<queue>\x06\x16<priority>`; priority 0 is the queue's own list.
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITIES = (3, 6, 9)
_TIMEOUT_SECONDS = 2.0
_CONNECTION_STATES = ("in_use", "idle")

log = logging.getLogger(__name__)


def _probe_failed(probe: str, exc: BaseException) -> None:
    # The error text may hold a URL: the logging filter masks its password.
    log.warning("health probe failed", extra={"probe": probe, "error": f"{type(exc).__name__}: {exc}"})


@dataclass(frozen=True)
class QueueStats:
    """Messages waiting in one queue and the age of the oldest (None: empty or unknown)."""

    messages: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class RedisStats:
    """What Redis says of itself."""

    address: str
    connected_clients: int
    used_memory_bytes: int
    keyspace_hit_ratio: float | None


@dataclass(frozen=True)
class HealthReport:
    """One health refresh's findings."""

    dependencies: dict[str, bool]
    database_connections: dict[str, int] | None = None
    redis: RedisStats | None = None
    #: Each queue asked about; None: it could not be measured.
    queues: dict[str, QueueStats | None] = field(default_factory=dict)
    #: host:port of the Redis asked (even when it did not answer), for the gauges' label.
    redis_address: str | None = None
    #: Probes that failed, besides dependencies that are down.
    failed_probes: tuple[str, ...] = ()
    #: What the broker and the database answered (`ok`, and the error when not).
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Every dependency answered."""
        return all(self.dependencies.values())

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {"status": "ok" if self.healthy else "degraded", **asdict(self)}


def database_connections(engine: Engine) -> dict[str, int] | None:
    """Connections to our database in use and idle; None if it cannot be asked."""
    if engine.dialect.name != "postgresql":
        # SQLite has no server: the pool of this process is all there is.
        pool = engine.pool
        if isinstance(pool, QueuePool):
            return {"in_use": pool.checkedout(), "idle": pool.checkedin()}
        return None
    query = text(
        "SELECT count(*) FILTER (WHERE state <> 'idle'), count(*) FILTER (WHERE state = 'idle') "
        "FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
    )
    try:
        with engine.connect() as connection:
            in_use, idle = connection.execute(query).one()
    except Exception as exc:  # noqa: BLE001 - reported as a failed probe
        _probe_failed("database_connections", exc)
        return None
    return {"in_use": int(in_use), "idle": int(idle)}


def _redis_client(url: str, ca_file: Path | None = None) -> redis.Redis[bytes]:
    # redis-py verifies a rediss:// server against the system's CAs; REDIS_TLS_CA_FILE names ours.
    # (A plain redis:// connection refuses TLS arguments, even None.)
    if ca_file is not None and url.startswith("rediss://"):
        return redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS, ssl_ca_certs=str(ca_file)
        )
    return redis.Redis.from_url(url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS)


def redis_address(url: str) -> str:
    """host:port of a Redis URL, never its password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "unparseable"


def redis_stats(url: str, ca_file: Path | None = None) -> RedisStats | None:
    """Clients, memory and keyspace hit ratio of the Redis at `url`; None if unreachable."""
    try:
        with _redis_client(url, ca_file) as client:
            info: Mapping[str, Any] = client.info()
    except Exception as exc:  # noqa: BLE001 - any failure (refused, auth, bad URL) means unreachable
        _probe_failed("redis", exc)
        return None
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    return RedisStats(
        address=redis_address(url),
        connected_clients=int(info.get("connected_clients", 0)),
        used_memory_bytes=int(info.get("used_memory", 0)),
        keyspace_hit_ratio=hits / (hits + misses) if hits + misses else None,
    )


def _published_age(raw: bytes | None, now: float) -> float | None:
    # The client and our before_task_publish handler stamp every message's headers with the publish time.
    try:
        stamp = json.loads(raw or b"null")["headers"][PUBLISHED_AT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, now - float(stamp)) if isinstance(stamp, int | float) else None


def _redis_queues(url: str, queues: tuple[str, ...], now: float, ca_file: Path | None) -> dict[str, QueueStats]:
    stats = {}
    with _redis_client(url, ca_file) as client:
        for queue in queues:
            keys = [queue, *(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{p}" for p in _REDIS_PRIORITIES)]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the oldest is last
            replies = pipe.execute()
            lengths, tails = replies[0::2], replies[1::2]
            ages = [age for tail in tails if (age := _published_age(tail, now)) is not None]
            stats[queue] = QueueStats(messages=sum(lengths), oldest_age_seconds=max(ages, default=None))
    return stats


def _filesystem_queues(folder: Path, queues: tuple[str, ...], now: float) -> dict[str, QueueStats]:
    # kombu names each message `<ms>_<uuid>.<queue>.msg`; its file's mtime is when it was sent.
    stats = {}
    for queue in queues:
        mtimes = []
        for path in folder.glob(f"*.{queue}.msg"):
            try:
                mtimes.append(path.stat().st_mtime)
            except FileNotFoundError:  # consumed while we looked
                continue
        age = max(0.0, now - min(mtimes)) if mtimes else None
        stats[queue] = QueueStats(messages=len(mtimes), oldest_age_seconds=age)
    return stats


def queue_stats(settings: Settings, queues: tuple[str, ...]) -> dict[str, QueueStats] | None:
    """Depth and oldest message age of each queue; None if the broker cannot be asked, empty if unsupported."""
    now = time.time()
    try:
        if settings.broker_url.startswith(("redis://", "rediss://")):
            return _redis_queues(settings.broker_url, queues, now, settings.redis_tls_ca_file)
        if settings.broker_url.startswith("filesystem://"):
            return _filesystem_queues(Path(transport_options(settings)["data_folder_in"]), queues, now)
    except Exception as exc:  # noqa: BLE001 - any failure means the queues cannot be measured now
        _probe_failed("queues", exc)
        return None
    return {}


def alertmanager_up(url: str) -> bool:
    """Whether Alertmanager answers its health check."""
    try:
        return httpx.get(f"{url.rstrip('/')}/-/healthy", timeout=_TIMEOUT_SECONDS).status_code == 200
    except Exception as exc:  # noqa: BLE001 - any failure (refused, timeout, bad URL) means down
        _probe_failed("alertmanager", exc)
        return False


def collect_health(*, settings: Settings, engine: Engine, queues: tuple[str, ...] = DEFAULT_QUEUES) -> HealthReport:
    """Ask every dependency how it is; never raises for one that is down."""
    checks = {"broker": check_broker(settings), "database": check_database(engine)}
    for name, check in checks.items():
        if not check["ok"]:
            log.warning("dependency down", extra={"dependency": name, "error": check.get("error")})
    dependencies = {name: bool(check["ok"]) for name, check in checks.items()}
    if settings.alertmanager_url:
        dependencies["alertmanager"] = alertmanager_up(settings.alertmanager_url)
    redis_url = settings.redis_url or (settings.broker_url if settings.broker_url.startswith("redis") else None)
    stats = redis_stats(redis_url, settings.redis_tls_ca_file) if redis_url else None
    if redis_url:
        dependencies["redis"] = stats is not None
    failed: list[str] = []
    connections = database_connections(engine) if dependencies["database"] else None
    if dependencies["database"] and connections is None and engine.dialect.name == "postgresql":
        failed.append("database_connections")
    found = queue_stats(settings, queues) if dependencies["broker"] else None
    if dependencies["broker"] and found is None:
        failed.append("queues")
    return HealthReport(
        dependencies=dependencies,
        database_connections=connections,
        redis=stats,
        queues=dict.fromkeys(queues) if found is None else dict(found),
        redis_address=redis_address(redis_url) if redis_url else None,
        failed_probes=tuple(failed),
        checks=checks,
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def set_health_gauges(report: HealthReport) -> None:
    """Show a report on the health gauges: what failed is 0 (dependencies) or NaN (figures), and counted."""
    for dependency, up in report.dependencies.items():
        m.DEPENDENCY_UP.labels(dependency=dependency).set(1 if up else 0)
        if not up:
            m.HEALTH_PROBE_FAILURES.labels(probe=dependency).inc()
    for probe in report.failed_probes:
        m.HEALTH_PROBE_FAILURES.labels(probe=probe).inc()
    connections = report.database_connections or {}
    for state in _CONNECTION_STATES:
        m.DATABASE_CONNECTIONS.labels(state=state).set(_or_nan(connections.get(state)))
    if report.redis_address is not None:
        stats, address = report.redis, report.redis_address
        clients, memory, ratio = (
            (None, None, None)
            if stats is None
            else (stats.connected_clients, stats.used_memory_bytes, stats.keyspace_hit_ratio)
        )
        m.REDIS_CONNECTED_CLIENTS.labels(address=address).set(_or_nan(clients))
        m.REDIS_MEMORY_USED.labels(address=address).set(_or_nan(memory))
        m.REDIS_KEYSPACE_HIT_RATIO.labels(address=address).set(_or_nan(ratio))
    for queue, queued in report.queues.items():
        m.QUEUE_LENGTH.labels(queue=queue).set(math.nan if queued is None else queued.messages)
        age = None if queued is None else 0 if queued.messages == 0 else queued.oldest_age_seconds
        m.QUEUE_OLDEST_AGE.labels(queue=queue).set(_or_nan(age))
    # Only the host that wins an interval's claim refreshes, so the others show
    # older queue depths; this mark, set last, tells Prometheus which host's
    # are newest (the `queue:*:newest` rules). The host's clock, not the
    # database's: the refresh must run when the database is down.
    m.JOB_GAUGES_COMPUTED.labels(scheduled_job="refresh_health_metrics").set(time.time())
