"""A real Flower on the test broker, for the tests that read what operators see."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.processes import LoggedProcess
from tests.support.services import free_port, wait_until


@contextmanager
def running_flower(broker_url: str, log_path: Path) -> Iterator[str]:
    """Start `celery flower` on `broker_url`, yield its API's base URL once it answers, stop it after."""
    port = free_port()
    flower = LoggedProcess(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}", "--address=127.0.0.1"],
        {"BROKER_URL": broker_url, "FLOWER_UNAUTHENTICATED_API": "true"},
        log_path,
    )
    flower.start_process()
    try:
        api = f"http://127.0.0.1:{port}/api"

        def answers() -> bool:
            try:
                return httpx.get(f"{api}/workers", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=60, what="Flower's API")
        yield api
    finally:
        flower.stop()
