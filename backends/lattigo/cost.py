"""Seconds of a CKKS cell from its dry run's primitive counts, calibrated on this machine.

The dry run counts each primitive's uses per level (`Stats.work`); a primitive's cost grows with
the primes its operand carries, so the model prices `rotate` (key switch), `mul` (ct x ct,
relinearized and rescaled), `mul_plain` (one term of a plaintext dot product), `rescale` (one per
dot product) and `add` at the top level and at level 1, linear in the level between (and beyond);
`bootstrap` (at the parameter set's bootstrap slot count) and the client's `encrypt` / `decrypt`
(one ciphertext) have one price. The memory the bootstrapping keys took is kept beside the prices (`boot_key_bytes`),
for the memory guard of the next cell (2^15 slots at LogN 16: ~19 GB). Calibration times each at
both levels (median of `RUNS` after a warm-up; bootstrap: one after a warm-up) once per machine,
parameter set and slot count, on the keys an executed cell has made anyway, and caches it outside
the repository. Where this machine has no calibration yet (counting mode never makes keys), the
reference machine's (`reference_cost.json`: 2 cores, the CI's class; its entries are a cache
file's) stands in, and rows say so in `he_cost_model`.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from statistics import median
from time import perf_counter

import numpy as np

from backends.base import CACHE_ROOT, report_activity

CACHE = CACHE_ROOT / "ckks-cost.json"
REFERENCE = Path(__file__).with_name("reference_cost.json")
RUNS = 3
TERMS = 9  # terms of the long dot product that separates a term's cost from the rescale's
BY_LEVEL = ("rotate", "mul", "mul_plain", "rescale", "add")
FLAT = ("bootstrap", "encrypt", "decrypt")
BOOT_MEMORY = "boot_key_bytes"  # the tables' section of measured bootstrapping-key memory, by parameters


def key(params, boot_slots: int | None = None) -> str:
    return f"{params.name}/logn{params.log_n}/q{len(params.log_q)}/boot{boot_slots or params.boot_slots}"


def machine() -> str:
    return f"{platform.machine()}/{os.cpu_count()}cpu"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def model(params) -> dict | None:
    """The prices for these parameters (`source`: whose machine), or None if unmeasured. Without a
    calibration at this bootstrap slot count, the nearest one (in log2 slots) stands in."""
    for table, source in ((_read(CACHE).get(machine(), {}), "this machine"), (_read(REFERENCE), "reference machine")):
        measured = [s for s in (1 << i for i in range(params.log_n)) if key(params, s) in table]  # priced
        if measured:
            nearest = min(measured, key=lambda s: (abs(s.bit_length() - params.boot_slots.bit_length()), -s))
            exact = "" if nearest == params.boot_slots else f", bootstrap measured at {nearest} slots"
            return {**table[key(params, nearest)], "source": source + exact}
    return None


def boot_key_bytes(params, here: bool = True) -> int:
    """Memory the bootstrapping keys will take: as measured on the reference machine (and here,
    unless `here` is false: rows' `key_bytes` must not depend on a machine's cache) at these slots,
    or at the nearest larger slot count measured; without any measurement, 350 switching keys
    (about what 2^15 slots took at LogN 16)."""
    found = {}
    for table in (_read(REFERENCE), _read(CACHE).get(machine(), {}) if here else {}):
        for s in (1 << i for i in range(params.log_n)):
            if key(params, s) in table.get(BOOT_MEMORY, {}):
                found[s] = table[BOOT_MEMORY][key(params, s)]
    larger = [s for s in found if s >= params.boot_slots]
    if larger:
        return found[min(larger)]
    return max(found.values(), default=350 * params.switch_key_bytes())


def price(prices: dict, primitive: str, level: int) -> float:
    if primitive in FLAT:
        return prices[primitive]
    low, top, levels = prices[primitive][0], prices[primitive][1], prices["levels"]
    return low + (top - low) * (level - 1) / (levels - 1)


def estimate(work, prices: dict | None) -> float:
    """Seconds of `work` ({(primitive, level): uses}); NaN without prices."""
    if prices is None:
        return float("nan")
    return float(sum(uses * price(prices, p, level) for (p, level), uses in work.items()))


def text(prices: dict | None) -> str:
    if prices is None:
        return "uncalibrated"
    parts = [f"{p}={prices[p][1]:.3g}" for p in BY_LEVEL] + [f"{p}={prices[p]:.3g}" for p in FLAT]
    return f"s at the top level: {','.join(parts)} ({prices['source']})"


def _timed(fn, runs: int = RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = perf_counter()
        fn()
        times.append(perf_counter() - start)
    return median(times)


def _at_level(engine, ct, level: int) -> dict[str, float]:
    """Each level-dependent primitive timed on `ct` (at `level`)."""
    e = engine
    e.preload({("calibration", level): np.full(e.params.slots, 0.5)})  # as weights are: encoded at setup
    raws, keys = [ct.raw] * TERMS, ["calibration"] * TERMS
    one = _timed(lambda: e._dot_plain(raws[:1], [None], level, keys[:1]))
    many = _timed(lambda: e._dot_plain(raws, [None] * TERMS, level, keys))
    term = (many - one) / (TERMS - 1)
    return {
        "rotate": _timed(lambda: e._rotate(ct.raw, 1)),
        "mul": _timed(lambda: e._mul(ct.raw, ct.raw, level)),
        "mul_plain": term,
        "rescale": max(one - term, 0.0),
        "add": _timed(lambda: e._add(ct.raw, ct.raw)),
    }


def calibrate(engine, boot_bytes: int) -> dict:
    """Time each primitive on `engine` (keys and bootstrapper made) and cache the prices, with the
    memory its bootstrapping keys took (`boot_bytes`)."""
    p = engine.params
    report_activity(f"calibrating the CKKS cost model for {key(p)} (once per machine)")
    values = np.linspace(-1, 1, p.slots)
    ct = engine.encrypt(values)
    top = _at_level(engine, ct, p.levels)
    found = {
        "levels": p.levels,
        "encrypt": _timed(lambda: engine._encrypt(values)),
        "decrypt": _timed(lambda: engine._decrypt(ct.raw)),
        "bootstrap": _timed(lambda: engine._bootstrap(ct.raw), runs=1),
    }
    low = ct
    while low.level > 1:
        low = engine.mul_plain(low, np.ones(p.slots))
    bottom = _at_level(engine, low, 1)
    found |= {prim: [bottom[prim], top[prim]] for prim in BY_LEVEL}
    table = _read(CACHE)
    table.setdefault(machine(), {})[key(p)] = found
    table[machine()].setdefault(BOOT_MEMORY, {})[key(p)] = boot_bytes
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(table, indent=1))
    return {**found, "source": "this machine"}
