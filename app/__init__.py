"""panic-metrics: records, stores and exposes the metrics of a panic-response platform."""

from __future__ import annotations

__version__ = "0.1.0"
