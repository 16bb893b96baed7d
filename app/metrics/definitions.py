"""Every metric of the worker, with its help text, labels and bucket rationale.

Label values come from bounded sets (enums in panic_metrics_client.events) or pass through a
cap (app.metrics.labels): no user, customer or request id is ever a label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from panic_metrics_client.events import HTTP_DURATION_BUCKETS

# --- panic requests -------------------------------------------------------

PANIC_REQUESTS = Counter(
    "panic_requests_total",
    "Panic request status changes recorded.",
    ["service_type", "status", "zone"],
)
# A response takes from seconds (an officer already nearby) to half an hour
# (rural fire); the buckets are denser in the 1-10 minute band the SLA lives in.
PANIC_RESPONSE_TIME = Histogram(
    "panic_request_response_time_seconds",
    "Time from a panic request to the firm's response.",
    ["service_type", "zone"],
    buckets=(5, 10, 15, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800),
)
PRANK_DETECTIONS = Counter(
    "prank_detections_total",
    "Panic requests flagged as pranks, by detector.",
    ["zone", "detector"],
)

# --- customers and auth ---------------------------------------------------

AUTH_LOGIN_ATTEMPTS = Counter(
    "auth_login_attempts_total",
    "Login attempts by user type and result (success or failure).",
    ["user_type", "result"],
)
AUTH_ACCOUNT_LOCKOUTS = Counter(
    "auth_account_lockouts_total",
    "Accounts locked after a failed login.",
    ["user_type"],
)
NOTIFICATIONS = Counter(
    "notifications_total",
    "Notifications by channel, delivery status and type.",
    ["channel", "status", "notification_type"],
)
SUBSCRIPTION_EVENTS = Counter(
    "subscription_events_total",
    "Subscription purchases, renewals, cancellations and expiries.",
    ["plan", "action"],
)
CREDIT_TRANSACTIONS = Counter(
    "credit_transactions_total",
    "Credit transactions by type.",
    ["type"],
)
CREDITS = Counter(
    "credits_total",
    "Credits moved, by transaction type.",
    ["type"],
)

# --- the web app ------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "Requests served by the platform's web app, by route template.",
    ["method", "endpoint", "status"],
)
# The client's catalogue declares the buckets: its per-route summaries count by them.
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Duration of requests served by the platform's web app.",
    ["method", "endpoint"],
    buckets=HTTP_DURATION_BUCKETS,
)
# The web app reports its current count; the latest report wins.
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections",
    "Open WebSocket connections last reported by each web app source.",
    ["source"],
    multiprocess_mode="mostrecent",
)
CACHE_REQUESTS = Counter(
    "cache_requests_total",
    "Cache lookups reported by the web app, by result (hit or miss).",
    ["result"],
)

# --- the pipeline itself ------------------------------------------------------

EVENTS_STORED = Counter(
    "metrics_events_stored_total",
    "Events newly stored (and counted), by kind.",
    ["kind"],
)
EVENTS_DUPLICATE = Counter(
    "metrics_events_duplicate_total",
    "Events whose event_id was already stored: redeliveries, not counted again.",
    ["kind"],
)
EVENTS_REJECTED = Counter(
    "metrics_events_rejected_total",
    "Payloads rejected by validation, by kind and reason (a pydantic error type).",
    ["kind", "reason"],
)
EVENTS_DEAD_LETTERED = Counter(
    "metrics_events_dead_lettered_total",
    "Events set aside after the retry budget ran out; replay them with `panic-metrics replay-dead-letters`.",
    ["kind"],
)
EVENTS_QUARANTINED = Counter(
    "metrics_events_quarantined_total",
    "Messages set aside unrun: delivered too often without finishing, or past their time limit.",
    ["kind", "reason"],
)
# Lag from milliseconds (healthy) to a day (a replayed dead letter or a late
# batch from a phone that was offline).
EVENT_LAG = Histogram(
    "metrics_event_lag_seconds",
    "Time from an event's occurred_at (since=occurred) or its publish (since=published) to stored.",
    ["kind", "since"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)

# --- celery tasks -------------------------------------------------------------

# Event tasks take milliseconds; scheduled aggregations up to a minute or two.
TASK_DURATION = Histogram(
    "celery_task_duration_seconds",
    "Run time of each task, by task name.",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TASK_FAILURES = Counter(
    "celery_task_failures_total",
    "Tasks that failed for good (after retries), by task name.",
    ["task"],
)
TASK_RETRIES = Counter(
    "celery_task_retries_total",
    "Task retries (database unreachable), by task name.",
    ["task"],
)

# --- scheduled jobs (workers/tasks/scheduled.py) ------------------------------
# Gauges a scheduled job sets are `mostrecent`: whichever process ran the job
# last holds the current value; the others' stale copies are ignored.
# The label is `scheduled_job`, not `job`: Prometheus gives every scraped series
# the target's `job` (and `instance`), so ours would arrive renamed
# `exported_job`, or with honor_labels overwrite the target's.

JOB_LAST_SUCCESS = Gauge(
    "metrics_job_last_success_timestamp_seconds",
    "When each scheduled job last finished without error (Unix time); alert on its age.",
    ["scheduled_job"],
    multiprocess_mode="mostrecent",
)
JOB_DURATION = Gauge(
    "metrics_job_duration_seconds",
    "Run time of each scheduled job's last successful run.",
    ["scheduled_job"],
    multiprocess_mode="mostrecent",
)
JOB_FAILURES = Counter(
    "metrics_job_failures_total",
    "Scheduled job runs that raised an error.",
    ["scheduled_job"],
)
JOB_WINDOWS = Counter(
    "metrics_job_windows_total",
    "Windows a scheduled job ran (outcome=done) or found claimed by another run (outcome=skipped).",
    ["scheduled_job", "outcome"],
)

# --- dependencies and queues (refresh_health_metrics) -------------------------

DEPENDENCY_UP = Gauge(
    "dependency_up",
    "Whether a dependency answered the last health refresh (1) or not (0): broker, database, redis, alertmanager.",
    ["dependency"],
    multiprocess_mode="mostrecent",
)
# A failed probe also sets the figures it could not read to NaN (not the last
# good value: a mostrecent gauge would keep looking healthy).
HEALTH_PROBE_FAILURES = Counter(
    "metrics_health_probe_failures_total",
    "Health refresh probes that failed: broker, database, redis, alertmanager, database_connections, queues.",
    ["probe"],
)
DATABASE_CONNECTIONS = Gauge(
    "database_connections",
    "Connections to our database by state (in_use, idle): pg_stat_activity, or the pool on SQLite.",
    ["state"],
    multiprocess_mode="mostrecent",
)
# Labelled by address so no series exists (as a misleading 0) where no Redis is used.
REDIS_CONNECTED_CLIENTS = Gauge(
    "redis_connected_clients",
    "Clients connected to Redis.",
    ["address"],
    multiprocess_mode="mostrecent",
)
REDIS_MEMORY_USED = Gauge(
    "redis_memory_used_bytes",
    "Memory used by Redis.",
    ["address"],
    multiprocess_mode="mostrecent",
)
REDIS_KEYSPACE_HIT_RATIO = Gauge(
    "redis_keyspace_hit_ratio",
    "Keyspace hits over hits and misses since Redis started.",
    ["address"],
    multiprocess_mode="mostrecent",
)
QUEUE_LENGTH = Gauge(
    "celery_queue_length",
    "Messages waiting in each Celery queue (Redis priority sub-queues included).",
    ["queue"],
    multiprocess_mode="mostrecent",
)
QUEUE_OLDEST_AGE = Gauge(
    "celery_queue_oldest_message_age_seconds",
    "Age of the oldest message waiting in each Celery queue (0 when empty).",
    ["queue"],
    multiprocess_mode="mostrecent",
)

# --- business aggregates (refresh_subscription_metrics, aggregate_*_performance)
# Only the host that won a window's claim sets these, so another host keeps
# showing an older window until it wins one. Each run that sets them also sets
# metrics_job_gauges_computed_timestamp_seconds{scheduled_job} (the database's
# clock when its figures were computed): across hosts the greatest marks the
# newest answer, and the recording rules `*:newest` read only that host's
# series (monitoring/generator/rules.py, README "Job gauges across hosts").

JOB_GAUGES_COMPUTED = Gauge(
    "metrics_job_gauges_computed_timestamp_seconds",
    "When (database clock, Unix time; the host's for refresh_health_metrics) the figures this host's gauges "
    "of the job show were computed; across hosts the greatest is the newest answer.",
    ["scheduled_job"],
    multiprocess_mode="mostrecent",
)
SUBSCRIPTIONS_ACTIVE = Gauge(
    "subscriptions_active",
    "Subscriptions active now (purchased or renewed, not cancelled, not expired), by plan.",
    ["plan"],
    multiprocess_mode="mostrecent",
)
# Per zone and firm, over the latest aggregated window (PERFORMANCE_WINDOW_SECONDS);
# NaN for a zone or firm with nothing to compute from in that window. One gauge
# per percentile: a `quantile` label is reserved for summaries.
ZONE_RESPONSE_TIME_P50 = Gauge(
    "zone_response_time_p50_seconds",
    "Median panic response time per zone over the latest window.",
    ["zone"],
    multiprocess_mode="mostrecent",
)
ZONE_RESPONSE_TIME_P95 = Gauge(
    "zone_response_time_p95_seconds",
    "95th percentile panic response time per zone over the latest window.",
    ["zone"],
    multiprocess_mode="mostrecent",
)
ZONE_COMPLETION_RATIO = Gauge(
    "zone_completion_ratio",
    "Completed over ended (completed, cancelled, prank) panic requests per zone, latest window.",
    ["zone"],
    multiprocess_mode="mostrecent",
)
ZONE_PRANK_RATIO = Gauge(
    "zone_prank_ratio",
    "Pranks over ended (completed, cancelled, prank) panic requests per zone, latest window.",
    ["zone"],
    multiprocess_mode="mostrecent",
)
FIRM_RESPONSE_TIME_P50 = Gauge(
    "firm_response_time_p50_seconds",
    "Median panic response time per firm over the latest window.",
    ["firm_id"],
    multiprocess_mode="mostrecent",
)
FIRM_RESPONSE_TIME_P95 = Gauge(
    "firm_response_time_p95_seconds",
    "95th percentile panic response time per firm over the latest window.",
    ["firm_id"],
    multiprocess_mode="mostrecent",
)
FIRM_COMPLETION_RATIO = Gauge(
    "firm_completion_ratio",
    "Completed over ended (completed, cancelled, prank) panic requests per firm, latest window.",
    ["firm_id"],
    multiprocess_mode="mostrecent",
)
FIRM_PRANK_RATIO = Gauge(
    "firm_prank_ratio",
    "Pranks over ended (completed, cancelled, prank) panic requests per firm, latest window.",
    ["firm_id"],
    multiprocess_mode="mostrecent",
)

# --- the endpoint itself ------------------------------------------------------

ENDPOINT_UNAUTHORIZED = Counter(
    "metrics_endpoint_unauthorized_requests_total",
    "Requests to the endpoint refused for missing or invalid credentials (reason: missing, invalid).",
    ["reason"],
)

# --- the multiprocess directory (app.metrics.damage) ----------------------------

#: Why a metric file was set aside: shorter than a header or never written
#: (its owner dead), its length header impossible, cut short before the
#: length it declares, an entry that is not one, a name no collector reads.
SET_ASIDE_REASONS = ("empty", "bad_header", "truncated", "bad_entry", "unknown_name")
MULTIPROC_FILES_SET_ASIDE = Counter(
    "metrics_multiproc_files_set_aside_total",
    "Damaged metric files moved out of the multiprocess directory into its damaged/ folder, by reason "
    "(empty, bad_header, truncated, bad_entry, unknown_name); what they held whole is still served.",
    ["reason"],
)
