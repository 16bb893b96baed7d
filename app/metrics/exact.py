"""Order-free exact sums: why no merge ever lowers an exposed counter, bucket, ``_count`` or ``_sum``.

The stock ``MultiProcessCollector`` adds the files' values left to right in
glob order, and a merge used to pre-add a dead child's value into the
archive: the same numbers added in another order, so the float result could
come out one ulp lower after a merge (7.1272 -> 7.127199999999999), and
Prometheus reads any drop as a counter reset.

Here every additive series (counters, summaries, histogram buckets,
``_count`` and ``_sum``, ``sum``/``livesum`` gauges) is exposed as

    V = fl(S),  S = the exact real sum of every live file's value
                    + the exact real sum of every value ever archived,

computed with ``math.fsum`` (correctly rounded, whatever the order of its
inputs). The archive keeps what it merged as Shewchuk's non-overlapping
partials (``grow``): a list of floats whose exact sum is exactly the sum of
everything merged, with no rounding at all.

Proof that V never decreases between two scrapes (of a series whose
increments are non-negative, as counters' and histograms' are):

1. A live file's value only grows: each increment stores fl(v + a) with
   a >= 0, and rounding is monotone, so fl(v + a) >= v.
2. A merge moves a dead file's value v out of the live set and into the
   partials exactly (``grow`` is error-free), so S is unchanged by it.
   Scrapes read under a shared lock and merges hold an exclusive one, so a
   scrape sees a state before or after a merge, never half of one.
3. Resolving a dead child's pending record (``app.metrics.pending``) raises
   its file's values to targets computed from those values by the same
   additions, so by 1. they only grow.
4. Hence S(t2) >= S(t1) for scrapes t1 < t2, and since correct rounding is
   monotone (x <= y implies fl(x) <= fl(y)), V(t2) >= V(t1).  QED.

The same argument gives the equality rule the tests check: V equals
``math.fsum`` of the per-file values the stock collector would read if
nothing had been merged (bit for bit), and equals the stock collector's
left-to-right total exactly whenever that total is exact (integer counts,
multiples of a power of two).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

#: File prefixes whose values add up; their archives keep exact partials.
ADDITIVE_PREFIXES = frozenset({"counter", "histogram", "summary", "gauge_sum"})
#: Suffix of the partials file beside ``<prefix>_archive.db``. Not ``.db``:
#: the stock collector must not read it (it reads the rounded archive).
PARTIALS_SUFFIX = ".partials"

_ADDITIVE_GAUGE_MODES = frozenset({"sum", "livesum"})
_EXTREME_GAUGE_MODES = {"min": min, "livemin": min, "max": max, "livemax": max}


def read_partials(path: Path) -> dict[str, list[float]]:
    """The partials file of one archive: mmap key -> partials; {} if absent."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    # json writes floats with repr, which reads back bit for bit.
    return {str(key): [float(p) for p in partials] for key, partials in raw.items()}


def partials_text(partials: Mapping[str, Sequence[float]]) -> str:
    """The JSON text of a partials file."""
    return json.dumps({key: list(values) for key, values in sorted(partials.items())}, allow_nan=False)


def add_archived(metrics: dict[str, Metric], prefix: str, partials: Mapping[str, Sequence[float]]) -> None:
    """Add an archive's partials to metrics read by ``MultiProcessCollector._read_metrics``.

    Each partial becomes one more raw sample of its series, as one more file
    would; the exact sum then counts them exactly once.
    """
    typ = prefix.split("_", 1)[0]
    for key, values in partials.items():
        metric_name, name, labels, help_text = json.loads(key)
        labels_key = tuple(sorted(labels.items()))
        metric = metrics.get(metric_name)
        if metric is None:
            metric = metrics[metric_name] = Metric(metric_name, help_text, typ)
        if typ == "gauge":
            metric._multiprocess_mode = "sum"  # type: ignore[attr-defined]  # as the stock reader tags gauges
            labels_key = (*labels_key, ("pid", "archive"))
        for value in values:
            metric.add_sample(name, labels_key, value)  # type: ignore[arg-type]  # pairs, as the library's reader adds them


def read_metrics(files: Sequence[str]) -> dict[str, Metric]:
    """Raw per-file samples of ``files``, read by the library's own reader.

    A file a process is creating right now is empty until the library
    truncates it to size; it holds no values yet, and the library's reader
    would fail on it, so it is skipped (as are files gone since the glob).
    """
    files = [f for f in files if _has_header(f)]
    metrics: dict[str, Metric] = MultiProcessCollector._read_metrics(files)
    return metrics


def _has_header(file: str) -> bool:
    try:
        return os.stat(file).st_size >= 8  # noqa: PTH116 - the library's reader takes str paths
    except FileNotFoundError:
        return False


Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


def extend_metrics(metrics: dict[str, Metric], more: Mapping[str, Metric]) -> None:
    """Append what ``read_metrics`` read of later files to ``metrics``, as the stock reader would in one pass.

    A metric keeps the place where it first appeared and its samples their
    order; a gauge's mode is the last file's, as the stock reader sets it.
    """
    for name, metric in more.items():
        known = metrics.setdefault(name, metric)
        if known is not metric:
            known.samples.extend(metric.samples)
            if hasattr(metric, "_multiprocess_mode"):
                known._multiprocess_mode = metric._multiprocess_mode  # type: ignore[attr-defined]


def accumulate(metrics: Iterable[Metric]) -> list[Metric]:  # noqa: PLR0912 - one branch per mode, as in the stock merge
    """The stock collector's merge, with every addition done by ``math.fsum``.

    Gauges keep their modes: min/max take the extreme, mostrecent the latest
    timestamp, all/liveall keep the pid label; only additions change. Samples
    come out grouped as the stock merge groups them (since prometheus_client
    0.24): one series' samples together, in the order its label set first
    won a value, buckets in ``le`` order before ``_count``. OpenMetrics
    forbids a series split by another one's samples.
    """
    result = []
    for metric in metrics:
        mode = getattr(metric, "_multiprocess_mode", "")
        series: dict[Labels, dict[SampleKey, None]] = defaultdict(dict)  # label set -> its sample keys, in order
        sums: dict[SampleKey, list[float]] = defaultdict(list)
        chosen: dict[SampleKey, tuple[float, float]] = {}
        buckets: dict[Labels, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for sample in metric.samples:
            # The library's reader leaves labels as sorted (name, value) pairs.
            name, value = sample.name, sample.value
            labels: Labels = tuple(sample.labels)  # type: ignore[arg-type]
            if metric.type == "gauge":
                if mode not in ("all", "liveall"):
                    labels = tuple(pair for pair in labels if pair[0] != "pid")
                key = (name, labels)
                if mode in _ADDITIVE_GAUGE_MODES:
                    sums[key].append(value)
                elif mode in _EXTREME_GAUGE_MODES:
                    old = chosen.get(key)
                    chosen[key] = (value, 0.0) if old is None else (_EXTREME_GAUGE_MODES[mode](old[0], value), 0.0)
                elif mode in ("mostrecent", "livemostrecent"):
                    timestamp = float(sample.timestamp or 0)
                    old = chosen.get(key)
                    # Strictly later wins, and timestamp 0 (never set) never does, as in the stock merge;
                    # a series takes its place when it first wins, as there.
                    if timestamp <= (old[1] if old else 0.0):
                        continue
                    chosen[key] = (value, timestamp)
                else:
                    chosen[key] = (value, 0.0)
                series[labels][key] = None
            elif metric.type == "histogram" and (le := dict(labels).get("le")) is not None:
                without_le = tuple(pair for pair in labels if pair[0] != "le")
                buckets[without_le][float(le)].append(value)
            else:
                sums[(name, labels)].append(value)
                series[labels][(name, labels)] = None
        out = {key: math.fsum(values) for key, values in sums.items()}
        out.update({key: value for key, (value, _) in chosen.items()})
        for labels, by_bound in buckets.items():
            keys = series[labels]  # after the series' _sum, where the stock merge puts its buckets
            below: list[float] = []
            for bound in sorted(by_bound):
                below.extend(by_bound[bound])
                key = (metric.name + "_bucket", (*labels, ("le", floatToGoString(bound))))
                keys[key] = None
                out[key] = math.fsum(below)
            keys[(metric.name + "_count", labels)] = None
            out[(metric.name + "_count", labels)] = math.fsum(below)
        metric.samples = [
            Sample(name, dict(labels), out[(name, labels)]) for keys in series.values() for name, labels in keys
        ]
        result.append(metric)
    return result
