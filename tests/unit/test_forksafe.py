"""Forks wait for the main process's background work: a child never inherits a half-done import or lock.

The scenario is the one a real worker hit: one thread is importing a module
when the main thread forks, and the child then imports the same module. Each
case runs in a subprocess of its own, with the fork point fixed by files, not
by timing: the importing thread is known to be inside the import before the
fork starts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from app import forksafe
from app.metrics.housekeeping import Housekeeper

ROOT = Path(__file__).resolve().parents[2]

# A module whose import blocks until a file appears, so the fork lands inside it.
SLOW_MODULE = """
import os, time
open(os.environ["STARTED"], "w").close()
while not os.path.exists(os.environ["RELEASE"]):
    time.sleep(0.01)
"""

SCENARIO = """
import os, sys, threading, time
from app import forksafe
forksafe.FORK_WAIT_SECONDS = float(os.environ.get("FORK_WAIT", "10"))
mode = sys.argv[1]

def importer():
    if mode == "gated":
        with forksafe.unit():
            import slowmod
    else:
        import slowmod

threading.Thread(target=importer, daemon=True).start()
while not os.path.exists(os.environ["STARTED"]):
    time.sleep(0.01)
# Released from another thread a little after the fork begins: only a fork
# that waits for the unit sees the import finished.
threading.Timer(0.3, lambda: open(os.environ["RELEASE"], "w").close()).start()
pid = os.fork()
if pid == 0:
    import slowmod  # blocks for ever on the module lock if the import was copied half-done
    os._exit(0)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child finished" if os.waitstatus_to_exitcode(status) == 0 else "child failed")
        sys.exit(0)
    time.sleep(0.05)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("child deadlocked")
"""


def run_scenario(tmp_path: Path, mode: str) -> str:
    (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
    env = {
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "STARTED": str(tmp_path / "started"),
        "RELEASE": str(tmp_path / "release"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCENARIO), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_a_fork_during_another_threads_import_deadlocks_the_child(tmp_path: Path) -> None:
    """The failure the gate exists for, reproduced: without it the child waits on the import for ever."""
    assert run_scenario(tmp_path, "ungated") == "child deadlocked"


def test_a_fork_waits_for_the_unit_so_the_child_imports_at_once(tmp_path: Path) -> None:
    assert run_scenario(tmp_path, "gated") == "child finished"


FORK_INSIDE_OWN_UNIT = """
import os, sys, threading
from app import forksafe
forksafe.FORK_WAIT_SECONDS = 0.5
stuck = threading.Event()

def hold_for_ever():
    with forksafe.unit():
        stuck.set()
        threading.Event().wait()

threading.Thread(target=hold_for_ever, daemon=True).start()
stuck.wait()
with forksafe.unit():  # the forking thread's own unit is not waited for
    pid = os.fork()
    if pid == 0:
        os._exit(0 if forksafe.running_units() == 1 else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), forksafe.running_units())
"""


def test_a_stuck_unit_delays_a_fork_by_the_bound_only_and_the_child_counts_its_own_units() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_INSIDE_OWN_UNIT)],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The child has only the forking thread, in one unit; the parent still has the stuck one.
    assert result.stdout.split() == ["0", "1"]
    assert "forking while another thread is still working" in result.stderr


def test_the_compactor_works_inside_a_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[int] = []
    keeper = Housekeeper(tmp_path, interval_seconds=0.01)

    def record() -> None:
        seen.append(forksafe.running_units())

    monkeypatch.setattr(keeper, "compact_now", record)
    keeper.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper.stop()
    assert seen
    assert min(seen) >= 1


def test_every_endpoint_request_is_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.http import server

    seen: list[int] = []

    def scrape(_keeper: object, _accept: str | None = None) -> tuple[bytes, str]:
        seen.append(forksafe.running_units())
        return b"", "text/plain; version=0.0.4; charset=utf-8"

    monkeypatch.setattr(server, "scrape", scrape)

    async def get_metrics() -> int:
        transport = httpx.ASGITransport(app=server.create_api())
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
            return (await client.get("/metrics")).status_code

    assert asyncio.run(get_metrics()) == 200
    assert seen == [1]
    assert forksafe.running_units() == 0


def test_a_pending_fork_lets_running_units_finish_and_holds_new_ones_in_threads() -> None:
    """Writer preference: a thread's new unit waits for a pending fork; an event loop's does not."""
    gate = forksafe.ForkGate()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def long_unit() -> None:
        with gate.unit():
            inside.set()
            release.wait()
            order.append("long unit ends")

    def forker() -> None:
        gate.before_fork()
        order.append("fork")
        gate.after_fork_in_parent()

    def late_unit() -> None:
        with gate.unit():
            order.append("late unit")

    threading.Thread(target=long_unit).start()
    inside.wait()
    fork = threading.Thread(target=forker)
    fork.start()
    while not gate.fork_pending:
        time.sleep(0.001)
    late = threading.Thread(target=late_unit)
    late.start()
    with gate.unit(yield_to_fork=False):
        order.append("loop unit")
    release.set()
    fork.join(5)
    late.join(5)
    assert order == ["loop unit", "long unit ends", "fork", "late unit"]
