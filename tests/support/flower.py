"""A real Flower on the test broker, for the tests that read what operators see."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import free_port, wait_until


@contextmanager
def running_flower(
    broker_url: str,
    log_path: Path,
    *,
    fresh_env: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[str]:
    """Start `celery flower` on `broker_url`, yield its API's base URL once it answers, stop it after.

    With `fresh_env`, the README's command in an operator's fresh shell: `celery` found on
    its PATH, that environment alone, `auth` as FLOWER_BASIC_AUTH. Otherwise the test's
    environment with the API open.
    """
    port = free_port()
    options = ["-A", "workers.celery_app", "flower", "--address=127.0.0.1", f"--port={port}"]
    if fresh_env is None:
        argv, env = [sys.executable, "-m", "celery", *options], {"FLOWER_UNAUTHENTICATED_API": "true"}
    else:
        argv, env = ["celery", *options], dict(fresh_env)
    env["BROKER_URL"] = broker_url
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = ":".join(auth)
    flower = LoggedProcess(argv, env, log_path, inherit=fresh_env is None, cwd=cwd)
    flower.start_process()
    try:
        api = f"http://127.0.0.1:{port}/api"

        def answers() -> bool:
            if flower.process is not None and flower.process.poll() is not None:
                raise RuntimeError(f"flower exited; log:\n{flower.log()[-4000:]}")
            try:
                return httpx.get(f"{api}/workers", timeout=5, auth=auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=60, what="Flower's API")
        yield api
    finally:
        flower.stop()
