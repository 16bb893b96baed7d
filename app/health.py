"""The health refresh: dependencies, database connections, Redis, Celery queue depths.

`collect_health` reads, `set_health_gauges` shows; neither raises for a
dependency that is down: that is what they report. Works on the embedded
default too: the SQLite pool instead of pg_stat_activity, the filesystem
broker's folder instead of Redis lists, and no Redis figures at all.
"""

from __future__ import annotations

import json
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

#: The queues workers/celery_app.py declares (app/ does not import Celery).
DEFAULT_QUEUES = ("events", "scheduled")
# kombu's Redis transport keeps priorities 3, 6 and 9 in sub-lists named
# `<queue>\x06\x16<priority>`; priority 0 is the queue's own list.
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITIES = (3, 6, 9)
_TIMEOUT_SECONDS = 2.0


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
    queues: dict[str, QueueStats] = field(default_factory=dict)

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
    except Exception:  # noqa: BLE001 - reported by dependency_up
        return None
    return {"in_use": int(in_use), "idle": int(idle)}


def _redis_client(url: str) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS)


def redis_stats(url: str) -> RedisStats | None:
    """Clients, memory and keyspace hit ratio of the Redis at `url`; None if unreachable."""
    try:
        with _redis_client(url) as client:
            info: Mapping[str, Any] = client.info()
    except redis.RedisError:
        return None
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    parts = urlsplit(url)  # host and port only: the URL may hold a password
    return RedisStats(
        address=f"{parts.hostname}:{parts.port or 6379}",
        connected_clients=int(info.get("connected_clients", 0)),
        used_memory_bytes=int(info.get("used_memory", 0)),
        keyspace_hit_ratio=hits / (hits + misses) if hits + misses else None,
    )


def _published_age(raw: bytes | None, now: float) -> float | None:
    # Our before_task_publish handler stamps `published_at` in every message's headers.
    try:
        stamp = json.loads(raw or b"null")["headers"]["published_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, now - float(stamp)) if isinstance(stamp, int | float) else None


def _redis_queues(url: str, queues: tuple[str, ...], now: float) -> dict[str, QueueStats]:
    stats = {}
    with _redis_client(url) as client:
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


def queue_stats(settings: Settings, queues: tuple[str, ...]) -> dict[str, QueueStats]:
    """Depth and oldest message age of each queue; empty if the broker cannot be asked."""
    now = time.time()
    try:
        if settings.broker_url.startswith(("redis://", "rediss://")):
            return _redis_queues(settings.broker_url, queues, now)
        if settings.broker_url.startswith("filesystem://"):
            return _filesystem_queues(Path(transport_options(settings)["data_folder_in"]), queues, now)
    except (redis.RedisError, OSError):
        pass
    return {}


def alertmanager_up(url: str) -> bool:
    """Whether Alertmanager answers its health check."""
    try:
        return httpx.get(f"{url.rstrip('/')}/-/healthy", timeout=_TIMEOUT_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


def collect_health(*, settings: Settings, engine: Engine, queues: tuple[str, ...] = DEFAULT_QUEUES) -> HealthReport:
    """Ask every dependency how it is; never raises for one that is down."""
    dependencies = {"broker": bool(check_broker(settings)["ok"]), "database": bool(check_database(engine)["ok"])}
    if settings.alertmanager_url:
        dependencies["alertmanager"] = alertmanager_up(settings.alertmanager_url)
    redis_url = settings.redis_url or (settings.broker_url if settings.broker_url.startswith("redis") else None)
    return HealthReport(
        dependencies=dependencies,
        database_connections=database_connections(engine) if dependencies["database"] else None,
        redis=redis_stats(redis_url) if redis_url else None,
        queues=queue_stats(settings, queues) if dependencies["broker"] else {},
    )


def set_health_gauges(report: HealthReport) -> None:
    """Show a report on the health gauges."""
    for dependency, up in report.dependencies.items():
        m.DEPENDENCY_UP.labels(dependency=dependency).set(1 if up else 0)
    for state, count in (report.database_connections or {}).items():
        m.DATABASE_CONNECTIONS.labels(state=state).set(count)
    if report.redis is not None:
        address = report.redis.address
        m.REDIS_CONNECTED_CLIENTS.labels(address=address).set(report.redis.connected_clients)
        m.REDIS_MEMORY_USED.labels(address=address).set(report.redis.used_memory_bytes)
        if report.redis.keyspace_hit_ratio is not None:
            m.REDIS_KEYSPACE_HIT_RATIO.labels(address=address).set(report.redis.keyspace_hit_ratio)
    for queue, stats in report.queues.items():
        m.QUEUE_LENGTH.labels(queue=queue).set(stats.messages)
        if stats.messages == 0:
            m.QUEUE_OLDEST_AGE.labels(queue=queue).set(0)
        elif stats.oldest_age_seconds is not None:
            m.QUEUE_OLDEST_AGE.labels(queue=queue).set(stats.oldest_age_seconds)
