"""Celery tasks: event tasks (queue `events`) and scheduled jobs (queue `scheduled`)."""
