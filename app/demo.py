"""A realistic stream of sample events, so a newcomer sees the numbers move."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

ZONES = ("downtown", "harbour", "northside", "airport", "university", "old-town")
FIRMS = ("firm-aegis", "firm-bastion", "firm-citadel", "firm-delta-med", "firm-ember-fire")
ROUTES = ("/api/v1/panic", "/api/v1/panic/{request_id}", "/api/v1/auth/login", "/api/v1/credits", "/ws")


def panic_request(rng: random.Random) -> dict[str, Any]:
    """A panic request status change as the web app records it."""
    status = rng.choices(
        ("requested", "accepted", "en_route", "arrived", "completed", "cancelled", "prank"),
        weights=(30, 20, 15, 10, 20, 3, 2),
    )[0]
    event: dict[str, Any] = {
        "kind": "panic_request",
        "service_type": rng.choice(("security", "medical", "fire")),
        "status": status,
        "zone": rng.choice(ZONES),
        "firm_id": rng.choice(FIRMS),
    }
    if status in {"accepted", "arrived", "completed"}:
        event["response_time"] = round(rng.lognormvariate(5.0, 0.6), 1)
    return event


def sample_event(rng: random.Random) -> dict[str, Any]:  # noqa: PLR0911 - one return per kind reads best
    """One event of a random kind, weighted roughly like production traffic."""
    kind = rng.choices(
        ("panic_request", "auth", "notification", "http_request", "credit_transaction", "subscription", "prank"),
        weights=(25, 15, 15, 35, 4, 2, 1),
    )[0]
    if kind == "panic_request":
        return panic_request(rng)
    if kind == "auth":
        success = rng.random() > 0.1
        return {
            "kind": "auth",
            "user_type": rng.choice(("registered_user", "firm_user", "admin")),
            "success": success,
            "account_locked": not success and rng.random() < 0.2,
        }
    if kind == "notification":
        return {
            "kind": "notification",
            "channel": rng.choice(("push", "sms", "email", "in_app")),
            "status": rng.choices(("sent", "delivered", "failed"), weights=(30, 65, 5))[0],
            "notification_type": rng.choice(("panic_update", "marketing", "receipt")),
        }
    if kind == "http_request":
        return {
            "kind": "http_request",
            "method": rng.choice(("GET", "GET", "POST")),
            "endpoint": rng.choice(ROUTES),
            "status": rng.choices((200, 201, 400, 404, 500), weights=(80, 8, 5, 5, 2))[0],
            "duration": round(rng.lognormvariate(-3.0, 1.0), 4),
        }
    if kind == "credit_transaction":
        return {
            "kind": "credit_transaction",
            "customer_id": f"customer-{rng.randint(1, 500)}",
            "type": rng.choice(("purchase", "spend", "spend", "refund")),
            "credits": rng.randint(1, 50),
            "amount": round(rng.uniform(10, 500), 2),
        }
    if kind == "subscription":
        return {
            "kind": "subscription",
            "subscription_id": f"sub-{rng.randint(1, 300)}",
            "plan": rng.choice(("basic", "family", "premium")),
            "action": rng.choices(("purchased", "renewed", "cancelled"), weights=(5, 10, 1))[0],
            "amount": rng.choice((99.0, 199.0, 349.0)),
            "currency": "ZAR",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        }
    return {
        "kind": "prank_detection",
        "request_id": f"request-{rng.randint(1, 10_000)}",
        "zone": rng.choice(ZONES),
        "firm_id": rng.choice(FIRMS),
        "detector": rng.choice(("repeat_caller", "location_mismatch")),
    }


def run_demo(*, rate: float, duration: float | None, seed: int | None = None) -> int:
    """Fire about `rate` events a second through the app-side client, as the web app does; return how many."""
    import panic_metrics_client as client
    from app.config import get_settings

    settings = get_settings()
    # The worker's broker; PANIC_METRICS_* variables still override the rest. No client metrics:
    # this process shares the worker's environment, not a web app's registry.
    client.configure(broker_url=settings.broker_url, broker_folder=settings.broker_folder, metrics=False)
    rng = random.Random(seed)
    sent = 0
    started = time.monotonic()
    while duration is None or time.monotonic() - started < duration:
        batch = [sample_event(rng) for _ in range(max(1, int(rate)))]
        # Panic requests through the seed's name, one call each; the rest as the batch form.
        for event in [e for e in batch if e["kind"] == "panic_request"]:
            client.record_panic_request_metrics.delay(**{k: v for k, v in event.items() if k != "kind"})
        client.record_events.delay([e for e in batch if e["kind"] != "panic_request"])
        client.record_gauge_report.delay(websocket_connections=rng.randint(50, 400))
        client.record_cache(hit=True, count=rng.randint(50, 200))
        client.record_cache(hit=False, count=rng.randint(0, 30))
        sent += len(batch) + 1
        time.sleep(1)
    client.flush()
    return sent
