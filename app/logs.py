"""JSON logs: one object per line, with the task name and id when inside a task."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class TaskContext(logging.Filter):
    """Adds `task_name` and `task_id` of the running Celery task, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Imported here so app/ keeps no import-time dependency on Celery.
        from celery import current_task

        task = current_task
        if task and task.request and task.request.id:
            record.task_name = task.name
            record.task_id = task.request.id
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{processName}{message}",
            style="{",
            rename_fields={"levelname": "level", "asctime": "time", "name": "logger", "processName": "process"},
            timestamp=False,
        )
    )
    handler.addFilter(TaskContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Celery logs every task's receipt and result with its arguments: at our
    # volume that is noise, and the arguments hold customer ids. DEBUG keeps them.
    quiet = "DEBUG" if level == "DEBUG" else "WARNING"
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(quiet)
