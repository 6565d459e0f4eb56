"""Latency of a TFHE circuit too large to execute, from what its compilation says.

A circuit's run time is its PBS and key switches, each priced by its parameter set (LWE dimension,
GLWE size, polynomial size, decomposition levels). The parameter sets are the optimizer's choice for
the whole circuit (its noise budget), so a micro-benchmark cannot reproduce them one by one; but
Concrete's optimizer prices every operation of every parameter set it chooses, and sums them as the
circuit's `complexity`. The model converts that price to seconds on this machine:
run time = `seconds_per_unit` x complexity + `overhead_s`, fitted by least squares to lookup
circuits executed at 3, 4 and 5 bits (three parameter sets) with 64 and 512 lookups each (the two
sizes separate the per-run overhead from the per-unit cost; each point is the best of three runs
after a warm-up, since a fresh program's first run pays one-off costs). `spread` is the largest
relative residual of the fit: how far parameter sets stray from one price per unit. Measured once
per machine and Concrete version, on an idle machine (delete the cache file to measure again), and
cached outside the repository. Until a machine has measured its own (its first executed cell does,
as lattigo's), estimates use the reference machine's model shipped in `reference_cost.json`, and
say so: the quick sweep then pays no calibration.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path
from time import perf_counter

import numpy as np

from backends.base import CACHE_ROOT, report_activity
from backends.concrete.blocks import concrete_fhe

WIDTHS = (3, 4, 5)  # bits of the benchmark lookups (wider ones take minutes of keygen)
SIZES = (64, 512)  # lookups per benchmark circuit; both keep the two cores busy
MODEL = "v2"  # in the cache key: a change of the model's form measures again
CACHE = CACHE_ROOT / "tfhe-cost.json"
REFERENCE = Path(__file__).with_name("reference_cost.json")  # the model measured on the reference machine


def machine_key() -> str:
    fhe = concrete_fhe()

    return f"concrete-{fhe.__version__}/{platform.machine()}/{os.cpu_count()}cpu/{MODEL}"


@functools.cache
def seconds_per_unit(measure: bool = False) -> dict[str, float | str]:
    """The fitted model (`seconds_per_unit`, `overhead_s`, `spread`, and whose `machine`): this
    machine's if measured before, or now when `measure`; else the reference machine's."""
    found = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = machine_key()
    if key not in found and measure:
        report_activity("measuring the TFHE cost model (once per machine)")
        points = np.array([benchmark(width, size) for width in WIDTHS for size in SIZES])  # (complexity, s)
        slope, overhead = np.polyfit(points[:, 0], points[:, 1], 1)
        residual = np.abs(slope * points[:, 0] + overhead - points[:, 1]) / points[:, 1]
        found[key] = {"seconds_per_unit": float(slope), "overhead_s": float(overhead), "spread": float(residual.max())}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(found, indent=1))
    if key in found:
        return {**found[key], "machine": "this machine"}
    ((reference, model),) = json.loads(REFERENCE.read_text()).items()
    return {**model, "machine": f"the reference machine ({reference}); an executed cell measures this one's"}


def estimate(complexity: float, measure: bool = False) -> float:
    """Seconds a circuit of Concrete `complexity` takes to run (see `seconds_per_unit`)."""
    model = seconds_per_unit(measure)
    return complexity * model["seconds_per_unit"] + model["overhead_s"]


def benchmark(width: int, size: int, runs: int = 3) -> tuple[float, float]:
    """(complexity, best seconds of `runs`) of a `size`-entry lookup at `width` bits."""
    fhe = concrete_fhe()

    top = 2**width

    def circuit(x):
        return fhe.univariate(lambda a: (a * a + 3) % top)(x)

    inputset = [np.arange(size) % top, (np.arange(size) * 7 + 1) % top]
    compiled = fhe.Compiler(circuit, {"x": "encrypted"}).compile(inputset)
    compiled.keygen()
    sample = compiled.encrypt(inputset[1])
    compiled.run(sample)  # warm-up
    return compiled.complexity, min(timed(lambda: compiled.run(sample)) for _ in range(runs))


def timed(fn) -> float:
    start = perf_counter()
    fn()
    return perf_counter() - start
