"""The JSON summaries of the metrics API: business figures and zone and firm performance.

Business figures count the raw events of the period plus, for days past the
raw retention, the daily rollups the cleanup left in their place (whole
days: a rolled-up day that the period starts in counts whole). The two
never overlap: a rollup holds exactly the rows deleted. Performance comes
from the snapshots the scheduled aggregation writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select
from sqlalchemy.orm import Session

from app.aggregations.performance import SubjectType
from app.aggregations.subscriptions import active_subscriptions_by_plan
from app.db.models import DailyEventRollup, MetricEvent, PerformanceSnapshot
from app.windows import as_utc

_RAW_MEASURES: dict[str, ColumnElement[Any]] = {
    "events": func.count(),
    "failures": func.sum(case((MetricEvent.success.is_(False), 1), else_=0)),
    "lockouts": func.sum(case((MetricEvent.account_locked.is_(True), 1), else_=0)),
    "credits": func.sum(MetricEvent.credits),
    "amount": func.sum(MetricEvent.amount),
}
Grouped = dict[tuple[str, ...], dict[str, float]]
_AUTH_KEYS = (("attempts", "events"), ("failures", "failures"), ("lockouts", "lockouts"))


def _grouped(
    session: Session, *, kind: str, dims: Sequence[str], measures: Sequence[str], since: datetime, until: datetime
) -> Grouped:
    """Measures of `kind`'s events in [since, until) by `dims`, raw events and rollups together."""
    events, rollups = MetricEvent.__table__.c, DailyEventRollup.__table__.c
    raw_dims = [func.coalesce(events[d], "") for d in dims]
    raw = (
        select(*raw_dims, *(_RAW_MEASURES[name] for name in measures))
        .where(events.kind == literal_column(f"'{kind}'"), events.occurred_at >= since, events.occurred_at < until)
        .group_by(*raw_dims)
    )
    rolled = (
        select(*(rollups[d] for d in dims), *(func.sum(rollups[name]) for name in measures))
        .where(rollups.kind == kind, rollups.day >= since.date(), rollups.day <= until.date())
        .group_by(*(rollups[d] for d in dims))
    )
    totals: Grouped = defaultdict(lambda: dict.fromkeys(measures, 0.0))
    for query in (raw, rolled):
        for row in session.execute(query):
            key = tuple(str(value) or "none" for value in row[: len(dims)])
            for name, value in zip(measures, row[len(dims) :], strict=True):
                totals[key][name] += float(value or 0)
    return totals


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _by(grouped: Grouped, index: int, measure: str = "events") -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for key, measures in grouped.items():
        out[key[index]] += int(measures[measure])
    return dict(sorted(out.items()))


def business_summary(session: Session, *, now: datetime, hours: int) -> dict[str, Any]:
    """Panic requests, pranks, logins, subscriptions and credits of the last `hours`."""
    until = as_utc(now)
    since = until - timedelta(hours=hours)
    period = {"since": since, "until": until}
    panic = _grouped(session, kind="panic_request", dims=("service_type", "status"), measures=("events",), **period)
    statuses = _by(panic, 1)
    ended = sum(statuses.get(s, 0) for s in ("completed", "cancelled", "prank"))
    by_service: dict[str, dict[str, int]] = defaultdict(dict)
    for (service_type, status), measures in sorted(panic.items()):
        by_service[service_type][status] = int(measures["events"])
    detections = _grouped(session, kind="prank_detection", dims=("detector",), measures=("events",), **period)
    auth = _grouped(session, kind="auth", dims=("user_type",), measures=("events", "failures", "lockouts"), **period)
    attempts, failures = sum(m["events"] for m in auth.values()), sum(m["failures"] for m in auth.values())
    subscriptions = _grouped(
        session, kind="subscription", dims=("plan", "action", "currency"), measures=("events", "amount"), **period
    )
    revenue: dict[str, float] = defaultdict(float)
    purchases: dict[str, int] = defaultdict(int)
    for (plan, action, currency), measures in subscriptions.items():
        if action in ("purchased", "renewed"):
            revenue[currency] += measures["amount"]
        if action == "purchased":
            purchases[plan] += int(measures["events"])
    active = active_subscriptions_by_plan(session, now=until)
    credits = _grouped(
        session, kind="credit_transaction", dims=("credit_type",), measures=("events", "credits", "amount"), **period
    )
    return {
        "period": {"hours": hours, "from": since.isoformat(), "to": until.isoformat()},
        "panic_requests": {
            "total": sum(statuses.values()),
            "by_status": statuses,
            "by_service_type": dict(sorted(by_service.items())),
            "prank_rate": _ratio(statuses.get("prank", 0), ended),
        },
        "prank_detections": {"total": sum(_by(detections, 0).values()), "by_detector": _by(detections, 0)},
        "auth": {
            "attempts": int(attempts),
            "failures": int(failures),
            "lockouts": int(sum(m["lockouts"] for m in auth.values())),
            "failure_rate": _ratio(failures, attempts),
            "by_user_type": {
                user_type: {key: int(m[measure]) for key, measure in _AUTH_KEYS}
                for (user_type,), m in sorted(auth.items())
            },
        },
        "subscriptions": {
            "active_total": sum(active.values()),
            "active_by_plan": dict(sorted(active.items())),
            "events_by_action": _by(subscriptions, 1),
            "purchases_by_plan": dict(sorted(purchases.items())),
            "revenue_by_currency": {currency: round(total, 4) for currency, total in sorted(revenue.items())},
        },
        "credit_transactions": {
            "total": sum(int(m["events"]) for m in credits.values()),
            "by_type": {
                credit_type: {"count": int(m["events"]), "credits": int(m["credits"]), "amount": round(m["amount"], 4)}
                for (credit_type,), m in sorted(credits.items())
            },
        },
    }


def _snapshot_dict(snapshot: PerformanceSnapshot) -> dict[str, Any]:
    return {
        "window_start": as_utc(snapshot.window_start).isoformat(),
        "window_end": as_utc(snapshot.window_end).isoformat(),
        "requests": snapshot.requests,
        "completed": snapshot.completed,
        "cancelled": snapshot.cancelled,
        "pranks": snapshot.pranks,
        "response_time_p50": snapshot.response_time_p50,
        "response_time_p95": snapshot.response_time_p95,
        "completion_ratio": snapshot.completion_ratio,
        "prank_ratio": snapshot.prank_ratio,
    }


def _subjects(
    session: Session, *, subject_type: SubjectType, subject: str | None, since: datetime
) -> list[dict[str, Any]]:
    query = (
        select(PerformanceSnapshot)
        .where(PerformanceSnapshot.subject_type == subject_type, PerformanceSnapshot.window_start >= since)
        .order_by(PerformanceSnapshot.subject, PerformanceSnapshot.window_start)
    )
    if subject is not None:
        query = query.where(PerformanceSnapshot.subject == subject)
    windows: dict[str, list[PerformanceSnapshot]] = defaultdict(list)
    for snapshot in session.execute(query).scalars():
        windows[snapshot.subject].append(snapshot)
    out = []
    for name, snapshots in windows.items():
        totals = {
            key: sum(getattr(s, key) for s in snapshots) for key in ("requests", "completed", "cancelled", "pranks")
        }
        ended = totals["completed"] + totals["cancelled"] + totals["pranks"]
        entry: dict[str, Any] = {
            "subject": name,
            "windows_count": len(snapshots),
            **totals,
            "completion_ratio": _ratio(totals["completed"], ended),
            "prank_ratio": _ratio(totals["pranks"], ended),
            "latest": _snapshot_dict(snapshots[-1]),
        }
        if subject is not None:  # one subject: its whole series; all of them: totals only
            entry["windows"] = [_snapshot_dict(s) for s in snapshots]
        out.append(entry)
    return out


def performance_summary(
    session: Session, *, now: datetime, hours: int, zone: str | None = None, firm_id: str | None = None
) -> dict[str, Any]:
    """Zone and firm performance over the last `hours` of snapshots; a filter narrows to one zone or firm."""
    since = as_utc(now) - timedelta(hours=hours)
    summary: dict[str, Any] = {"period": {"hours": hours, "from": since.isoformat(), "to": as_utc(now).isoformat()}}
    filtered = zone is not None or firm_id is not None
    if zone is not None or not filtered:
        summary["zones"] = _subjects(session, subject_type="zone", subject=zone, since=since)
    if firm_id is not None or not filtered:
        summary["firms"] = _subjects(session, subject_type="firm", subject=firm_id, since=since)
    return summary
