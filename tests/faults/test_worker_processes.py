"""Faults of the worker's own processes: pool children killed, the whole worker killed, SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.conftest import VISIBILITY_TIMEOUT, Stream, WorkerStarter
from tests.support.services import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KILL_ROUNDS = 4


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_pool_children_killed_repeatedly_lose_nothing_and_consuming_resumes(
    broker: str, start_fault_worker: WorkerStarter, request: pytest.FixtureRequest
) -> None:
    """1. Pool children SIGKILLed again and again while events flow: every event stored once, consuming goes on."""
    env, stream = request.getfixturevalue(f"{broker}_stream")
    worker = start_fault_worker(env)
    stream.publish_many(120)
    for _ in range(KILL_ROUNDS):
        # Kill only after progress since the last kill: each round hits
        # children that took work (or wait for it) from the pool's pipe.
        before = stream.stored()
        stream.wait_stored(before + 5, timeout=60, what="progress before the next kill")
        for pid in worker.children():
            os.kill(pid, signal.SIGKILL)
        stream.publish_many(10)
    stream.assert_complete()
