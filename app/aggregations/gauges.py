"""Set the business gauges from the aggregates: active subscriptions, zone and firm performance.

Each setting also records when its figures were computed
(metrics_job_gauges_computed_timestamp_seconds{scheduled_job}, the database's
clock): only the host that won a window sets these gauges, so across hosts the
newest answer is the one with the greatest such timestamp.

Label values go through the same caps as the counters' (app.metrics.labels):
a zone, firm or plan past its cap gets no performance series of its own (a
percentile of unrelated zones means nothing) and its subscriptions count
under `other`. Every admitted value is set on each refresh, to NaN (or 0
subscriptions) when the latest window had nothing for it, so a quiet zone
does not keep showing figures from an hour ago.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.aggregations.performance import PerformanceRow, SubjectType
from app.db.models import LabelValue
from app.metrics import definitions as m
from app.metrics.labels import OTHER, LabelCaps


@dataclass(frozen=True)
class _SubjectGauges:
    label: str
    p50: Gauge
    p95: Gauge
    completion_ratio: Gauge
    prank_ratio: Gauge


_DIMENSION: dict[SubjectType, str] = {"zone": "zone", "firm": "firm"}
_GAUGES: dict[SubjectType, _SubjectGauges] = {
    "zone": _SubjectGauges(
        "zone", m.ZONE_RESPONSE_TIME_P50, m.ZONE_RESPONSE_TIME_P95, m.ZONE_COMPLETION_RATIO, m.ZONE_PRANK_RATIO
    ),
    "firm": _SubjectGauges(
        "firm_id", m.FIRM_RESPONSE_TIME_P50, m.FIRM_RESPONSE_TIME_P95, m.FIRM_COMPLETION_RATIO, m.FIRM_PRANK_RATIO
    ),
}
SUBSCRIPTIONS_JOB = "refresh_subscription_metrics"


def performance_job(subject_type: SubjectType) -> str:
    """The scheduled job that aggregates `subject_type` (its claims and its gauges' computed time)."""
    return f"aggregate_{subject_type}_performance"


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def admitted_values(session: Session, dimension: str) -> set[str]:
    """The label values admitted under `dimension`'s cap so far."""
    return set(session.execute(select(LabelValue.value).where(LabelValue.dimension == dimension)).scalars())


def _capped(session: Session, dimension: str, values: Sequence[str]) -> dict[str, str]:
    admitted = admitted_values(session, dimension)
    caps = LabelCaps()
    # Sorted, so two jobs admitting values at once take row locks in one order.
    return {value: value if value in admitted else caps.cap(session, dimension, value) for value in sorted(values)}


def set_performance_gauges(
    session: Session, *, subject_type: SubjectType, rows: Sequence[PerformanceRow], computed_at: float
) -> None:
    """Show `rows` (the newest window's figures, computed at `computed_at` by the database's clock)."""
    dimension = _DIMENSION[subject_type]
    gauges = _GAUGES[subject_type]
    capped = _capped(session, dimension, [row.subject for row in rows])
    by_subject = {capped[row.subject]: row for row in rows if capped[row.subject] != OTHER}
    for subject in sorted(admitted_values(session, dimension)):
        row = by_subject.get(subject)
        labels = {gauges.label: subject}
        gauges.p50.labels(**labels).set(_or_nan(None if row is None else row.response_time_p50))
        gauges.p95.labels(**labels).set(_or_nan(None if row is None else row.response_time_p95))
        gauges.completion_ratio.labels(**labels).set(_or_nan(None if row is None else row.completion_ratio))
        gauges.prank_ratio.labels(**labels).set(_or_nan(None if row is None else row.prank_ratio))
    # Last, so a host whose time says "newest" already shows every figure of it.
    m.JOB_GAUGES_COMPUTED.labels(scheduled_job=performance_job(subject_type)).set(computed_at)


def set_subscription_gauges(session: Session, *, active: Mapping[str, int], computed_at: float) -> None:
    """Show the active subscriptions by plan; plans with none show 0, plans past the cap count as `other`."""
    capped = _capped(session, "plan", list(active))
    totals = dict.fromkeys(admitted_values(session, "plan") | {OTHER}, 0)
    for plan, count in active.items():
        totals[capped[plan]] = totals.get(capped[plan], 0) + count
    for plan, count in totals.items():
        m.SUBSCRIPTIONS_ACTIVE.labels(plan=plan).set(count)
    m.JOB_GAUGES_COMPUTED.labels(scheduled_job=SUBSCRIPTIONS_JOB).set(computed_at)
