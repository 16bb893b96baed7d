"""The Prometheus recording and alert rules, written out as monitoring/prometheus/rules/*.yml.

Every metric name here is one the worker really exposes (app/metrics/definitions.py,
app/metrics/housekeeping.py); every threshold comes from thresholds.py.
Recording rules follow `level:metric:operations` and aggregate across hosts
(`sum by`), so dashboards and alerts read one cheap series per subject.

Scraped series carry the target's `job` label (WORKER_JOB); the scheduled-job
metrics name their job in `scheduled_job`, a label of their own, so it never
clashes with the target's (older versions exported `job`, which Prometheus
renamed `exported_job`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitoring.generator import thresholds as t

W = f'job="{t.WORKER_JOB}"'


@dataclass(frozen=True)
class Alert:
    """One alert rule; `name` is also its runbook anchor."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def as_rule(self) -> dict[str, Any]:
        """The rule as it goes into the YAML file."""
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{t.RUNBOOK_URL}#{self.name.lower()}",
        }
        return rule


def _quantile(q: float, metric: str, by: str, matchers: str = "") -> str:
    selector = f"{metric}_bucket{{{W}{', ' + matchers if matchers else ''}}}"
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({selector}[5m])))"


def newest(metric: str, scheduled_job: str) -> str:
    """`metric` as the host whose figures are newest shows it: the one PromQL answer across hosts.

    Only the host that won a window's claim sets a job's gauges; every other
    host keeps an older answer. Each setting records the database's time of
    its figures in metrics_job_gauges_computed_timestamp_seconds, so the
    greatest marks the newest; `max without (instance)` leaves one series per
    subject even if two hosts tie, so a `sum` counts each subject once.
    """
    computed = f'metrics_job_gauges_computed_timestamp_seconds{{{W}, scheduled_job="{scheduled_job}"}}'
    newest_host = f"{computed} == on () group_left max({computed})"
    return f"max without (instance) ({metric}{{{W}}} and on (instance) ({newest_host}))"


#: The gauges a scheduled job sets, by the job that sets them and the label of their subject:
#: those that hosts report differently (the claim's winner is fresh, the others older) and
#: rules or dashboards read across hosts. The queue figures are the broker's, one answer for
#: every host.
JOB_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "aggregate_zone_performance": (
        "zone",
        (
            "zone_response_time_p50_seconds",
            "zone_response_time_p95_seconds",
            "zone_completion_ratio",
            "zone_prank_ratio",
        ),
    ),
    "aggregate_firm_performance": (
        "firm_id",
        (
            "firm_response_time_p50_seconds",
            "firm_response_time_p95_seconds",
            "firm_completion_ratio",
            "firm_prank_ratio",
        ),
    ),
    "refresh_subscription_metrics": ("plan", ("subscriptions_active",)),
    "refresh_health_metrics": ("queue", ("celery_queue_length", "celery_queue_oldest_message_age_seconds")),
}

#: name -> expression. The dashboards read these names (dashboards.py).
RECORDING_RULES: dict[str, str] = {
    **{
        f"{label}:{metric}:newest": newest(metric, scheduled_job)
        for scheduled_job, (label, metrics) in JOB_GAUGES.items()
        for metric in metrics
    },
    # The health refresh's other subject: one beat message per interval, so one host reads the
    # dependencies and the others keep their last reading (a database down long fixed, say).
    "dependency:dependency_up:newest": newest("dependency_up", "refresh_health_metrics"),
    "service_type_status:panic_requests:rate5m": (
        f"sum by (service_type, status) (rate(panic_requests_total{{{W}}}[5m]))"
    ),
    "zone_status:panic_requests:rate5m": f"sum by (zone, status) (rate(panic_requests_total{{{W}}}[5m]))",
    "zone:panic_requests_ended:increase15m": (
        f'sum by (zone) (increase(panic_requests_total{{{W}, status=~"completed|cancelled|prank"}}[15m]))'
    ),
    "service_type_zone:panic_request_response_time_seconds:p50_rate5m": _quantile(
        0.5, "panic_request_response_time_seconds", "service_type, zone"
    ),
    "service_type_zone:panic_request_response_time_seconds:p95_rate5m": _quantile(
        0.95, "panic_request_response_time_seconds", "service_type, zone"
    ),
    "endpoint:http_requests:rate5m": f"sum by (endpoint) (rate(http_requests_total{{{W}}}[5m]))",
    "endpoint:http_requests_5xx:rate5m": f'sum by (endpoint) (rate(http_requests_total{{{W}, status=~"5.."}}[5m]))',
    "endpoint:http_requests_5xx:ratio_rate5m": "endpoint:http_requests_5xx:rate5m / endpoint:http_requests:rate5m",
    "endpoint:http_request_duration_seconds:p50_rate5m": _quantile(0.5, "http_request_duration_seconds", "endpoint"),
    "endpoint:http_request_duration_seconds:p95_rate5m": _quantile(0.95, "http_request_duration_seconds", "endpoint"),
    "job:auth_login_attempts:rate5m": f"sum by (job) (rate(auth_login_attempts_total{{{W}}}[5m]))",
    "job:auth_login_failures:ratio_rate5m": (
        f'sum by (job) (rate(auth_login_attempts_total{{{W}, result="failure"}}[5m])) / job:auth_login_attempts:rate5m'
    ),
    "kind:metrics_events_stored:rate5m": f"sum by (kind) (rate(metrics_events_stored_total{{{W}}}[5m]))",
    "kind_since:metrics_event_lag_seconds:p95_rate5m": _quantile(0.95, "metrics_event_lag_seconds", "kind, since"),
    "task:celery_tasks:rate5m": f"sum by (task) (rate(celery_task_duration_seconds_count{{{W}}}[5m]))",
    "task:celery_task_duration_seconds:p95_rate5m": _quantile(0.95, "celery_task_duration_seconds", "task"),
    "task:celery_task_failures:ratio_rate5m": (
        f"sum by (task) (rate(celery_task_failures_total{{{W}}}[5m])) / task:celery_tasks:rate5m"
    ),
}


def _job_stale_expr() -> str:
    # One comparison per job: each job has its own interval, and the worker does not export it.
    parts = [
        f'(time() - max by (scheduled_job) (metrics_job_last_success_timestamp_seconds{{{W}, scheduled_job="{job}"}})'
        f" > {seconds * t.JOB_STALE_INTERVALS})"
        for job, seconds in t.JOB_INTERVALS_SECONDS.items()
    ]
    return " or ".join(parts)


def _panic_p95(severity: str, seconds: int) -> Alert:
    return Alert(
        name="PanicResponseP95High",
        expr=f"service_type_zone:panic_request_response_time_seconds:p95_rate5m > {seconds}",
        for_=t.PANIC_RESPONSE_P95_FOR,
        severity=severity,
        summary=(
            "Panic response p95 of {{ $labels.service_type }} in {{ $labels.zone }} is {{ $value | humanizeDuration }}"
        ),
        description=(
            "Over the last 5 minutes, 95% of {{ $labels.service_type }} panic requests in {{ $labels.zone }}"
            f" were answered within {{{{ $value | humanizeDuration }}}}; the {severity} threshold is {seconds} s."
        ),
    )


ENOUGH_ZONE_REQUESTS = f"zone:panic_requests_ended:increase15m >= {t.ZONE_MIN_ENDED_REQUESTS_15M}"

ALERTS: list[Alert] = [
    Alert(
        name="PanicMetricsWorkerDown",
        expr=f"up{{{W}}} == 0",
        for_=t.WORKER_DOWN_FOR,
        severity="critical",
        summary="Worker endpoint {{ $labels.instance }} is down",
        description=(
            "Prometheus cannot scrape {{ $labels.instance }}: the worker or its metrics endpoint is not running."
            " Its events wait in Redis and its host's metrics are not collected."
        ),
    ),
    Alert(
        name="MonitoringTargetDown",
        expr=f'up{{job!="{t.WORKER_JOB}"}} == 0',
        for_=t.TARGET_DOWN_FOR,
        severity="warning",
        summary="{{ $labels.job }} target {{ $labels.instance }} is down",
        description="Prometheus cannot scrape {{ $labels.instance }} of job {{ $labels.job }}.",
    ),
    Alert(
        name="DatabaseUnreachable",
        expr='dependency:dependency_up:newest{dependency="database"} == 0',
        for_=t.DEPENDENCY_DOWN_FOR,
        severity="critical",
        summary="The workers cannot reach the database",
        description=(
            "The latest health refresh (whichever host ran it) found PostgreSQL unreachable. Event tasks retry"
            " with backoff and go to the dead-letter store when their retries run out."
        ),
    ),
    Alert(
        name="BrokerUnreachable",
        expr='dependency:dependency_up:newest{dependency="broker"} == 0',
        for_=t.DEPENDENCY_DOWN_FOR,
        severity="critical",
        summary="The workers cannot reach the broker",
        description="The latest health refresh (whichever host ran it) found Redis (the broker) unreachable.",
    ),
    Alert(
        name="EventsNotConsumed",
        expr=(
            'queue:celery_queue_length:newest{queue="events"} > 0'
            f" unless on () sum(rate(metrics_events_stored_total{{{W}}}[10m])) > 0"
        ),
        for_=t.EVENTS_NOT_CONSUMED_FOR,
        severity="critical",
        summary="Events are waiting but none is being stored",
        description=(
            "{{ $value }} messages wait in the events queue and no event was stored in 10 minutes:"
            " the workers are up but not consuming."
        ),
    ),
    _panic_p95("warning", t.PANIC_RESPONSE_P95_WARNING_SECONDS),
    _panic_p95("critical", t.PANIC_RESPONSE_P95_CRITICAL_SECONDS),
    Alert(
        name="HttpErrorRatioHigh",
        expr=(
            f"endpoint:http_requests_5xx:ratio_rate5m > {t.HTTP_5XX_RATIO}"
            f" and on (endpoint) endpoint:http_requests:rate5m > {t.HTTP_MIN_REQUESTS_PER_SECOND}"
        ),
        for_=t.HTTP_FOR,
        severity="warning",
        summary="{{ $value | humanizePercentage }} of {{ $labels.endpoint }} requests fail with 5xx",
        description=(
            "The web app answers {{ $labels.endpoint }} with a 5xx status for {{ $value |"
            " humanizePercentage }} of requests (5 m)."
        ),
    ),
    Alert(
        name="HttpLatencyP95High",
        expr=(
            f"endpoint:http_request_duration_seconds:p95_rate5m > {t.HTTP_P95_SECONDS}"
            f" and on (endpoint) endpoint:http_requests:rate5m > {t.HTTP_MIN_REQUESTS_PER_SECOND}"
        ),
        for_=t.HTTP_FOR,
        severity="warning",
        summary="{{ $labels.endpoint }} p95 latency is {{ $value | humanizeDuration }}",
        description=(
            "95% of the web app's {{ $labels.endpoint }} requests took up to {{ $value | humanizeDuration }} (5 m)."
        ),
    ),
    Alert(
        name="LoginFailureRatioHigh",
        expr=(
            f"job:auth_login_failures:ratio_rate5m > {t.LOGIN_FAILURE_RATIO}"
            f" and on (job) job:auth_login_attempts:rate5m > {t.LOGIN_MIN_ATTEMPTS_PER_SECOND}"
        ),
        for_=t.LOGIN_FOR,
        severity="warning",
        summary="{{ $value | humanizePercentage }} of logins fail",
        description=(
            "{{ $value | humanizePercentage }} of login attempts failed over 5 minutes: credential stuffing"
            " or a broken login."
        ),
    ),
    Alert(
        name="AccountLockoutSpike",
        expr=f"sum by (job) (increase(auth_account_lockouts_total{{{W}}}[10m])) > {t.LOCKOUTS_PER_10M}",
        for_="0m",
        severity="warning",
        summary="{{ $value | humanize }} accounts locked in 10 minutes",
        description="{{ $value | humanize }} accounts were locked after failed logins in the last 10 minutes.",
    ),
    Alert(
        name="ZoneCompletionRatioLow",
        expr=f"zone:zone_completion_ratio:newest < {t.ZONE_COMPLETION_RATIO_MIN} and on (zone) {ENOUGH_ZONE_REQUESTS}",
        for_=t.ZONE_FOR,
        severity="warning",
        summary="Only {{ $value | humanizePercentage }} of panic requests in {{ $labels.zone }} complete",
        description=(
            "In the latest aggregated window, {{ $value | humanizePercentage }} of the panic requests that ended"
            " in {{ $labels.zone }} were completed (the rest cancelled or pranks)."
        ),
    ),
    Alert(
        name="ZoneResponseP95High",
        expr=(
            f"zone:zone_response_time_p95_seconds:newest > {t.ZONE_RESPONSE_P95_SECONDS}"
            f" and on (zone) {ENOUGH_ZONE_REQUESTS}"
        ),
        for_=t.ZONE_FOR,
        severity="warning",
        summary="Panic response p95 in {{ $labels.zone }} is {{ $value | humanizeDuration }}",
        description=(
            "In the latest aggregated window, the p95 response time in {{ $labels.zone }} was {{ $value |"
            " humanizeDuration }}."
        ),
    ),
    Alert(
        name="ZonePrankRatioHigh",
        expr=f"zone:zone_prank_ratio:newest > {t.ZONE_PRANK_RATIO} and on (zone) {ENOUGH_ZONE_REQUESTS}",
        for_=t.ZONE_FOR,
        severity="warning",
        summary="{{ $value | humanizePercentage }} of panic requests in {{ $labels.zone }} are pranks",
        description=(
            "In the latest aggregated window, {{ $value | humanizePercentage }} of the requests that ended"
            " in {{ $labels.zone }} were pranks."
        ),
    ),
    Alert(
        name="QueueBacklogGrowing",
        expr=(
            f"queue:celery_queue_length:newest > {t.QUEUE_BACKLOG_MESSAGES}"
            " and deriv(queue:celery_queue_length:newest[15m]) > 0"
        ),
        for_=t.QUEUE_BACKLOG_FOR,
        severity="warning",
        summary="Queue {{ $labels.queue }} holds {{ $value | humanize }} messages and is growing",
        description=(
            "The {{ $labels.queue }} queue grew for 15 minutes to {{ $value | humanize }} messages: the"
            " workers do not keep up."
        ),
    ),
    Alert(
        name="QueueOldestMessageTooOld",
        expr=f"queue:celery_queue_oldest_message_age_seconds:newest > {t.QUEUE_OLDEST_MESSAGE_SECONDS}",
        for_=t.QUEUE_OLDEST_FOR,
        severity="warning",
        summary="Oldest message in {{ $labels.queue }} waits for {{ $value | humanizeDuration }}",
        description=(
            "The oldest message in the {{ $labels.queue }} queue was published {{ $value | humanizeDuration }} ago."
        ),
    ),
    Alert(
        name="TaskFailureRatioHigh",
        expr=(
            f"task:celery_task_failures:ratio_rate5m > {t.TASK_FAILURE_RATIO}"
            f" and on (task) task:celery_tasks:rate5m > {t.TASK_MIN_RUNS_PER_SECOND}"
        ),
        for_=t.TASK_FAILURE_FOR,
        severity="warning",
        summary="{{ $value | humanizePercentage }} of {{ $labels.task }} runs fail",
        description="{{ $value | humanizePercentage }} of {{ $labels.task }} runs failed for good over 5 minutes.",
    ),
    Alert(
        name="TaskRetrying",
        expr=f"sum by (task) (increase(celery_task_retries_total{{{W}}}[10m])) > {t.TASK_RETRIES_PER_10M}",
        for_="5m",
        severity="warning",
        summary="{{ $labels.task }} retried {{ $value | humanize }} times in 10 minutes",
        description="{{ $labels.task }} keeps retrying: the database is unreachable from at least one worker.",
    ),
    Alert(
        name="EventsDeadLettered",
        # By instance: the dead letters are files on that host, and only that host can replay them.
        expr=f"sum by (instance, kind) (increase(metrics_events_dead_lettered_total{{{W}}}[10m])) > 0",
        for_="0m",
        severity="critical",
        summary=(
            "{{ $value | humanize }} {{ $labels.kind }} events went to the dead-letter store on {{ $labels.instance }}"
        ),
        description=(
            "Events ran out of retries and were written to DEAD_LETTER_DIR on {{ $labels.instance }}; they are not"
            " counted until `panic-metrics replay-dead-letters` runs on that host."
        ),
    ),
    Alert(
        name="EventsRejected",
        expr=(
            f"sum by (kind, reason) (increase(metrics_events_rejected_total{{{W}}}[10m])) > {t.EVENTS_REJECTED_PER_10M}"
        ),
        for_="0m",
        severity="warning",
        summary="{{ $value | humanize }} {{ $labels.kind }} events rejected ({{ $labels.reason }})",
        description="A caller sends {{ $labels.kind }} payloads that fail validation with reason {{ $labels.reason }}.",
    ),
    Alert(
        name="ScheduledJobStale",
        expr=_job_stale_expr(),
        for_=t.JOB_STALE_FOR,
        severity="warning",
        summary="Scheduled job {{ $labels.scheduled_job }} last succeeded {{ $value | humanizeDuration }} ago",
        description=(
            f"{{{{ $labels.scheduled_job }}}} has not succeeded for more than {t.JOB_STALE_INTERVALS} of its"
            " intervals: its gauges show old figures."
        ),
    ),
    Alert(
        name="MultiprocDirectoryGrowing",
        expr=f"metrics_multiproc_files{{{W}}} > {t.MULTIPROC_FILES}",
        for_=t.MULTIPROC_FOR,
        severity="warning",
        summary="{{ $labels.instance }} multiprocess directory holds {{ $value }} files",
        description=(
            "Dead pool children's metric files on {{ $labels.instance }} are not being merged; scrapes slow down."
        ),
    ),
    Alert(
        name="MultiprocDirectoryNotWritable",
        expr=f"metrics_multiproc_writable{{{W}}} == 0",
        for_=t.MULTIPROC_NOT_WRITABLE_FOR,
        severity="critical",
        summary="{{ $labels.instance }} cannot write its metric files",
        description=(
            "PROMETHEUS_MULTIPROC_DIR on {{ $labels.instance }} refuses new files (disk full or permissions):"
            " the worker stopped consuming its queues, events wait on the broker until it has room again."
        ),
    ),
    Alert(
        name="MultiprocCompactionFailing",
        expr=f"increase(metrics_multiproc_compaction_failures_total{{{W}}}[15m]) > 0",
        for_="0m",
        severity="warning",
        summary="Metric file compaction fails on {{ $labels.instance }}",
        description="Merging dead processes' metric files failed on {{ $labels.instance }}; the logs say why.",
    ),
    Alert(
        name="MultiprocFileSetAside",
        expr=f"increase(metrics_multiproc_files_set_aside_total{{{W}}}[{t.MULTIPROC_SET_ASIDE_WINDOW}]) > 0",
        for_="0m",
        severity="warning",
        summary="A damaged metric file was set aside on {{ $labels.instance }} ({{ $labels.reason }})",
        description=(
            "A file in the multiprocess directory on {{ $labels.instance }} could not be read whole; it was moved"
            " into its damaged/ folder and only what it held whole is still served (the logs name it)."
        ),
    ),
    Alert(
        name="MetricsScrapeSlow",
        expr=f"metrics_scrape_duration_seconds{{{W}}} > {t.SCRAPE_SECONDS}",
        for_=t.SCRAPE_FOR,
        severity="warning",
        summary="/metrics on {{ $labels.instance }} takes {{ $value | humanizeDuration }} to collect",
        description="Collecting the multiprocess directory on {{ $labels.instance }} is slow; a scrape may time out.",
    ),
    Alert(
        name="EventLagHigh",
        expr=f'kind_since:metrics_event_lag_seconds:p95_rate5m{{since="published"}} > {t.EVENT_LAG_P95_SECONDS}',
        for_=t.EVENT_LAG_FOR,
        severity="warning",
        summary="{{ $labels.kind }} events take {{ $value | humanizeDuration }} from publish to stored (p95)",
        description=(
            "95% of {{ $labels.kind }} events were stored within {{ $value | humanizeDuration }} of their publish."
        ),
    ),
]


def recording_rules_file() -> dict[str, Any]:
    """monitoring/prometheus/rules/recording.yml."""
    rules = [{"record": name, "expr": expr} for name, expr in RECORDING_RULES.items()]
    return {"groups": [{"name": "panic-metrics-recording", "rules": rules}]}


def alert_rules_file() -> dict[str, Any]:
    """monitoring/prometheus/rules/alerts.yml."""
    return {"groups": [{"name": "panic-metrics-alerts", "rules": [alert.as_rule() for alert in ALERTS]}]}
