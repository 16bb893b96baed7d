"""The base of every task: run time, retries and failures counted under the task's name.

Delivery settings (acks_late, reject_on_worker_lost, time limits, results)
are the Celery app's configuration (workers/celery_app.py), for every task
at once; what every task does around its body lives here, in one class; the event
tasks' own base (retries, dead letters, event ids) is in workers/tasks/events.py.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry

from app.metrics import definitions as m
from app.metrics.writers import require_values_in_directory


class MetricsTask(Task):  # type: ignore[type-arg]
    """Every task of the app (its `task_cls`): run time, retries and failures counted under the task's name.

    Subclasses add their own bookkeeping of a run through `run_succeeded`
    and `run_failed` (scheduled jobs record their last success there).
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A body counts wherever it runs: a pool child (checked at its start), or called in a shell.
        require_values_in_directory()
        started = time.perf_counter()
        try:
            result = super().__call__(*args, **kwargs)
        except Retry:
            raise  # not a failure: counted by on_retry
        except Reject:
            raise  # not a failure: the message goes back to the queue (metric files full)
        except Exception:
            self.run_failed()
            raise
        finally:
            m.TASK_DURATION.labels(task=self.name).observe(time.perf_counter() - started)
        self.run_succeeded(time.perf_counter() - started)
        return result

    def run_succeeded(self, seconds: float) -> None:
        """Called after a run that returned, with its duration; nothing by default."""

    def run_failed(self) -> None:
        """Called after a run that raised (not a retry); nothing by default."""

    def on_retry(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:  # noqa: ARG002 - Celery's signature
        """A retry scheduled (the database unreachable): counted."""
        m.TASK_RETRIES.labels(task=self.name).inc()

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:  # noqa: ARG002 - Celery's signature
        """A run failed for good: counted (in the child, or in the main process at a hard time limit)."""
        m.TASK_FAILURES.labels(task=self.name).inc()
