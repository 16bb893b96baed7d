"""THE place to change an alert's threshold or duration.

Edit a value here, then run `make monitoring` (it regenerates
monitoring/prometheus/rules/*.yml and the dashboards, whose threshold lines
read the same values) and `make test` (the rule unit tests in
monitoring/prometheus/tests/ use values well clear of these, so a modest
change keeps them passing; a test that fails tells you the alert changed
meaning).
"""

from __future__ import annotations

#: The scrape job of every worker endpoint (and `panic-metrics serve-metrics`), in prometheus.yml.
WORKER_JOB = "panic-metrics-worker"

#: Where each alert's runbook_url points: one anchor per alert (the alert's name, lower-cased).
RUNBOOK_URL = "https://github.com/panic-platform/panic-metrics/blob/main/monitoring/RUNBOOK.md"

# --- targets and dependencies ------------------------------------------------
WORKER_DOWN_FOR = "1m"
TARGET_DOWN_FOR = "5m"  # exporters, Flower, Alertmanager, Prometheus itself
DEPENDENCY_DOWN_FOR = "2m"  # dependency_up == 0 (database, broker)
EVENTS_NOT_CONSUMED_FOR = "10m"  # events waiting and none stored

# --- panic response (the SLA) -----------------------------------------------
PANIC_RESPONSE_P95_WARNING_SECONDS = 300
PANIC_RESPONSE_P95_CRITICAL_SECONDS = 900
PANIC_RESPONSE_P95_FOR = "5m"

# --- the web app --------------------------------------------------------------
HTTP_5XX_RATIO = 0.05
HTTP_P95_SECONDS = 2.0
#: Below this many requests per second on a route, its ratios and quantiles mean nothing.
HTTP_MIN_REQUESTS_PER_SECOND = 0.1
HTTP_FOR = "5m"

# --- logins -------------------------------------------------------------------
LOGIN_FAILURE_RATIO = 0.3
LOGIN_MIN_ATTEMPTS_PER_SECOND = 0.2
LOGIN_FOR = "10m"
LOCKOUTS_PER_10M = 20

# --- zones (the scheduled aggregation's latest window) -------------------------
ZONE_COMPLETION_RATIO_MIN = 0.7
ZONE_RESPONSE_P95_SECONDS = 600
ZONE_PRANK_RATIO = 0.15
#: Requests that ended (completed, cancelled, prank) in a zone over 15 minutes before its ratios count.
ZONE_MIN_ENDED_REQUESTS_15M = 20
ZONE_FOR = "10m"

# --- queues -------------------------------------------------------------------
QUEUE_BACKLOG_MESSAGES = 1000
QUEUE_BACKLOG_FOR = "15m"
QUEUE_OLDEST_MESSAGE_SECONDS = 300
QUEUE_OLDEST_FOR = "5m"

# --- tasks and the pipeline -----------------------------------------------------
TASK_FAILURE_RATIO = 0.05
TASK_MIN_RUNS_PER_SECOND = 0.05
TASK_FAILURE_FOR = "10m"
TASK_RETRIES_PER_10M = 10
EVENTS_REJECTED_PER_10M = 10
EVENT_LAG_P95_SECONDS = 60  # since=published: publish to stored
EVENT_LAG_FOR = "10m"

# --- scheduled jobs ---------------------------------------------------------------
#: Each job's interval at the default settings (beat_schedule.intervals; a unit test keeps them equal).
#: A job is stale when its last success is older than JOB_STALE_INTERVALS of its intervals.
JOB_INTERVALS_SECONDS = {
    "refresh_health_metrics": 60,
    "refresh_subscription_metrics": 60,
    "aggregate_zone_performance": 300,
    "aggregate_firm_performance": 300,
    "cleanup_old_metrics": 86400,
}
JOB_STALE_INTERVALS = 3
JOB_STALE_FOR = "2m"

# --- the multiprocess directory and the endpoint -----------------------------------
MULTIPROC_FILES = 500
#: No room for metric files (the worker has stopped consuming: workers/consumer_gate.py).
MULTIPROC_NOT_WRITABLE_FOR = "2m"
MULTIPROC_FOR = "30m"
#: How long a damaged metric file set aside keeps its alert firing (a one-off event, not a state).
MULTIPROC_SET_ASIDE_WINDOW = "1h"
SCRAPE_SECONDS = 2.0
SCRAPE_FOR = "10m"
