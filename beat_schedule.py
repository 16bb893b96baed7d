"""The beat schedule: every scheduled job, how often it runs, and where it goes.

Intervals come from the settings. Each entry goes to the `scheduled` queue
with an expiry shorter than its interval: a run still waiting when the next
one is due is dropped by the worker, so a backlog never stacks runs of the
same job (and the job's window claim makes a late one harmless anyway).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.config import Settings

TASK_PREFIX = "panic_metrics.scheduled."
#: Share of its interval a run may wait in the queue before it is dropped.
EXPIRY_SHARE = 0.9


def intervals(settings: Settings) -> dict[str, int]:
    """Each job's interval in seconds."""
    return {
        "refresh_health_metrics": settings.health_refresh_interval_seconds,
        "refresh_subscription_metrics": settings.subscription_refresh_interval_seconds,
        "aggregate_zone_performance": settings.performance_window_seconds,
        "aggregate_firm_performance": settings.performance_window_seconds,
        "cleanup_old_metrics": settings.cleanup_interval_seconds,
    }


def build_beat_schedule(settings: Settings, *, queue: str) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule`: one entry per job, routed to `queue`, expiring before its next run."""
    return {
        job: {
            "task": TASK_PREFIX + job,
            "schedule": timedelta(seconds=seconds),
            "options": {"queue": queue, "routing_key": queue, "expires": seconds * EXPIRY_SHARE},
        }
        for job, seconds in intervals(settings).items()
    }
