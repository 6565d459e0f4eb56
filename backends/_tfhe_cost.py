"""Latency of a TFHE circuit too large to execute, from what its compilation says.

Concrete's optimizer prices every circuit (`complexity`: the PBS and key switches it contains,
each costed by its parameter set: LWE dimension, GLWE size, polynomial size, decomposition levels).
The model is one number, the seconds one complexity unit takes on this machine: micro-benchmarks
execute a lookup circuit at three bit-widths (so three parameter sets) and take the median ratio of
measured run time to complexity. A circuit's estimate is its complexity times that ratio.
The figure is cached per machine and Concrete version outside the repository.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from time import perf_counter

import numpy as np

from backends._tfhe_quant import concrete_fhe

WIDTHS = (3, 4, 5)  # bits of the benchmark lookups (wider ones take minutes of keygen)
LOOKUPS = 64  # lookups per benchmark circuit: enough to keep both cores busy
CACHE = Path(os.environ.get("ENCBENCH_CACHE", "~/.cache/encbench")).expanduser() / "tfhe-cost.json"


def machine_key() -> str:
    fhe = concrete_fhe()

    return f"concrete-{fhe.__version__}/{platform.machine()}/{os.cpu_count()}cpu"


def seconds_per_unit() -> dict[str, float]:
    """The calibration (`seconds_per_unit`, and the spread of the three benchmarks), measured once."""
    found = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = machine_key()
    if key not in found:
        ratios = [benchmark(width) for width in WIDTHS]
        found[key] = {"seconds_per_unit": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(found, indent=1))
    return found[key]


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
    best = min(timed(lambda: compiled.run(sample)) for _ in range(runs))
    return best / compiled.complexity


def timed(fn) -> float:
    start = perf_counter()
    fn()
    return perf_counter() - start
