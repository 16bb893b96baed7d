"""Set the business gauges from the aggregates: active subscriptions, zone and firm performance.

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

from prometheus_client import Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.aggregations.performance import QUANTILES, PerformanceRow, SubjectType
from app.db.models import LabelValue
from app.metrics import definitions as m
from app.metrics.labels import OTHER, LabelCaps

_DIMENSION: dict[SubjectType, str] = {"zone": "zone", "firm": "firm"}
_GAUGES: dict[SubjectType, tuple[str, Gauge, Gauge, Gauge]] = {
    "zone": ("zone", m.ZONE_RESPONSE_TIME, m.ZONE_COMPLETION_RATIO, m.ZONE_PRANK_RATIO),
    "firm": ("firm_id", m.FIRM_RESPONSE_TIME, m.FIRM_COMPLETION_RATIO, m.FIRM_PRANK_RATIO),
}


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


def set_performance_gauges(session: Session, *, subject_type: SubjectType, rows: Sequence[PerformanceRow]) -> None:
    """Show `rows` (the newest window's figures) on the zone or firm gauges."""
    dimension = _DIMENSION[subject_type]
    label, response_time, completion_ratio, prank_ratio = _GAUGES[subject_type]
    capped = _capped(session, dimension, [row.subject for row in rows])
    by_subject = {capped[row.subject]: row for row in rows if capped[row.subject] != OTHER}
    for subject in sorted(admitted_values(session, dimension)):
        row = by_subject.get(subject)
        figures = (
            (None,) * 4
            if row is None
            else (row.response_time_p50, row.response_time_p95, row.completion_ratio, row.prank_ratio)
        )
        for quantile, value in zip(QUANTILES, figures[:2], strict=True):
            response_time.labels(**{label: subject, "quantile": str(quantile)}).set(_or_nan(value))
        completion_ratio.labels(**{label: subject}).set(_or_nan(figures[2]))
        prank_ratio.labels(**{label: subject}).set(_or_nan(figures[3]))


def set_subscription_gauges(session: Session, *, active: Mapping[str, int]) -> None:
    """Show the active subscriptions by plan; plans with none show 0, plans past the cap count as `other`."""
    capped = _capped(session, "plan", list(active))
    totals = dict.fromkeys(admitted_values(session, "plan") | {OTHER}, 0)
    for plan, count in active.items():
        totals[capped[plan]] = totals.get(capped[plan], 0) + count
    for plan, count in totals.items():
        m.SUBSCRIPTIONS_ACTIVE.labels(plan=plan).set(count)
