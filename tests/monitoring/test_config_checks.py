"""The monitoring configuration as Prometheus's and Alertmanager's own tools see it.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager
packages, installed by scripts/test-services.sh (`make test`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import beat_schedule
from app.config import Settings
from monitoring.generator import differences, rules, thresholds
from tests.support.processes import ROOT

MONITORING = ROOT / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager/alertmanager.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: run `make services` (scripts/test-services.sh)"
    return path


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_generated_rules_and_dashboards_are_committed_as_generated() -> None:
    """Regenerating the rules and dashboards from monitoring/generator changes no committed file."""
    assert differences() == [], "run `make monitoring` and commit the result"


def test_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts prometheus.yml and finds both rule files."""
    out = run(tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "2 rule files found" in out


def _readme_kubernetes_example() -> dict[str, object]:
    """The worker job's discovery in README's Kubernetes example (the YAML block after "On Kubernetes")."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"On Kubernetes.*?```yaml\n(.*?)```", readme, re.DOTALL)
    assert found is not None, "README.md has no Kubernetes pod discovery example"
    example: dict[str, object] = yaml.safe_load(found.group(1))
    return example


def test_readme_kubernetes_pod_discovery_example_is_valid(tmp_path: Path) -> None:
    """README's Kubernetes example: its relabelling passes promtool in prometheus.yml's worker job; pod role, one port.

    Debian's promtool is built without Kubernetes discovery ("field
    kubernetes_sd_configs not found"), so the discovery block itself is
    checked for shape here, and its relabelling by promtool.
    """
    example = _readme_kubernetes_example()
    assert set(example) == {"kubernetes_sd_configs", "relabel_configs"}
    (discovery,) = example["kubernetes_sd_configs"]  # type: ignore[misc]
    assert discovery["role"] == "pod"
    assert [selector["role"] for selector in discovery["selectors"]] == ["pod"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS / path) for path in config["rule_files"]]
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == thresholds.WORKER_JOB)
    job["file_sd_configs"] = [{"files": [str(PROMETHEUS / pattern) for pattern in job["file_sd_configs"][0]["files"]]}]
    job["relabel_configs"] = example["relabel_configs"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert "is valid prometheus config file syntax" in out


def test_rule_files_are_valid() -> None:
    """`promtool check rules` accepts every rule, and counts what the generator wrote."""
    out = run(tool("promtool"), "check", "rules", *(str(p) for p in sorted((PROMETHEUS / "rules").glob("*.yml"))))
    assert f"{len(rules.RECORDING_RULES)} rules found" in out
    assert f"{len(rules.ALERTS)} rules found" in out


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(path: Path) -> None:
    """`promtool test rules`: each case's alerts fire (or stay quiet) with the expected labels and annotations."""
    out = run(tool("promtool"), "test", "rules", str(path))
    assert "SUCCESS" in out


def _rule_tests() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = []
    for path in RULE_TESTS:
        cases.extend(yaml.safe_load(path.read_text())["tests"])
    return cases


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert (each severity of it) fires in some case with labels and annotations, and stays quiet in another."""
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for case in _rule_tests():
        for check in case.get("alert_rule_test", []):  # type: ignore[attr-defined]
            if check["exp_alerts"]:
                for alert in check["exp_alerts"]:
                    assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                    fired.add((check["alertname"], alert["exp_labels"]["severity"]))
            else:
                quiet.add(check["alertname"])
    # A quiet case is either an explicit `exp_alerts: []` or a series in a firing case that must not fire;
    # the explicit ones are listed here, so every alert has one.
    expected = {(alert.name, alert.severity) for alert in rules.ALERTS}
    assert expected - fired == set(), "alerts with no firing case"
    assert {alert.name for alert in rules.ALERTS} - quiet == set(), "alerts with no quiet case"


def test_every_recording_rule_has_an_expression_test() -> None:
    """Each recording rule's value is checked by a promql_expr_test."""
    tested = {
        re.match(r"[\w:]+", check["expr"]).group(0)  # type: ignore[union-attr]
        for case in _rule_tests()
        for check in case.get("promql_expr_test", [])  # type: ignore[attr-defined]
    }
    assert set(rules.RECORDING_RULES) - tested == set()


def test_every_alert_has_severity_annotations_and_a_runbook_anchor() -> None:
    """severity is critical or warning; runbook_url points at a heading of monitoring/RUNBOOK.md."""
    runbook = (MONITORING / "RUNBOOK.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    for group in yaml.safe_load((PROMETHEUS / "rules/alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert rule["annotations"]["summary"]
            assert rule["annotations"]["description"]
            url = rule["annotations"]["runbook_url"]
            assert url.startswith(thresholds.RUNBOOK_URL + "#")
            assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no '## {rule['alert']}' in RUNBOOK.md"


def test_recording_rule_names_follow_level_metric_operations() -> None:
    """`level:metric:operations`: three parts, the metric part without _total."""
    for name in rules.RECORDING_RULES:
        level, metric, operations = name.split(":")
        assert level, name
        assert operations, name
        assert metric, name
        assert not metric.endswith("_total"), name


def test_job_intervals_are_the_beat_schedule_defaults() -> None:
    """The stale-job thresholds are computed from the intervals the beat schedule uses by default."""
    defaults = Settings.model_construct()  # the field defaults, whatever this process's environment says
    assert beat_schedule.intervals(defaults) == thresholds.JOB_INTERVALS_SECONDS


def test_alertmanager_config_is_valid() -> None:
    """`amtool check-config` accepts alertmanager.yml."""
    out = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in out


#: Every route of alertmanager.yml: labels of an alert -> the receivers it must reach.
ROUTES = [
    ({"alertname": "PanicMetricsWorkerDown", "severity": "critical"}, "webhook,oncall"),
    ({"alertname": "PanicResponseP95High", "severity": "critical", "zone": "harbour"}, "webhook,oncall"),
    ({"alertname": "PanicResponseP95High", "severity": "warning", "zone": "harbour"}, "webhook,slack"),
    ({"alertname": "EventsRejected", "severity": "warning"}, "webhook,slack"),
    ({"alertname": "SomethingElse", "severity": "info"}, "webhook,slack"),
    ({"alertname": "NoSeverity"}, "webhook,slack"),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES, ids=[r for _, r in ROUTES])
def test_alertmanager_routes(labels: dict[str, str], receivers: str) -> None:
    """`amtool config routes test --verify.receivers`: each kind of alert reaches exactly its receivers."""
    run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receivers}",
        *(f"{k}={v}" for k, v in labels.items()),
    )


def test_every_alert_severity_is_routed_to_people() -> None:
    """Each severity an alert carries reaches a receiver other than the webhook."""
    severities = {alert.severity for alert in rules.ALERTS}
    routed = {labels.get("severity") for labels, receivers in ROUTES if receivers != "webhook"}
    assert severities <= routed


def test_inhibitions_name_real_alerts() -> None:
    """Every alert name an inhibit rule matches is one of ours (a typo would silence nothing)."""
    names = {alert.name for alert in rules.ALERTS}
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            found = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            if found:
                assert set(found.group(1).split("|")) <= names, matcher


def test_readme_operations_lists_every_alert_with_its_runbook_link() -> None:
    """The README's alert table names each alert and links its runbook section."""
    readme = (ROOT / "README.md").read_text()
    for alert in rules.ALERTS:
        assert f"[{alert.name}](monitoring/RUNBOOK.md#{alert.name.lower()})" in readme, alert.name


@pytest.mark.parametrize("board", ["worker-overview.json", "business.json", "http.json"])
def test_dashboards_refresh_every_30s_with_variables_annotations_and_distinct_queries(board: str) -> None:
    """30 s refresh, datasource and instance variables (zone and firm on Business), firing alerts as annotations,
    every query on the chosen data source with its own refId."""
    data = json.loads((MONITORING / "grafana/dashboards" / board).read_text())
    assert data["refresh"] == "30s"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    expected = {"datasource", "instance"} | ({"zone", "firm"} if board == "business.json" else set())
    assert set(variables) == expected
    assert variables["datasource"]["type"] == "datasource"
    assert [a["expr"] for a in data["annotations"]["list"]] == ['ALERTS{alertstate="firing"}']
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert all(ref_ids), panel["title"]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


def test_grafana_provisioning_points_at_the_prometheus_and_the_dashboards() -> None:
    """The datasource is the stack's Prometheus; the dashboard provider reads the mounted dashboards folder."""
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/panic-metrics.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards/panic-metrics"
