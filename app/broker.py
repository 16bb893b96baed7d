"""How to reach the broker: transport options per transport, and a reachability check."""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS

from app.config import Settings, get_settings
from panic_metrics_client.transport import filesystem_options

log = logging.getLogger(__name__)


def transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker."""
    if settings.broker_url.startswith("filesystem://"):
        return filesystem_options(settings.broker_folder)
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


# Messages popped from a queue whose unacknowledged record could not be
# written (see _RedisQoS.append): held by this process until a channel can
# push them back. A list shared by every channel, because the channel that
# popped them is discarded when Celery reconnects.
_UNRECORDED: list[tuple[Any, str, str]] = []


class _RedisQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        # kombu fetches with BRPOP, then writes the message into the unacked
        # hash in a second round trip. If Redis goes away between the two (a
        # restart while messages flow: seen in the fault suite), the message is
        # gone from the queue, not in the unacked hash, and never handed to
        # Celery: lost. Keep it here and push it back once Redis answers again.
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        try:
            super().append(message, delivery_tag)
        except channel.connection_errors:
            delivery = message.delivery_info
            _UNRECORDED.append((message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning("a message was fetched but not recorded as unacknowledged: kept to push back")
            raise

    def ack(self, delivery_tag: str) -> None:
        # A task that finishes after its connection was lost (a Redis restart)
        # is acknowledged on the old, closed channel; kombu then raises
        # AttributeError from `_connparams`, which is not a connection error,
        # and the worker dies ("Unrecoverable error", seen in fault 4). The
        # message stays in Redis's unacked index: the restore scan hands it
        # back after the visibility timeout, and its events are stored once.
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        if channel.connection is None:
            log.warning("acknowledgement left to the visibility timeout: the channel's connection is closed")
            VirtualQoS.ack(self, delivery_tag)  # forget it in this process only: no Redis call
            return
        super().ack(delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        # Called at connect and every restore interval on the live connection.
        self._push_back_unrecorded()
        return super().restore_visible(*args, **kwargs)

    def _push_back_unrecorded(self) -> None:
        channel: Any = self.channel  # kombu's Redis channel (typed as the virtual one)
        while _UNRECORDED:
            payload, exchange, routing_key = _UNRECORDED[0]
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost=True)
                pipe.execute()  # a connection error leaves it in the list for the next call
            _UNRECORDED.pop(0)
            log.warning("a message fetched but not recorded before a broker loss was pushed back")

    def restore_unacked(self, client: Any = None) -> Any:
        # kombu restores a channel's unacknowledged messages when it closes it.
        # After a broker loss Celery closes a connection whose transport has
        # already dropped its client; kombu then raises AttributeError from
        # `_connparams`, which `Connection.maybe_close_channel` does not
        # ignore, and the worker dies with "Unrecoverable error" instead of
        # reconnecting. The messages stay in Redis's unacked index, and the
        # restore scan hands them back after the visibility timeout.
        if client is None and self.channel.connection.client is None:
            log.warning("unacknowledged messages left to the visibility timeout: the connection is already closed")
            return None
        return super().restore_unacked(client)


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, surviving the close of a connection lost to a Redis restart."""

    Channel = _RedisChannel


def use_robust_redis_transport() -> None:
    """Make `redis://` and `rediss://` URLs use RedisTransport in this process.

    kombu picks the transport class from the URL's scheme through this table,
    overriding Celery's `broker_transport`; the table is the one hook.
    """
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:RedisTransport"
