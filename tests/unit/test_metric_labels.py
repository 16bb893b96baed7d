"""No metric of ours carries a label Prometheus sets on the scrape target (`job`, `instance`, ...).

Prometheus gives every scraped series its target's labels. A metric's own
label of the same name is renamed `exported_<name>` (the default), or, with
`honor_labels: true`, overwrites the target's: the scheduled-job metrics once
exported `job` and every rule had to say `exported_job`. Prometheus's naming
guidance says not to export target-label names; these tests hold every metric
the worker, its endpoint and the client define to that.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

import app
import workers
from app.metrics import definitions
from app.metrics.housekeeping import Housekeeper, HousekeepingCollector
from panic_metrics_client.metrics import ClientMetrics
from tests.support.processes import ROOT

#: Every scraped series has these two, whatever the scrape config says.
ALWAYS_ON_TARGETS = frozenset({"job", "instance"})


def shipped_target_labels() -> frozenset[str]:
    """`job`, `instance`, and every label the shipped prometheus.yml puts on a target (static or relabelled)."""
    config = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    labels = set(ALWAYS_ON_TARGETS)
    for scrape in config["scrape_configs"]:
        for static in scrape.get("static_configs", []):
            labels.update(static.get("labels", {}))
        labels.update(rule["target_label"] for rule in scrape.get("relabel_configs", []) if "target_label" in rule)
    return frozenset(labels)


def import_every_module() -> None:
    """Import all of app/ and workers/, so every metric defined at import is in the default registry."""
    for package in (app, workers):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)


def registered(registry: CollectorRegistry) -> list[Collector]:
    # prometheus_client has no public way to list a registry's collectors.
    return list(registry._collector_to_names)


def label_names(collector: Collector) -> Iterator[tuple[str, str]]:
    """(metric name, label name) for each label a collector declares or exposes.

    A labelled metric with no child yet exposes no sample, so a scrape alone
    would miss its labels: a metric wrapper is read from its declaration.
    """
    if isinstance(collector, MetricWrapperBase):
        for label in collector._labelnames:
            yield collector._name, label
        return
    for family in collector.collect():
        for sample in family.samples:
            for label in sample.labels:
                yield family.name, label


def clashes(collectors: Iterable[Collector], target_labels: frozenset[str]) -> list[str]:
    """`metric{label}` for every label of those collectors named like a target label."""
    return sorted(
        f"{metric}{{{label}}}"
        for collector in collectors
        for metric, label in label_names(collector)
        if label in target_labels
    )


def test_no_metric_in_the_default_registry_uses_a_target_label() -> None:
    """Every metric app/ and workers/ register (definitions.py today, any module tomorrow) avoids target labels."""
    import_every_module()
    collectors = registered(REGISTRY)
    wrappers = [c for c in collectors if isinstance(c, MetricWrapperBase)]
    # The check saw the worker's metrics, the scheduled-job ones among them: not an empty registry.
    defined = [v for v in vars(definitions).values() if isinstance(v, MetricWrapperBase)]
    assert defined
    assert all(metric in wrappers for metric in defined)
    assert definitions.JOB_LAST_SUCCESS._labelnames == ("scheduled_job",)
    assert clashes(collectors, shipped_target_labels()) == []


def test_no_scrape_time_or_client_metric_uses_a_target_label(tmp_path: Path) -> None:
    """The endpoint's housekeeping metrics and the client's own metrics avoid target labels too."""
    housekeeping = CollectorRegistry()
    housekeeping.register(HousekeepingCollector(Housekeeper(tmp_path, interval_seconds=60)))
    client = CollectorRegistry()
    ClientMetrics(client)
    collectors = registered(housekeeping) + registered(client)
    seen = {name for collector in collectors for name in label_names(collector)}
    assert ("panic_metrics_client_events", "outcome") in seen  # the check reads the client's declarations
    assert clashes(collectors, shipped_target_labels()) == []


def test_the_check_finds_a_declared_or_exposed_target_label() -> None:
    """A metric declaring `job`, one declaring `instance` and a collector exposing `job` are all reported."""

    class Exposing(Collector):
        def collect(self) -> Iterable[Metric]:
            family = GaugeMetricFamily("exposed", "A sample with a job label.", labels=["job"])
            family.add_metric(["x"], 1.0)
            yield family

    registry = CollectorRegistry()
    Counter("declared_job", "A counter with a job label.", ["job", "outcome"], registry=registry)
    Gauge("declared_instance", "A gauge with an instance label.", ["instance"], registry=registry)
    Gauge("harmless", "A gauge with a label of its own.", ["scheduled_job"], registry=registry)
    registry.register(Exposing())
    assert clashes(registered(registry), ALWAYS_ON_TARGETS) == [
        "declared_instance{instance}",
        "declared_job{job}",
        "exposed{job}",
    ]
