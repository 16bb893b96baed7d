"""The expression checker itself: it must fail on what it exists to catch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring.promql import (
    Checker,
    Expression,
    all_expressions,
    known_names,
    metric_names,
    operands,
    substitute,
)
from tests.monitoring.support import Prometheus


def test_variables_are_substituted_and_an_unknown_one_is_refused() -> None:
    """Dashboard variables become the values they take when 'All' is selected; a typo is an error."""
    expr = 'sum(rate(x{instance=~"$instance", zone=~"${zone}"}[$__rate_interval]))'
    assert substitute(expr) == 'sum(rate(x{instance=~".*", zone=~".*"}[1m]))'
    with pytest.raises(KeyError, match="zoen"):
        substitute('x{zone=~"$zoen"}')


def test_metric_names_skip_functions_labels_and_grouping() -> None:
    """Only selected metric names come out: not functions, keywords, label names or values."""
    expr = (
        'sum by (zone, le) (rate(panic_request_response_time_seconds_bucket{job="w", zone=~"a|b"}[5m]))'
        " / on (zone) group_left sum without (instance) (job:auth_login_attempts:rate5m) > 0.5"
        " and time() - metrics_job_last_success_timestamp_seconds offset 1m < 1e3 or vector(0)"
    )
    assert metric_names(expr) == {
        "panic_request_response_time_seconds_bucket",
        "job:auth_login_attempts:rate5m",
        "metrics_job_last_success_timestamp_seconds",
    }


def test_operands_split_at_the_lowest_precedence_filter() -> None:
    """`or` before `and`/`unless` before comparisons; modifiers and outer parentheses are dropped."""
    assert operands("a > 1 unless on () b > 0") == ["a > 1", "b > 0"]
    assert operands("(x - y > 5) or (z > 3)") == ["x - y > 5", "z > 3"]
    assert operands('up{job!="w"} == bool 0') == ['up{job!="w"}', "0"]
    assert operands("x / on (a) group_left (b) y") is None
    assert operands('sum(rate(x{le=">"}[5m]))') is None


def test_every_rule_and_dashboard_expression_is_collected() -> None:
    """Rules, dashboard panels, variable queries and annotations all reach the checker."""
    sources = [expression.source for expression in all_expressions()]
    assert any(s.startswith("recording rule ") for s in sources)
    assert any(s.startswith("alert ") for s in sources)
    for board in ("worker-overview.json", "business.json", "http.json"):
        assert any(s.startswith(f"{board}: variable instance") for s in sources)
        assert any(s.startswith(f"{board}: annotation") for s in sources)
    assert len(sources) > 90


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus that scrapes only itself."""
    server = Prometheus(Path(tmp_path_factory.mktemp("prometheus")), rule_files=())
    server.start()
    yield server
    server.kill()


@pytest.mark.integration
def test_a_broken_expression_fails(prometheus: Prometheus) -> None:
    """A parse error (an unclosed parenthesis) fails the check with Prometheus's message."""
    checker = Checker(prometheus.query, known_names(set()))
    outcome = checker.check(Expression("broken", "sum(rate(http_requests_total[5m])"))
    assert not outcome.passed
    assert "parse error" in outcome.error


@pytest.mark.integration
def test_a_misspelt_metric_name_fails(prometheus: Prometheus) -> None:
    """A name neither in Prometheus nor declared by the worker fails, even though the query itself is valid."""
    checker = Checker(prometheus.query, known_names(prometheus.series_names()))
    outcome = checker.check(Expression("typo", "sum(rate(http_request_total[5m]))"))
    assert not outcome.passed
    assert outcome.unknown_names == {"http_request_total"}


@pytest.mark.integration
def test_a_real_name_without_data_fails(prometheus: Prometheus) -> None:
    """A declared metric that nothing has scraped returns no data: that fails too."""
    checker = Checker(prometheus.query, known_names(set()))
    outcome = checker.check(Expression("no data", "sum by (kind) (rate(metrics_events_stored_total[5m]))"))
    assert not outcome.passed
    assert not outcome.error
    assert not outcome.unknown_names


@pytest.mark.integration
def test_a_quiet_threshold_passes_on_its_operand_and_a_quiet_operand_still_fails(prometheus: Prometheus) -> None:
    """`x > big` with no result passes when x returns series; if x itself returns nothing, it fails."""
    checker = Checker(prometheus.query, known_names(set()))
    quiet = checker.check(Expression("quiet", "vector(time()) < 0"))
    assert quiet.passed
    assert quiet.operands_returned_data
    assert not quiet.returned_data
    empty = checker.check(Expression("empty operand", "vector(time()) < 0 and on () metrics_events_stored_total > 0"))
    assert not empty.passed
