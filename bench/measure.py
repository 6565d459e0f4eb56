"""One cell's measurement: setup, warm-ups, timed online runs, per-op errors, tidy rows.

This runs wherever the backend's `execute` puts it (here, or in every MPC party), so it only
talks to the backend through its contract and never knows which technology it measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from backends.base import Backend
from bench.accuracy import Reference, errors
from bench.timing import OpTimer, median_iqr
from workloads.base import Capture, Workload

NAN = float("nan")
NOT_SUMMED = ("latency_s", "latency_iqr_s")  # static per-op timings: see `tidy_rows`


@dataclass
class HarnessConfig:
    """How each cell is measured.

    Repeats stop early once the timed runs add up to `budget_s` (at least one always runs), so
    minute-long cells need no special setting; `repeats=1 warmup=0` is the explicit low-repeat mode.
    """

    warmup: int = 1
    repeats: int = 5
    budget_s: float = 60.0
    timeout_s: float = 900.0
    per_op_error: bool = True


@dataclass
class OnlineRun:
    total_s: float
    seconds: dict[str, float]
    counters: dict[str, dict[str, float]]
    revealed: Any
    abs_error: float = NAN
    rel_error: float = NAN


@dataclass
class CellMeasurement:
    setup_s: float
    op_names: list[str]
    runs: list[OnlineRun] = field(default_factory=list)
    op_errors: dict[str, tuple[float, float]] = field(default_factory=dict)


def online_run(backend: Backend, workload: Workload, inputs, weights) -> OnlineRun:
    """One timed run: protect, the workload's ops, reveal."""
    timer = OpTimer(backend)
    start = perf_counter()
    protected = timer("protect", lambda: backend.protect(inputs))
    out = backend.run(workload, timer, protected, weights)
    revealed = timer("reveal", lambda: backend.reveal(out))
    total = perf_counter() - start
    return OnlineRun(total, timer.seconds, timer.counters, revealed)


def op_errors(backend: Backend, workload: Workload, inputs, weights, reference, ref_ops) -> dict:
    """Errors of every op's revealed output, from one extra untimed run (or the backend's own
    per-op outputs, for fused circuits), and of the protected input where it can be revealed."""
    capture = Capture(backend.reveal)
    protected = backend.protect(inputs)
    out = backend.run(workload, capture, protected, weights)
    outputs = backend.op_outputs(workload, inputs, weights)
    found = {} if outputs is not None else {"protect": errors(backend.reveal(protected), inputs)}
    found.update({op: errors(v, ref_ops[op]) for op, v in (outputs or capture.outputs).items() if op in ref_ops})
    found["reveal"] = reference.errors(backend.reveal(out))
    return found


def measure_cell(backend: Backend, workload: Workload, harness: HarnessConfig) -> CellMeasurement:
    inputs, weights = workload.inputs(), workload.weights()
    output, ref_ops = workload.reference()
    reference = Reference(output)
    start = perf_counter()
    handles = backend.setup(workload, weights)
    cell = CellMeasurement(setup_s=perf_counter() - start, op_names=list(ref_ops))
    for _ in range(harness.warmup):
        online_run(backend, workload, inputs, handles)
    while len(cell.runs) < max(harness.repeats, 1):
        run = online_run(backend, workload, inputs, handles)
        run.abs_error, run.rel_error = reference.errors(run.revealed)  # every repeat: MPC errors vary
        run.revealed = None
        cell.runs.append(run)
        if backend.agree(sum(r.total_s for r in cell.runs) >= harness.budget_s):  # parties' clocks differ
            break
    if harness.per_op_error:
        cell.op_errors = op_errors(backend, workload, inputs, handles, reference, ref_ops)
    return cell


def measure(backend: Backend, workload: Workload, harness: HarnessConfig) -> list[dict[str, Any]]:
    """The cell's rows: one per op (protect, the workload's ops, reveal) and `total`."""
    reason = backend.why_not(workload)
    if reason:
        return [{"op": "total", "status": "skipped", "error": f"{backend.name}: {reason}"}]
    cell = measure_cell(backend, workload, harness)
    tolerance = backend.default_tolerance if workload.cfg.tolerance is None else workload.cfg.tolerance
    return tidy_rows(cell, backend, tolerance)


def tidy_rows(cell: CellMeasurement, backend: Backend, tolerance: float) -> list[dict]:
    """Op rows take the backend's cell-level metrics, then their own counters; `total` sums the
    counters over ops, then lets the cell-level metrics (which a backend knows better) win.

    A `latency_s` among an op's static counters replaces its measured time (a modelled estimate, or
    an op timed as its own circuit): it is not summed, and the total's latency swaps it in only for
    ops that the online run timed."""
    first = cell.runs[0]
    recorded = [op for op in first.seconds if op not in ("protect", "reveal")]
    extra = [op for op in recorded if op not in cell.op_names]
    ops = ["protect", *cell.op_names, *extra, "reveal"]
    static, metrics = backend.op_counters(), backend.metrics()
    common = {"repeats": len(cell.runs), "setup_s": cell.setup_s, "tolerance": tolerance, "status": "ok"}
    rows, totals = [], {}
    for op in ops:
        counters = {**first.counters.get(op, {}), **static.get(op, {})}
        for key, value in counters.items():
            if key not in NOT_SUMMED and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
        samples = [r.seconds[op] for r in cell.runs if op in r.seconds]
        med, iqr = median_iqr(samples)
        abs_err, rel_err = cell.op_errors.get(op, (NAN, NAN))
        rows.append(
            {
                "op": op,
                "latency_s": med,
                "latency_iqr_s": iqr,
                **common,
                **metrics,
                **counters,
                **error_columns(abs_err, rel_err, tolerance),
            }
        )
    replaced = {op: c["latency_s"] for op, c in static.items() if "latency_s" in c}
    med, iqr = median_iqr(
        [r.total_s + sum(v - r.seconds[op] for op, v in replaced.items() if op in r.seconds) for r in cell.runs]
    )
    worst = max(cell.runs, key=lambda r: r.abs_error)
    rows.append(
        {
            "op": "total",
            "latency_s": med,
            "latency_iqr_s": iqr,
            **common,
            "inaccurate_repeats": sum(r.abs_error > tolerance for r in cell.runs),
            **totals,
            **metrics,
            **error_columns(worst.abs_error, worst.rel_error, tolerance),
        }
    )
    return rows


def error_columns(abs_err: float, rel_err: float, tolerance: float) -> dict[str, Any]:
    accurate = None if math.isnan(abs_err) else abs_err <= tolerance
    return {"max_abs_error": abs_err, "max_rel_error": rel_err, "accurate": accurate}
