"""Publishing task messages with kombu alone, each attempt bounded by the send timeout."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from kombu import Connection
from kombu.transport import resolve_transport

from panic_metrics_client.filesystem_transport import use_whole_message_filesystem_transport
from panic_metrics_client.messages import EVENTS_QUEUE, Message, body, headers
from panic_metrics_client.settings import ClientSettings

# Every process that publishes or consumes through the embedded broker imports this module (the
# client, the worker, the commands): each then writes whole messages only.
use_whole_message_filesystem_transport()


def filesystem_options(folder: Path) -> dict[str, Any]:
    """kombu filesystem transport options for a broker folder, shared by the worker (BROKER_FOLDER) and the client."""
    folder = folder.resolve()
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def transport_options(settings: ClientSettings) -> dict[str, Any]:
    """kombu transport options that bound every broker operation of the sender."""
    if settings.is_filesystem:
        return filesystem_options(settings.broker_folder)
    seconds = settings.send_timeout_ms / 1000
    return {
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "max_retries": 0,
        # One attempt per publish: the sender owns the retry schedule (and the spool).
        "retry_policy": {"max_retries": 0},
    }


class Publisher:
    """One broker connection, reopened after a failure; `publish` raises on any failure."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._connection: Connection | None = None
        self._producer: Any = None
        # The transport and its client library are imported now, not at the first publish: a
        # one-shot script's first publish happens at interpreter exit, when an import that
        # registers an exit hook (redis-py's does, through concurrent.futures) is refused.
        resolve_transport(Connection(settings.broker_url).transport_cls)

    def _producer_for_use(self) -> Any:
        if self._producer is None:
            self._connection = Connection(
                self.settings.broker_url,
                transport_options=transport_options(self.settings),
                connect_timeout=self.settings.send_timeout_ms / 1000,
            )
            self._producer = self._connection.Producer(serializer="json")
        return self._producer

    def publish(self, message: Message, *, retries: int = 0) -> float:
        """Send one message straight to the worker's `events` queue; return how long it took."""
        started = time.perf_counter()
        try:
            # The default exchange routes by queue name, so no binding must exist in
            # the broker first (a Redis restarted empty has none until the worker's).
            self._producer_for_use().publish(
                body(message),
                exchange="",
                routing_key=EVENTS_QUEUE,
                headers=headers(message, retries=retries),
                correlation_id=message.task_id,
                # Already JSON: kombu sends it as it is instead of serialising objects again.
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                retry=False,
            )
        except BaseException:
            self.reset()
            raise
        return time.perf_counter() - started

    def reset(self) -> None:
        """Drop the connection; the next publish opens a new one."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            # A broken connection may fail to close; it is dropped anyway.
            with contextlib.suppress(Exception):
                connection.release()

    def forget_after_fork(self) -> None:
        """In a forked child the parent's sockets stay the parent's: never use nor close them."""
        self._connection = None
        self._producer = None
