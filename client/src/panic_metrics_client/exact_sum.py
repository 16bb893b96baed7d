"""Exact sums of floats: Shewchuk's non-overlapping partials, as `math.fsum` keeps them inside.

A list of partials holds the exact real sum of every float added to it, with
no rounding at all; `math.fsum(partials)` is that sum correctly rounded. The
client sums a route's request durations this way, the worker its histograms'
`_sum` and its archives: so a `_sum` is the same whatever the split into
summaries, processes or merges.
"""

from __future__ import annotations

from collections.abc import Iterable


def grow(partials: list[float], x: float) -> None:
    """Add ``x`` to ``partials`` in place, keeping their exact sum exact (Shewchuk).

    The partials stay non-overlapping and increasing in magnitude; each step
    splits ``x + y`` into its rounded sum and the exact rounding error.
    """
    i = 0
    for partial in partials:
        big, small = (x, partial) if abs(x) >= abs(partial) else (partial, x)
        hi = big + small
        lo = small - (hi - big)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def partials_of(values: Iterable[float]) -> list[float]:
    """Exact partials of the sum of ``values``."""
    partials: list[float] = []
    for value in values:
        grow(partials, value)
    return partials
