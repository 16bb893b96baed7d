"""Metric files on a full disk: space reserved before use, so a full filesystem is an error handled, never a SIGBUS."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector

from panic_metrics_client import metric_files
from tests.client.test_client import delivered_event_ids
from tests.support.disk import SmallTmpfs, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallTmpfs]:
    """A 1 MiB tmpfs of this test's own, unmounted at the end."""
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def run_python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter: a SIGBUS there is a return code here (-7), not the end of pytest."""
    environment = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_grown_file_has_every_block_it_maps(tmp_path: Path) -> None:
    """A file made and grown by the value class is not sparse: allocated blocks cover its whole size."""
    value_class = metric_files.reserved_value_class()
    registry = CollectorRegistry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metric_files.MULTIPROC_DIR_VARIABLE, str(tmp_path))
        patch.setattr(values, "ValueClass", value_class)
        counter = Counter("grown_total", "Grows the file past its first size.", ["zone"], registry=registry)
        for i in range(2_000):
            counter.labels(zone=f"zone-{i:05d}").inc()
    try:
        (file,) = tmp_path.glob("counter_*.db")
        stat = file.stat()
        assert stat.st_size > metric_files.INITIAL_FILE_SIZE  # it grew
        assert stat.st_blocks * 512 >= stat.st_size
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(tmp_path))
        assert merged.get_sample_value("grown_total", {"zone": "zone-01999"}) == 1.0
    finally:
        value_class.close_all_files()  # type: ignore[attr-defined]


# Values made with space, then the disk fills and the file must grow, then space returns.
FULL_THEN_FREED = """
import json, os, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector
from panic_metrics_client import metric_files

disk = Path(sys.argv[1])
values.ValueClass = metric_files.reserved_value_class()
counter = Counter("disk_events_total", "Events.", ["zone"], registry=CollectorRegistry())
counter.labels(zone="first").inc()
fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"\\0" * 4096)
except OSError:
    os.close(fd)
for i in range(2_000):  # past the file's reserved 64 KiB: growth on a full disk
    counter.labels(zone=f"zone-{i:05d}").inc()
full = metric_files.status()
os.unlink(disk / "filler")
counter.labels(zone="first").inc()  # space is back: this write also writes every value that waited
after = metric_files.status()
merged = CollectorRegistry()
MultiProcessCollector(merged, path=str(disk))
(file,) = disk.glob("counter_*.db")
print(json.dumps({
    "full": [full.failed_writes, full.waiting],
    "after": [after.failed_writes, after.waiting],
    "first": merged.get_sample_value("disk_events_total", {"zone": "first"}),
    "last": merged.get_sample_value("disk_events_total", {"zone": "zone-01999"}),
    "blocks": file.stat().st_blocks * 512 >= file.stat().st_size,
}))
"""


@pytest.mark.integration
def test_growth_on_a_full_disk_waits_in_memory_and_is_written_when_space_returns(disk: SmallTmpfs) -> None:
    """ENOSPC while growing a file is counted, not a SIGBUS; once space returns every value reaches the file."""
    done = run_python(FULL_THEN_FREED, str(disk.path), PROMETHEUS_MULTIPROC_DIR=str(disk.path))
    assert done.returncode == 0, (done.returncode, done.stderr)
    report = json.loads(done.stdout)
    failed, waiting = report["full"]
    assert failed > 0
    assert waiting > 0
    assert report["after"] == [failed, 0]
    assert report["first"] == 2.0
    assert report["last"] == 1.0
    assert report["blocks"]
    assert "metric files are full" in done.stderr  # logged once, not once per write
    assert done.stderr.count("metric files are full") == 1


@pytest.mark.integration
def test_a_file_that_cannot_be_made_leaves_nothing_a_scrape_would_trip_on(disk: SmallTmpfs) -> None:
    """On a disk already full, no metric file is left behind (an empty one is not a file a reader can parse)."""
    disk.fill()
    script = """
from prometheus_client import CollectorRegistry, Counter, values
from panic_metrics_client import metric_files
values.ValueClass = metric_files.reserved_value_class()
Counter("never_total", "Never written.", registry=CollectorRegistry()).inc()
print(metric_files.status().waiting)
"""
    done = run_python(script, PROMETHEUS_MULTIPROC_DIR=str(disk.path))
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == "1"
    assert not list(disk.path.glob("*.db"))


# A web process: the client with prometheus_client, its metrics directory given; records
# panic requests through the seed's `.delay()`, flushes, prints its ids and the client's stats.
WEB_PROCESS = """
import json, sys
from panic_metrics_client import flush, get_client, record_panic_request_metrics
ids = [
    str(record_panic_request_metrics.delay(
        service_type="security", status="accepted", firm_id="firm123", zone=sys.argv[1], response_time=180.5
    ))
    for _ in range(int(sys.argv[2]))
]
print(json.dumps({"flushed": flush(30), "ids": ids, "stats": get_client().stats()}), flush=True)
"""


def web_process(tmp_path: Path, multiproc_dir: Path, count: int) -> tuple[int, dict[str, Any], str]:
    done = run_python(
        WEB_PROCESS,
        f"z{uuid.uuid4().hex[:8]}",
        str(count),
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        PANIC_METRICS_BROKER_URL="filesystem://",
        PANIC_METRICS_BROKER_FOLDER=str(tmp_path / "broker"),
        PANIC_METRICS_SPOOL_DIR=str(tmp_path / "spool"),
        PANIC_METRICS_MODE="development",
    )
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else {}, done.stderr


@pytest.mark.integration
def test_a_web_process_on_a_full_metrics_disk_lives_and_its_events_reach_the_broker(
    tmp_path: Path, disk: SmallTmpfs
) -> None:
    """Full metrics disk: the process exits 0 (not 135, SIGBUS), every event is on the broker; freed, metrics work."""
    disk.fill()
    returncode, report, stderr = web_process(tmp_path, disk.path, 20)
    assert returncode == 0, (returncode, stderr)
    assert report["flushed"]
    assert report["stats"]["metric_writes_failed"] > 0
    assert report["stats"]["sent"] == 20
    assert sorted(delivered_event_ids(tmp_path / "broker")) == sorted(report["ids"])
    assert stderr.count("metric files are full") == 1

    disk.free()
    returncode, report, stderr = web_process(tmp_path, disk.path, 5)
    assert returncode == 0, (returncode, stderr)
    assert report["stats"]["metric_writes_failed"] == 0
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(disk.path))
    # The first process's files never existed; the second's hold its own five sends.
    assert merged.get_sample_value("panic_metrics_client_events_total", {"outcome": "sent"}) == 5.0
    for file in disk.path.glob("*.db"):
        assert file.stat().st_blocks * 512 >= file.stat().st_size


def test_importing_the_client_selects_the_reserved_value_class(tmp_path: Path) -> None:
    """With the directory set before Python starts, the client's import swaps in its value class before any metric."""
    script = """
from prometheus_client import values
import panic_metrics_client
print(getattr(values.ValueClass, "_reserved", False))
"""
    done = run_python(script, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_forked_child_writes_its_own_file_from_zero(tmp_path: Path) -> None:
    """As with the library's class: after a fork the child's values start from its own file, the parent's stay."""
    script = """
import os
from prometheus_client import CollectorRegistry, Counter, values
from panic_metrics_client import metric_files
values.ValueClass = metric_files.reserved_value_class()
counter = Counter("forked_total", "Forked.", registry=CollectorRegistry())
counter.inc(3)
pid = os.fork()
if pid == 0:
    counter.inc()
    os._exit(0 if counter._value.get() == 1.0 else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), counter._value.get())
"""
    done = run_python(script, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "3.0"]
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(tmp_path))
    assert merged.get_sample_value("forked_total") == 4.0
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
