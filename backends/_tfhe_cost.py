"""Latency of a TFHE circuit too large to execute, from what its compilation says.

A circuit's run time is its PBS and key switches, each priced by its parameter set (LWE dimension,
GLWE size, polynomial size, decomposition levels). The parameter sets are the optimizer's choice for
the whole circuit (its noise budget), so a micro-benchmark cannot reproduce them one by one; but
Concrete's optimizer prices every operation of every parameter set it chooses, and sums them as the
circuit's `complexity`. The model is that price converted to seconds: micro-benchmarks execute a
lookup circuit at three bit-widths (so three parameter sets), and the seconds one complexity unit
takes on this machine is the median of their run time / complexity (each the best of three runs
after a warm-up: a fresh program's first run pays one-off costs). An estimate is a circuit's
complexity times that figure; `min` / `max` of the three ratios bound what the spread across
parameter sets does to it. The figure is measured once per machine and Concrete version, on an idle
machine (delete the cache file to measure again), and cached outside the repository.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from time import perf_counter

import numpy as np

from backends._tfhe_blocks import concrete_fhe
from backends._tfhe_circuit import CACHE_ROOT
from backends.base import report_activity

WIDTHS = (3, 4, 5)  # bits of the benchmark lookups (wider ones take minutes of keygen)
LOOKUPS = 64  # lookups per benchmark circuit: enough to keep both cores busy
CACHE = CACHE_ROOT / "tfhe-cost.json"


def machine_key() -> str:
    fhe = concrete_fhe()

    return f"concrete-{fhe.__version__}/{platform.machine()}/{os.cpu_count()}cpu"


def seconds_per_unit() -> dict[str, float]:
    """The calibration (`seconds_per_unit`, and the spread of the three benchmarks), measured once."""
    found = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = machine_key()
    if key not in found:
        report_activity("measuring the TFHE cost model (once per machine)")
        ratios = [benchmark(width) for width in WIDTHS]
        found[key] = {"seconds_per_unit": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(found, indent=1))
    return found[key]


def estimate(complexity: float) -> float:
    """Seconds a circuit of Concrete `complexity` takes to run on this machine."""
    return complexity * seconds_per_unit()["seconds_per_unit"]


def benchmark(width: int, runs: int = 3) -> float:
    """Seconds per complexity unit of a `LOOKUPS`-entry lookup at `width` bits (best of `runs`)."""
    fhe = concrete_fhe()

    top = 2**width

    def circuit(x):
        return fhe.univariate(lambda a: (a * a + 3) % top)(x)

    inputset = [np.arange(LOOKUPS) % top, (np.arange(LOOKUPS) * 7 + 1) % top]
    compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset)
    compiled.keygen()
    sample = compiled.encrypt(inputset[1])
    compiled.run(sample)  # warm-up
    best = min(timed(lambda: compiled.run(sample)) for _ in range(runs))
    return best / compiled.complexity


def timed(fn) -> float:
    start = perf_counter()
    fn()
    return perf_counter() - start
