"""The Celery side of panic-metrics: the app, its signals and thin tasks."""
