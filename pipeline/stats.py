"""Latency statistics in the Holoscan release-benchmark format (averages alone are not accepted)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def summarize(values_ms: Sequence[float]) -> dict[str, float | int]:
    """avg, p50/p90/p95/p99/p99.9, max, std, tail (p95 to max) and flatness (p10 to p90), in ms."""
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return {"count": 0}
    p10, p50, p90, p95, p99, p999 = np.percentile(v, [10, 50, 90, 95, 99, 99.9])
    return {
        "count": int(v.size),
        "avg": float(v.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "p99.9": float(p999),
        "max": float(v.max()),
        "min": float(v.min()),
        "std": float(v.std()),
        "tail": float(v.max() - p95),
        "flatness": float(p90 - p10),
    }
