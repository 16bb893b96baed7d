"""Active subscriptions by plan, from the subscription events.

A subscription's state is its latest event, ordered by `occurred_at` then
`event_id` (so two events of the same instant still have one order, the
same on both databases): it is active when that event is a purchase or a
renewal whose `expires_at` (if any) is still ahead, and its plan is that
event's plan. The cleanup keeps each subscription's latest event past the
raw retention while it may still be active, so the state survives it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, func, literal_column, or_, select
from sqlalchemy.orm import Session

from app.db.models import MetricEvent
from app.windows import as_utc

ACTIVE_ACTIONS = ("purchased", "renewed")
ENDING_ACTIONS = ("cancelled", "expired")


def is_subscription() -> ColumnElement[bool]:
    """`kind = 'subscription'` as a literal, matching the partial index's predicate."""
    return MetricEvent.kind == literal_column("'subscription'")


def active_subscriptions_by_plan(session: Session, *, now: datetime) -> dict[str, int]:
    """How many subscriptions are active at `now`, by plan (plans with none are absent).

    Events after `now` are ignored: the answer is the state as of `now`.
    """
    now = as_utc(now)  # SQLite compares timestamps as UTC text
    latest_first = func.row_number().over(
        partition_by=MetricEvent.subscription_id,
        order_by=(MetricEvent.occurred_at.desc(), MetricEvent.event_id.desc()),
    )
    states = (
        select(MetricEvent.plan, MetricEvent.action, MetricEvent.expires_at, latest_first.label("recency"))
        .where(is_subscription(), MetricEvent.occurred_at <= now)
        .subquery()
    )
    query = (
        select(states.c.plan, func.count())
        .where(
            states.c.recency == 1,
            states.c.action.in_(ACTIVE_ACTIONS),
            or_(states.c.expires_at.is_(None), states.c.expires_at > now),
        )
        .group_by(states.c.plan)
    )
    return {plan: int(count) for plan, count in session.execute(query)}
