"""Active subscriptions by plan equal a plain-Python reference over random histories."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from app.aggregations.subscriptions import active_subscriptions_by_plan
from tests.support.metric_rows import far_past_window, insert_rows, row

NOW = far_past_window(2_000)
PLANS = ("basic", "family", "premium")
ACTIONS = ("purchased", "renewed", "cancelled", "expired")


@dataclass(frozen=True)
class SubscriptionEvent:
    subscription_id: str
    plan: str
    action: str
    occurred_at: datetime
    expires_at: datetime | None
    event_id: uuid.UUID

    def as_row(self) -> dict[str, object]:
        return row(
            "subscription",
            self.occurred_at,
            event_id=self.event_id,
            subscription_id=self.subscription_id,
            plan=self.plan,
            action=self.action,
            expires_at=self.expires_at,
        )


def subscription_events(now: datetime) -> st.SearchStrategy[SubscriptionEvent]:
    """Few subscriptions, so histories interleave; coarse times, so some events share an instant."""
    hours = st.integers(-96, 2).map(lambda h: now + timedelta(hours=h))
    return st.builds(
        SubscriptionEvent,
        subscription_id=st.sampled_from([f"sub-{i}" for i in range(6)]),
        plan=st.sampled_from(PLANS),
        action=st.sampled_from(ACTIONS),
        occurred_at=hours,
        expires_at=st.none() | st.integers(-48, 48).map(lambda h: now + timedelta(hours=h)),
        event_id=st.uuids(),
    )


def reference_active(events: list[SubscriptionEvent], now: datetime) -> dict[str, int]:
    """Latest event up to `now` per subscription, by (occurred_at, event_id); active if bought or renewed, unexpired."""
    latest: dict[str, SubscriptionEvent] = {}
    for event in sorted((e for e in events if e.occurred_at <= now), key=lambda e: (e.occurred_at, e.event_id)):
        latest[event.subscription_id] = event
    active = Counter(
        e.plan
        for e in latest.values()
        if e.action in ("purchased", "renewed") and (e.expires_at is None or e.expires_at > now)
    )
    return dict(active)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(subscription_events(NOW), max_size=30, unique_by=lambda e: e.event_id))
def test_active_subscriptions_by_plan_match_the_reference(db_session: Session, events: list[SubscriptionEvent]) -> None:
    """A subscription counts under its latest plan until cancelled, expired or past expires_at."""
    savepoint = db_session.begin_nested()
    try:
        insert_rows(db_session, [e.as_row() for e in events])
        assert active_subscriptions_by_plan(db_session, now=NOW) == reference_active(events, NOW)
    finally:
        savepoint.rollback()


def test_a_cancelled_subscription_is_not_active(db_session: Session) -> None:
    """Purchase then cancel: not active; a later renewal makes it active again."""
    bought = row("subscription", NOW - timedelta(days=3), subscription_id="s", plan="basic", action="purchased")
    cancelled = row("subscription", NOW - timedelta(days=2), subscription_id="s", plan="basic", action="cancelled")
    insert_rows(db_session, [bought, cancelled])
    assert active_subscriptions_by_plan(db_session, now=NOW) == {}
    renewed = row("subscription", NOW - timedelta(days=1), subscription_id="s", plan="premium", action="renewed")
    insert_rows(db_session, [renewed])
    assert active_subscriptions_by_plan(db_session, now=NOW) == {"premium": 1}


def test_a_subscription_ends_when_expires_at_passes(db_session: Session) -> None:
    """Active the instant before expires_at, not at it."""
    expires = NOW + timedelta(hours=1)
    insert_rows(
        db_session,
        [row("subscription", NOW, subscription_id="e", plan="family", action="purchased", expires_at=expires)],
    )
    assert active_subscriptions_by_plan(db_session, now=expires - timedelta(microseconds=1)) == {"family": 1}
    assert active_subscriptions_by_plan(db_session, now=expires) == {}
