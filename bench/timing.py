"""Per-op timing and counter deltas around each named op, and the summary statistics."""

from __future__ import annotations

from time import perf_counter

import numpy as np


class OpTimer:
    """The harness's recorder: brackets each op with `sync()`, times it and takes counter deltas.

    Counters are read outside the timed interval, so a backend whose counters cost a collective
    (MPC) does not inflate op latency.
    """

    def __init__(self, backend):
        self.backend = backend
        self.seconds: dict[str, float] = {}
        self.counters: dict[str, dict[str, float]] = {}

    def __call__(self, name, fn):
        backend = self.backend
        before = backend.counters()
        backend.sync()
        start = perf_counter()
        out = fn()
        backend.sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + perf_counter() - start
        after = backend.counters()
        acc = self.counters.setdefault(name, {})
        for key, value in after.items():
            acc[key] = acc.get(key, 0) + value - before.get(key, 0)
        return out


def median_iqr(samples: list[float]) -> tuple[float, float]:
    """Median and inter-quartile range; the IQR is NaN for a single sample (spread unknown)."""
    if not samples:
        return float("nan"), float("nan")
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float(med), float(q3 - q1) if len(samples) > 1 else float("nan")
