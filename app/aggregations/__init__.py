"""The SQL behind the scheduled jobs: zone and firm performance, active subscriptions.

Plain functions over a session that return plain values; the jobs that run
them once per window live in app.jobs, the gauges they set in
app.aggregations.gauges.
"""
