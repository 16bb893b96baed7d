"""Pending records of dead processes: the compactor lands them exactly, drops rolled-back ones, waits when unsure."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import Counter, Histogram

from app.metrics import pending
from app.metrics.multiproc import collect_registry, compact

ROOT = Path(__file__).resolve().parents[2]

# A child that counts 0.1 + 0.2 (applied), then writes the record of a batch
# adding 0.3 and 1 bucket hit, and dies before applying it.
CHILD = textwrap.dedent(
    """
    import os, sys, uuid
    from pathlib import Path
    import app.metrics  # takes the lease
    from prometheus_client import Counter, Histogram
    from app.metrics import pending
    amount = Counter("credits", "Credits.", ["type"]).labels("purchase")
    lag = Histogram("lag_seconds", "Lag.", buckets=(0.25, 1.0))
    amount.inc(0.1); amount.inc(0.2); lag.observe(0.2)
    tally = pending.Tally()
    tally.inc(amount, 0.3)
    tally.observe(lag, 0.5)
    pending.write(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), token=uuid.UUID(sys.argv[1]),
                  expected_rows=1, targets=tally.targets())
    os._exit(0)
    """
)


def dead_child_with_record(directory: Path) -> uuid.UUID:
    token = uuid.uuid4()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", CHILD, str(token)], env=env, check=True, timeout=120)
    return token


def credits(directory: Path) -> float | None:
    return collect_registry(directory).get_sample_value("credits_total", {"type": "purchase"})


def test_committed_record_of_a_dead_child_lands_exactly_on_its_targets(tmp_path: Path) -> None:
    """The targets are the values the increments would have reached, bit for bit."""
    token = dead_child_with_record(tmp_path)
    asked: list[uuid.UUID] = []

    report = compact(tmp_path, resolve=lambda t, _n: asked.append(t) or True)

    assert asked == [token]
    assert report.resolved_records == (1, 0)
    assert len(report.merged_pids) == 1
    assert credits(tmp_path) == (0.1 + 0.2) + 0.3
    registry = collect_registry(tmp_path)
    assert registry.get_sample_value("lag_seconds_bucket", {"le": "1.0"}) == 2
    assert registry.get_sample_value("lag_seconds_sum", {}) == 0.2 + 0.5
    assert not list(tmp_path.glob("pending-*"))


def test_rolled_back_record_is_dropped_without_counting(tmp_path: Path) -> None:
    """An attempt whose rows are not there never happened."""
    dead_child_with_record(tmp_path)

    report = compact(tmp_path, resolve=lambda _t, _n: False)

    assert report.resolved_records == (0, 1)
    assert credits(tmp_path) == 0.1 + 0.2
    assert not list(tmp_path.glob("pending-*"))


@pytest.mark.parametrize("resolver", ["raises", "none"])
def test_dead_child_waits_unmerged_until_its_record_can_be_settled(tmp_path: Path, resolver: str) -> None:
    """Database unreachable (or no resolver): the files stay as they are, never merged before the record is settled."""
    dead_child_with_record(tmp_path)
    before = sorted(f.name for f in tmp_path.glob("*.db"))

    def unreachable(_t: uuid.UUID, _n: int) -> bool:
        raise ConnectionError("database down")

    report = compact(tmp_path, resolve=unreachable if resolver == "raises" else None)

    assert report.merged_pids == ()
    assert len(report.unresolved_pids) == 1
    assert sorted(f.name for f in tmp_path.glob("*.db")) == before
    assert len(list(tmp_path.glob("pending-*"))) == 1
    assert compact(tmp_path, resolve=lambda _t, _n: True).resolved_records == (1, 0)
    assert credits(tmp_path) == (0.1 + 0.2) + 0.3


# The buckets' own bounds too: an amount equal to a bound belongs to that bucket.
amounts = st.lists(
    st.sampled_from([0.0, 1.0, 1e6]) | st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(amounts, amounts)
def test_targets_equal_what_the_increments_reach(counts: list[float], observations: list[float]) -> None:
    """Setting each entry to its target gives bit for bit the values the increments themselves give."""
    name = f"t{uuid.uuid4().hex[:12]}"
    applied = Counter(f"{name}_a", "Applied.", registry=None)
    planned = Counter(f"{name}_p", "Planned.", registry=None)
    applied_h = Histogram(f"{name}_ah", "Applied.", buckets=(1.0, 1e6), registry=None)
    planned_h = Histogram(f"{name}_ph", "Planned.", buckets=(1.0, 1e6), registry=None)
    applied.inc(0.1)
    planned.inc(0.1)
    tally = pending.Tally()
    for amount in counts:
        applied.inc(amount)
        tally.inc(planned, amount)
    for amount in observations:
        applied_h.observe(amount)
        tally.observe(planned_h, amount)
    targets = tally.targets()
    pending.apply(targets)
    pending.apply(targets)  # applying twice (a record finished again) is not counting twice

    assert planned._value.get() == applied._value.get()
    assert planned_h._sum.get() == applied_h._sum.get()
    assert [b.get() for b in planned_h._buckets] == [b.get() for b in applied_h._buckets]
