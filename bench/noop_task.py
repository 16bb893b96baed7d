"""The baseline of bench/ingest.py: a task that does nothing, on the same app and broker."""

from __future__ import annotations

from workers.celery_app import app


@app.task(name="panic_metrics.bench.noop", acks_late=True, ignore_result=True)
def noop(**_: object) -> None:
    """Nothing: measures what Celery and the broker cost by themselves."""
