"""The settings and pieces that delivery guarantees rest on: start checks, the delivery cap,
the pool's death-safe lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import quarantine
from app.config import Settings, get_settings
from tests.support.services import wait_until
from tests.support.worker import ROOT
from workers.celery_app import GUARANTEES, app, weakened_guarantees
from workers.pool import ProcessDeathSafeLock


@given(visibility=st.integers(min_value=1, max_value=100_000), backoff=st.integers(min_value=1, max_value=100_000))
def test_visibility_timeout_must_exceed_the_longest_retry_countdown_on_redis(visibility: int, backoff: int) -> None:
    """On Redis, a visibility timeout not above the retry backoff cap is refused; above it is accepted."""
    values = {
        "broker_url": "redis://127.0.0.1:6379/0",
        "broker_visibility_timeout_seconds": visibility,
        "task_retry_backoff_max_seconds": backoff,
    }
    if visibility > backoff:
        assert Settings(_env_file=None, **values).broker_visibility_timeout_seconds == visibility  # type: ignore[call-arg]
    else:
        with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT_SECONDS"):
            Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_worker_start_refuses_visibility_below_backoff_with_one_line_naming_both() -> None:
    """The refusal is one line naming both variables."""
    env = {
        **os.environ,
        "BROKER_URL": "redis://127.0.0.1:1/0",
        "BROKER_VISIBILITY_TIMEOUT_SECONDS": "60",
        "TASK_RETRY_BACKOFF_MAX_SECONDS": "600",
    }
    code = "from app.config import load_settings; load_settings()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert "BROKER_VISIBILITY_TIMEOUT_SECONDS" in line
    assert "TASK_RETRY_BACKOFF_MAX_SECONDS" in line


def test_hard_time_limit_must_exceed_the_soft_one() -> None:
    """A hard limit at or below the soft one would kill a child before it can set its payloads aside."""
    with pytest.raises(ValueError, match="TASK_TIME_LIMIT_SECONDS"):
        Settings(_env_file=None, task_soft_time_limit_seconds=60, task_time_limit_seconds=60)  # type: ignore[call-arg]


def test_guarantee_settings_are_the_defaults() -> None:
    """acks_late, reject_on_worker_lost, cancel on connection loss and JSON only are what the app runs with."""
    assert weakened_guarantees(app.conf) == []
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit


@pytest.mark.parametrize("name", sorted(GUARANTEES))
def test_a_weakened_guarantee_is_named(name: str) -> None:
    """Changing any guarantee setting is reported by name."""
    conf = {**{key: app.conf.get(key) for key in GUARANTEES}, name: "weakened"}
    (problem,) = weakened_guarantees(conf)
    assert problem.startswith(f"{name}=")


def test_deliveries_are_counted_until_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each delivery of a message adds one; a finished message starts again from zero."""
    monkeypatch.setenv("QUARANTINE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert [quarantine.record_delivery("task/../x.0") for _ in range(3)] == [1, 2, 3]
        assert all(path.parent == tmp_path / "deliveries" for path in tmp_path.rglob("*") if path.is_file())
        quarantine.forget_delivery("task/../x.0")
        assert quarantine.record_delivery("task/../x.0") == 1
    finally:
        get_settings.cache_clear()


def test_pool_lock_is_released_when_its_holder_is_killed() -> None:
    """A child SIGKILLed while holding the pool's lock does not leave it taken (a semaphore would)."""
    lock = ProcessDeathSafeLock()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take the lock, say so, wait to be killed
        lock.acquire()
        os.write(write, b"x")
        signal.pause()
        os._exit(0)
    try:
        assert os.read(read, 1) == b"x"
        assert not lock.acquire(timeout=0.2), "the child holds the lock"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        wait_until(lambda: lock.acquire(block=False), timeout=5, what="the dead child's lock released")
        lock.release()
    finally:
        os.close(read)
        os.close(write)
