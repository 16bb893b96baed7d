"""Every PromQL expression of the rules and dashboards, and a checker that runs them on a real Prometheus.

The rule for an expression that may legitimately return nothing: a filter
(a comparison such as `> 300`, or `and` / `or` / `unless`) is checked on its
operands. The expression passes if it returns series itself, or if it is
such a filter and every operand that is not a number literal passes by the
same rule, recursively. So `time() - max(x) > 180` passes when `time() -
max(x)` returns series; arithmetic, functions and aggregations are never
split: `rate(x[5m]) / rate(y[5m])` must return series as a whole.

Apart from that, an expression must parse (Prometheus answers 400 when it
does not) and name only metrics that exist: in Prometheus, in the worker's
definitions, among the recording rules, or Prometheus's own (`up`, `ALERTS`, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics import MetricWrapperBase

from app.metrics import definitions
from monitoring.generator import rules
from tests.support.processes import ROOT

DASHBOARDS = ROOT / "monitoring/grafana/dashboards"

#: Grafana's variables as the check substitutes them: every value of a multi-value variable.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "instance": ".*",
    "zone": ".*",
    "firm": ".*",
}
#: Series Prometheus makes itself, for every target or rule.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
#: Collected by app/metrics/housekeeping.py at scrape time, not declared in definitions.py.
HOUSEKEEPING = {
    "metrics_multiproc_files",
    "metrics_multiproc_bytes",
    "metrics_multiproc_writable",
    "metrics_multiproc_compactions_total",
    "metrics_multiproc_merged_processes_total",
    "metrics_multiproc_compaction_failures_total",
    "metrics_scrape_duration_seconds",
}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


@dataclass(frozen=True)
class Expression:
    """One expression and where it comes from (a rule or a dashboard panel)."""

    source: str
    expr: str


def declared_names() -> set[str]:
    """Sample names the worker can expose: definitions.py with their type's suffixes, and the housekeeping ones."""
    names = set(HOUSEKEEPING)
    for value in vars(definitions).values():
        if isinstance(value, MetricWrapperBase):
            base, kind = value._name, value._type
            names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def substitute(expr: str) -> str:
    """The expression with Grafana's `$var` and `${var}` replaced as VARIABLES says."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _label_values_selector(query: str) -> str:
    # label_values(selector, label): the selector is the PromQL part of a variable query.
    found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, flags=re.DOTALL)
    if not found:
        raise ValueError(f"unsupported variable query {query!r}")
    return found.group(1)


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(path: Path) -> list[Expression]:
    """Every query of one dashboard JSON: panel targets, variable queries and annotations."""
    board = json.loads(path.read_text())
    found = []
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            found.append(Expression(f"{path.name}: {panel['title']}", target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append(Expression(f"{path.name}: variable {variable['name']}", _label_values_selector(text)))
    for annotation in board.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append(Expression(f"{path.name}: annotation {annotation['name']}", annotation["expr"]))
    return found


def all_expressions() -> list[Expression]:
    """Every expression of the recording rules, the alert rules and the committed dashboards."""
    found = [Expression(f"recording rule {name}", expr) for name, expr in rules.RECORDING_RULES.items()]
    found += [Expression(f"alert {a.name} ({a.severity})", a.expr) for a in rules.ALERTS]
    for path in sorted(DASHBOARDS.glob("*.json")):
        found += dashboard_expressions(path)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, label matchers, ranges and grouping lists removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    tokens = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {token for token in tokens if token.lower() not in _KEYWORDS}


_FILTER_LEVELS = (("or",), ("and", "unless"), ("==", "!=", ">=", "<=", ">", "<"))
_MODIFIER = re.compile(r"\s*(bool\b|(on|ignoring|group_left|group_right)\s*\([^)]*\))")


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")") and _closing(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def _closing(expr: str, start: int) -> int:
    depth = 0
    for index in range(start, len(expr)):
        if expr[index] == "(":
            depth += 1
        elif expr[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _top_level_operators(expr: str) -> list[tuple[int, int, str]]:
    """(start, end, operator) of every top-level filter operator, outside brackets and strings."""
    found: list[tuple[int, int, str]] = []
    depth, index, quote = 0, 0, ""
    while index < len(expr):
        char = expr[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif depth == 0:
            word = (
                re.match(r"(or|and|unless)\b", expr[index:]) if (index == 0 or not expr[index - 1].isalnum()) else None
            )
            symbol = re.match(r"==|!=|>=|<=|>|<", expr[index:])
            if word and (index == 0 or not (expr[index - 1].isalnum() or expr[index - 1] in "_:")):
                found.append((index, index + len(word.group(1)), word.group(1)))
                index += len(word.group(1))
                continue
            if symbol:
                found.append((index, index + len(symbol.group(0)), symbol.group(0)))
                index += len(symbol.group(0))
                continue
        index += 1
    return found


def operands(expr: str) -> list[str] | None:
    """The operands of the expression's lowest-precedence top-level filter operator, or None if it has none."""
    expr = _strip_parens(expr)
    operators = _top_level_operators(expr)
    for level in _FILTER_LEVELS:
        cuts = [(start, end) for start, end, op in operators if op in level]
        if cuts:
            parts, previous = [], 0
            for start, end in cuts:
                parts.append(expr[previous:start])
                modifier_end = end
                while modifier := _MODIFIER.match(expr, modifier_end):
                    modifier_end = modifier.end()
                previous = modifier_end
            parts.append(expr[previous:])
            return [_strip_parens(part) for part in parts]
    return None


def _is_number(expr: str) -> bool:
    try:
        float(expr)
    except ValueError:
        return False
    return True


@dataclass
class Outcome:
    """What the checker found for one expression."""

    expression: Expression
    error: str = ""  # parse or query error
    unknown_names: set[str] = field(default_factory=set)
    returned_data: bool = False  # the expression itself returned series
    operands_returned_data: bool = False  # it returned none, but its filter's operands did (the rule above)

    @property
    def passed(self) -> bool:
        return not self.error and not self.unknown_names and (self.returned_data or self.operands_returned_data)

    def __str__(self) -> str:
        if self.error:
            verdict = f"does not parse: {self.error}"
        elif self.unknown_names:
            verdict = f"unknown metric names {sorted(self.unknown_names)}"
        elif self.returned_data:
            verdict = "returned data"
        elif self.operands_returned_data:
            verdict = "no data; its filter's operands returned data"
        else:
            verdict = "returned NO data (nor did its filter's operands)"
        return f"{self.expression.source}: {verdict}\n    {self.expression.expr}"


class Checker:
    """Runs expressions on a Prometheus at `query` (an instant-query function) knowing `known_names`."""

    def __init__(self, query: Callable[[str], httpx.Response], known_names: set[str]) -> None:
        self.query = query
        self.known_names = known_names

    def _has_data(self, expr: str) -> tuple[bool, str]:
        response = self.query(expr)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            return False, str(body.get("error", response.text))
        result = body["data"]
        return (bool(result["result"]) if result["resultType"] in {"vector", "matrix"} else True), ""

    def _operands_have_data(self, expr: str) -> bool:
        parts = operands(expr)
        if parts is None:
            return False
        checked = [part for part in parts if not _is_number(part)]
        return bool(checked) and all(self._has_data(part)[0] or self._operands_have_data(part) for part in checked)

    def check(self, expression: Expression) -> Outcome:
        """Parse, name and data checks of one expression."""
        outcome = Outcome(expression)
        try:
            expr = substitute(expression.expr)
        except KeyError as exc:
            outcome.error = str(exc)
            return outcome
        outcome.unknown_names = metric_names(expr) - self.known_names
        outcome.returned_data, outcome.error = self._has_data(expr)
        if not outcome.error and not outcome.returned_data:
            outcome.operands_returned_data = self._operands_have_data(expr)
        return outcome

    def check_all(self, expressions: Iterable[Expression]) -> list[Outcome]:
        """Check every expression."""
        return [self.check(expression) for expression in expressions]


def known_names(series_in_prometheus: set[str]) -> set[str]:
    """Every name an expression may select: present in Prometheus, declared by the worker, recorded, or Prometheus's."""
    return series_in_prometheus | declared_names() | set(rules.RECORDING_RULES) | PROMETHEUS_OWN
