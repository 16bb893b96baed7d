"""How to reach the broker: transport options per transport, and a reachability check."""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

from kombu import Connection

from app.config import Settings, get_settings
from panic_metrics_client.transport import filesystem_options

log = logging.getLogger(__name__)

FILESYSTEM_POLLING_SECONDS = 0.02


def transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker."""
    if settings.broker_url.startswith("filesystem://"):
        # kombu polls the folder, and sleeps its polling interval (1 s by default) whenever
        # a poll finds nothing it may take, including when the prefetch window is full: with
        # acks_late that is after every few messages, which held the embedded default to
        # ~17 events/s. A 20 ms poll lists a small folder; it costs little when idle.
        return {**filesystem_options(settings.broker_folder), "polling_interval": FILESYSTEM_POLLING_SECONDS}
    return {
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        # kombu scans for unacknowledged messages past their visibility timeout
        # (a dead worker's) every interval x throttle seconds; throttle 1 makes
        # the interval the one knob.
        "unacked_restore_interval": settings.broker_unacked_restore_interval_seconds,
        "unacked_restore_throttle": 1,
        # Only one worker scans at a time, under a mutex in Redis; a worker
        # killed mid-scan holds it until it expires (kombu: 300 s), and no one
        # restores anything meanwhile. A scan takes milliseconds.
        "unacked_mutex_expire": max(10, 3 * settings.broker_unacked_restore_interval_seconds),
        # kombu sets no socket timeout: a broker that stops answering without
        # closing would hold an acknowledgement, or a publish, for ever.
        "socket_timeout": settings.broker_socket_timeout_seconds,
        "socket_connect_timeout": settings.broker_socket_timeout_seconds,
    }


def redis_ssl_options(settings: Settings) -> dict[str, Any] | None:
    """TLS options for a rediss:// broker (Celery's `broker_use_ssl`): the server's certificate is always verified.

    Given a rediss:// URL and no options, kombu connects with
    `ssl_cert_reqs=CERT_NONE`: encrypted, but to whoever answers.
    """
    if not settings.broker_url.startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


def check_broker(settings: Settings | None = None) -> dict[str, Any]:
    """Whether the broker answers, and how fast; never raises."""
    settings = settings or get_settings()
    started = time.perf_counter()
    if settings.broker_url.startswith("filesystem://"):
        # The embedded broker is a local folder: reachable means writable.
        folder = Path(transport_options(settings)["data_folder_in"])
        if not os.access(folder, os.W_OK):
            return {"ok": False, "error": "broker folder not writable"}
        return {"ok": True, "latency_seconds": round(time.perf_counter() - started, 4)}
    try:
        with Connection(
            settings.broker_url, ssl=redis_ssl_options(settings) or False, transport_options=transport_options(settings)
        ) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; the reason is reported
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_seconds": round(time.perf_counter() - started, 4)}
