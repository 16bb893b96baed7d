"""The Grafana dashboards, built with grafana-foundation-sdk and written out as JSON.

Three dashboards, each answering one operator's question:
- Worker overview: is the pipeline healthy (targets, throughput, rejects, lag, tasks, queues, jobs, files)?
- Business: how are panic requests answered, per zone and firm, and how are customers doing?
- HTTP: how does the platform's web app serve its routes?

Every panel's query reads a real metric (app/metrics/definitions.py) or a
recording rule (rules.py); threshold lines come from thresholds.py.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as d
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitoring.generator import thresholds as t

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
I = f'job="{t.WORKER_JOB}", instance=~"$instance"'  # noqa: E741 - the selector every raw query starts with
RATE = "$__rate_interval"
TAGS = ["panic-metrics"]


def q(expr: str, legend: str = "", *, instant: bool = False, table_format: bool = False) -> prometheus.Dataquery:
    """One Prometheus query on the dashboard's data source."""
    query = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DS)
    if instant:
        query = query.instant()
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def _ref_ids(targets: tuple[prometheus.Dataquery, ...]) -> list[prometheus.Dataquery]:
    # Grafana tells a panel's queries apart by refId: A, B, C...
    return [target.ref_id(chr(ord("A") + index)) for index, target in enumerate(targets)]


def _thresholds(*steps: tuple[float, str]) -> d.ThresholdsConfig:
    return (
        d.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=None, color="green"), *(dm.Threshold(value=v, color=c) for v, c in steps)])
    )


def ts(
    title: str,
    *targets: prometheus.Dataquery,
    unit: str = "short",
    description: str = "",
    limits: tuple[tuple[float, str], ...] = (),
    width: int = 12,
) -> timeseries.Panel:
    """A time series panel; `limits` draw the alert thresholds as dashed lines."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(_ref_ids(targets))
        .unit(unit)
        .height(8)
        .span(width)
    )
    if limits:
        panel = panel.thresholds(_thresholds(*limits)).thresholds_style(
            _threshold_style(),
        )
    return panel


def _threshold_style() -> Any:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.models import common as cm

    return cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)


def single(
    title: str,
    target: prometheus.Dataquery,
    *,
    unit: str = "short",
    limits: tuple[tuple[float, str], ...] = (),
    width: int = 6,
) -> stat.Panel:
    """A stat panel: the current value, coloured by the thresholds."""
    panel = stat.Panel().title(title).datasource(DS).targets(_ref_ids((target,))).unit(unit).height(5).span(width)
    if limits:
        panel = panel.thresholds(_thresholds(*limits))
    return panel


def tabulated(title: str, *targets: prometheus.Dataquery, description: str = "", width: int = 24) -> table.Panel:
    """A table of instant queries merged on their labels."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(_ref_ids(targets))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .height(9)
        .span(width)
    )


def _variables(*, zone: bool, firm: bool) -> list[Builder[dm.VariableModel]]:
    found: list[Builder[dm.VariableModel]] = [
        d.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable("instance", "Worker host", f'label_values(up{{job="{t.WORKER_JOB}"}}, instance)'),
    ]
    if zone:
        found.append(
            _query_variable("zone", "Zone", f'label_values(panic_requests_total{{job="{t.WORKER_JOB}"}}, zone)')
        )
    if firm:
        found.append(
            _query_variable("firm", "Firm", f'label_values(firm_completion_ratio{{job="{t.WORKER_JOB}"}}, firm_id)')
        )
    return found


def _query_variable(name: str, label: str, query: str) -> d.QueryVariable:
    return (
        d.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _base(uid: str, title: str, description: str, *, zone: bool = False, firm: bool = False) -> d.Dashboard:
    return (
        d.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables(_variables(zone=zone, firm=firm))
        .annotation(
            d.AnnotationQuery()
            .name("Firing alerts")
            .datasource(DS)
            .enable(True)
            .icon_color("red")
            .expr('ALERTS{alertstate="firing"}')
        )
        .link(d.DashboardLink("panic-metrics").type(dm.DashboardLinkType.DASHBOARDS).tags(TAGS).as_dropdown(True))
    )


def worker_overview() -> d.Dashboard:
    """Is the pipeline healthy? Targets, throughput, rejects, lag, tasks, queues, jobs, the metric files."""
    w = f'job="{t.WORKER_JOB}"'
    return (
        _base(
            "panic-metrics-worker",
            "panic-metrics / Worker overview",
            "Is the event pipeline healthy: targets, throughput, rejects, lag, tasks, queues, scheduled jobs.",
        )
        .with_row(d.Row("Targets and dependencies"))
        .with_panel(single("Worker endpoints up", q(f"sum(up{{{I}}})"), limits=()))
        .with_panel(single("Worker endpoints down", q(f"count(up{{{I}}} == 0) or vector(0)"), limits=((1, "red"),)))
        .with_panel(
            ts(
                "Dependencies (1 = up)",
                q("dependency:dependency_up:newest", "{{dependency}}"),
                description="As the newest health refresh found them, whichever host ran it.",
                width=12,
            )
        )
        .with_row(d.Row("Events"))
        .with_panel(
            single(
                "Events stored (all hosts)",
                q(f"sum(metrics_events_stored_total{{{I}}})"),
                width=24,
            ).description(
                "Stored since each host's worker started, summed over the hosts found (one series per host: no"
                " double count); a restarted worker starts again from 0. Per second by kind: the next panel."
            )
        )
        .with_panel(
            ts("Events stored / s by kind", q(f"sum by (kind) (rate(metrics_events_stored_total{{{I}}}[{RATE}]))"))
        )
        .with_panel(
            ts(
                "Duplicates / s by kind (redeliveries)",
                q(f"sum by (kind) (rate(metrics_events_duplicate_total{{{I}}}[{RATE}]))"),
            )
        )
        .with_panel(
            ts(
                "Rejected by kind and reason",
                q(f"sum by (kind, reason) (increase(metrics_events_rejected_total{{{I}}}[{RATE}]))"),
                limits=((t.EVENTS_REJECTED_PER_10M, "orange"),),
            )
        )
        .with_panel(
            ts(
                "Dead-lettered by kind",
                q(f"sum by (kind) (increase(metrics_events_dead_lettered_total{{{I}}}[{RATE}]))"),
                description="Replay with `panic-metrics replay-dead-letters` on the host that wrote them.",
            )
        )
        .with_panel(
            ts(
                "Event lag p95 (all hosts)",
                q("kind_since:metrics_event_lag_seconds:p95_rate5m", "{{kind}} since {{since}}"),
                unit="s",
                limits=((t.EVENT_LAG_P95_SECONDS, "orange"),),
            )
        )
        .with_row(d.Row("Tasks"))
        .with_panel(
            ts("Task duration p95 (all hosts)", q("task:celery_task_duration_seconds:p95_rate5m", "{{task}}"), unit="s")
        )
        .with_panel(
            ts(
                "Task failures and retries / s",
                q(f"sum by (task) (rate(celery_task_failures_total{{{I}}}[{RATE}]))", "failed {{task}}"),
                q(f"sum by (task) (rate(celery_task_retries_total{{{I}}}[{RATE}]))", "retried {{task}}"),
            )
        )
        .with_row(d.Row("Queues"))
        .with_panel(
            ts(
                "Queue depth",
                q("queue:celery_queue_length:newest", "{{queue}}"),
                limits=((t.QUEUE_BACKLOG_MESSAGES, "orange"),),
                description="The broker's queues as the newest health refresh read them, whichever host ran it.",
            )
        )
        .with_panel(
            ts(
                "Oldest message age",
                q("queue:celery_queue_oldest_message_age_seconds:newest", "{{queue}}"),
                unit="s",
                limits=((t.QUEUE_OLDEST_MESSAGE_SECONDS, "orange"),),
            )
        )
        .with_row(d.Row("Scheduled jobs"))
        .with_panel(
            ts(
                "Time since last success",
                q(
                    f"time() - max by (scheduled_job) (metrics_job_last_success_timestamp_seconds{{{w}}})",
                    "{{scheduled_job}}",
                ),
                unit="s",
                description="A job is stale past three of its intervals (ScheduledJobStale).",
            )
        )
        .with_panel(
            ts(
                "Job runs: windows done and failures",
                q(
                    f'sum by (scheduled_job) (increase(metrics_job_windows_total{{{I}, outcome="done"}}[{RATE}]))',
                    "done {{scheduled_job}}",
                ),
                q(
                    f"sum by (scheduled_job) (increase(metrics_job_failures_total{{{I}}}[{RATE}]))",
                    "failed {{scheduled_job}}",
                ),
            )
        )
        .with_row(d.Row("Multiprocess directory and scrapes"))
        .with_panel(
            ts(
                "Metric files",
                q(f"metrics_multiproc_files{{{I}}}", "{{instance}}"),
                limits=((t.MULTIPROC_FILES, "orange"),),
                width=8,
            )
        )
        .with_panel(
            ts("Metric file bytes", q(f"metrics_multiproc_bytes{{{I}}}", "{{instance}}"), unit="bytes", width=8)
        )
        .with_panel(
            ts(
                "Scrape time",
                q(f"metrics_scrape_duration_seconds{{{I}}}", "collect {{instance}}"),
                q(f"scrape_duration_seconds{{{I}}}", "Prometheus scrape {{instance}}"),
                unit="s",
                limits=((t.SCRAPE_SECONDS, "orange"),),
                width=8,
            )
        )
    )


def business() -> d.Dashboard:
    """How are panic requests answered, per zone and firm; how are customers doing?"""
    z = f'{I}, zone=~"$zone"'
    firm = f'job="{t.WORKER_JOB}", firm_id=~"$firm"'
    return (
        _base(
            "panic-metrics-business",
            "panic-metrics / Business",
            "Panic requests and response times per zone and firm; subscriptions, credits, logins, notifications.",
            zone=True,
            firm=True,
        )
        .with_row(d.Row("Panic requests"))
        .with_panel(
            ts(
                "Panic requests / s by service type and status",
                q(f"sum by (service_type, status) (rate(panic_requests_total{{{z}}}[{RATE}]))"),
            )
        )
        .with_panel(
            ts(
                "Response time p50 / p95 by zone and service type",
                q(
                    'service_type_zone:panic_request_response_time_seconds:p95_rate5m{zone=~"$zone"}',
                    "p95 {{service_type}} {{zone}}",
                ),
                q(
                    'service_type_zone:panic_request_response_time_seconds:p50_rate5m{zone=~"$zone"}',
                    "p50 {{service_type}} {{zone}}",
                ),
                unit="s",
                limits=(
                    (t.PANIC_RESPONSE_P95_WARNING_SECONDS, "orange"),
                    (t.PANIC_RESPONSE_P95_CRITICAL_SECONDS, "red"),
                ),
            )
        )
        .with_panel(
            heatmap.Panel()
            .title("Zone response p95 (latest aggregated window)")
            .datasource(DS)
            .targets(_ref_ids((q('zone:zone_response_time_p95_seconds:newest{zone=~"$zone"}', "{{zone}}"),)))
            .unit("s")
            .height(8)
            .span(12)
        )
        .with_panel(
            ts(
                "Completion and prank ratios by zone (latest window)",
                q('zone:zone_completion_ratio:newest{zone=~"$zone"}', "completed {{zone}}"),
                q('zone:zone_prank_ratio:newest{zone=~"$zone"}', "pranks {{zone}}"),
                unit="percentunit",
            )
        )
        .with_panel(
            tabulated(
                "Firm league table (latest window)",
                q(f"firm_id:firm_response_time_p95_seconds:newest{{{firm}}}", instant=True, table_format=True),
                q(f"firm_id:firm_completion_ratio:newest{{{firm}}}", instant=True, table_format=True),
                q(f"firm_id:firm_prank_ratio:newest{{{firm}}}", instant=True, table_format=True),
                description=(
                    "Per firm: response p95 (s), completion ratio, prank ratio, from aggregate_firm_performance."
                ),
            )
        )
        .with_panel(
            ts(
                "Prank detections / s by detector",
                q(f"sum by (detector) (rate(prank_detections_total{{{z}}}[{RATE}]))"),
            )
        )
        .with_panel(
            ts(
                "Requests that ended in the last 15 minutes, by zone",
                q('zone:panic_requests_ended:increase15m{zone=~"$zone"}', "{{zone}}"),
                limits=((t.ZONE_MIN_ENDED_REQUESTS_15M, "blue"),),
                description="Zone alerts wait for this many ended requests before they may fire.",
            )
        )
        .with_row(d.Row("Customers"))
        .with_panel(ts("Active subscriptions by plan", q("plan:subscriptions_active:newest", "{{plan}}"), width=8))
        .with_panel(
            ts(
                "Subscription purchases, renewals, cancellations / h",
                q(f"sum by (plan, action) (rate(subscription_events_total{{{I}}}[{RATE}])) * 3600"),
                width=8,
            )
        )
        .with_panel(
            ts(
                "Credits moved / h by type",
                q(f"sum by (type) (rate(credits_total{{{I}}}[{RATE}])) * 3600", "credits {{type}}"),
                q(f"sum by (type) (rate(credit_transactions_total{{{I}}}[{RATE}])) * 3600", "transactions {{type}}"),
                width=8,
            )
        )
        .with_panel(
            ts(
                "Logins / s by result",
                q(f"sum by (result) (rate(auth_login_attempts_total{{{I}}}[{RATE}]))"),
                width=8,
            )
        )
        .with_panel(
            ts(
                "Login failure ratio (all hosts)",
                q("job:auth_login_failures:ratio_rate5m", "failures"),
                unit="percentunit",
                limits=((t.LOGIN_FAILURE_RATIO, "orange"),),
                width=8,
            )
        )
        .with_panel(
            ts(
                "Account lockouts by user type",
                q(f"sum by (user_type) (increase(auth_account_lockouts_total{{{I}}}[{RATE}]))"),
                width=8,
            )
        )
        .with_panel(
            ts(
                "Notifications / s by channel and status",
                q(f"sum by (channel, status) (rate(notifications_total{{{I}}}[{RATE}]))"),
                width=24,
            )
        )
    )


def http() -> d.Dashboard:
    """How does the platform's web app serve its routes (from http_request events)?"""
    return (
        _base(
            "panic-metrics-http",
            "panic-metrics / HTTP",
            "The platform's web app, from the http_request events it records: rate, errors and latency by route.",
        )
        .with_row(d.Row("Traffic"))
        .with_panel(ts("Requests / s by route", q(f"sum by (endpoint) (rate(http_requests_total{{{I}}}[{RATE}]))")))
        .with_panel(ts("Requests / s by status", q(f"sum by (status) (rate(http_requests_total{{{I}}}[{RATE}]))")))
        .with_row(d.Row("Errors and latency"))
        .with_panel(
            ts(
                "5xx ratio by route (all hosts)",
                q("endpoint:http_requests_5xx:ratio_rate5m", "{{endpoint}}"),
                unit="percentunit",
                limits=((t.HTTP_5XX_RATIO, "red"),),
            )
        )
        .with_panel(
            ts(
                "Latency p50 / p95 by route (all hosts)",
                q("endpoint:http_request_duration_seconds:p95_rate5m", "p95 {{endpoint}}"),
                q("endpoint:http_request_duration_seconds:p50_rate5m", "p50 {{endpoint}}"),
                unit="s",
                limits=((t.HTTP_P95_SECONDS, "red"),),
            )
        )
        .with_row(d.Row("Connections and cache"))
        .with_panel(ts("WebSocket connections by source", q(f"max by (source) (websocket_connections{{{I}}})")))
        .with_panel(
            ts(
                "Cache hit ratio",
                q(
                    f'sum(rate(cache_requests_total{{{I}, result="hit"}}[{RATE}]))'
                    f" / sum(rate(cache_requests_total{{{I}}}[{RATE}]))",
                    "hit ratio",
                ),
                unit="percentunit",
            )
        )
    )


#: file name under monitoring/grafana/dashboards/ -> builder
DASHBOARDS = {"worker-overview.json": worker_overview, "business.json": business, "http.json": http}


def render(builder: d.Dashboard) -> str:
    """The dashboard as the JSON committed under monitoring/grafana/dashboards/."""
    data: Any = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
