"""The process-wide client that the module-level functions use, made on first use from the environment."""

from __future__ import annotations

import threading
from typing import Any

from panic_metrics_client.client import Client
from panic_metrics_client.settings import ClientSettings

_client: Client | None = None
_lock = threading.Lock()


def get_client() -> Client:
    """The process's client (settings from `PANIC_METRICS_*`), created on first use."""
    global _client  # noqa: PLW0603 - one client per process, like a logging handler
    client = _client
    if client is None:
        with _lock:
            if _client is None:
                _client = Client()
                _client.start()  # resends what earlier processes left in the spool
            client = _client
    return client


def configure(*, registry: Any = None, metrics: bool = True, **settings: Any) -> Client:
    """Replace the process's client: settings from the environment, then these; returns it.

    Call it once at start-up (e.g. `configure(mode="development")`); a previous
    client is closed first, so what it held is sent or spooled.
    """
    global _client
    with _lock:
        previous, _client = _client, Client(ClientSettings.from_env(**settings), registry=registry, metrics=metrics)
        client = _client
    if previous is not None:
        previous.close()
    client.start()
    return client
