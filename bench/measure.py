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
from bench.columns import TOTAL, Catalogue, for_backend
from bench.timing import OpTimer, median_iqr
from workloads.base import Capture, Workload

NAN = float("nan")
SECURE_BITS = 128


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
    top1_agreement: float = NAN


@dataclass
class CellMeasurement:
    setup_s: float
    op_names: list[str]
    runs: list[OnlineRun] = field(default_factory=list)
    op_errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    first: OnlineRun | None = None  # the first warm-up: one-time work the backend does lazily

    def worst(self) -> OnlineRun:
        """The repeat whose output was furthest from the reference."""
        return max(self.runs, key=lambda r: r.abs_error)


def online_run(backend: Backend, workload: Workload, inputs, weights) -> OnlineRun:
    """One timed run: protect, the workload's ops, reveal."""
    timer = OpTimer(backend)
    start = perf_counter()
    protected = timer("protect", lambda: backend.protect(inputs))
    out = backend.run(workload, timer, protected, weights)
    revealed = timer("reveal", lambda: backend.reveal(out))
    total = perf_counter() - start
    return OnlineRun(total, timer.seconds, timer.counters, revealed)


def op_errors(backend: Backend, workload: Workload, inputs, weights, ref_ops, final: tuple[float, float]) -> dict:
    """Errors of the protected input and of every op's revealed output; `reveal`'s is the final
    output's from the timed runs (`final`). Op outputs come from the backend where it gives them (a
    fused circuit reveals only its output; no run then), else from one extra untimed run."""
    protected = backend.protect(inputs)
    found = {"protect": errors(backend.reveal(protected), inputs), "reveal": final}
    outputs = backend.op_outputs(workload, inputs, weights)
    if outputs is None:
        capture = Capture(backend.reveal)
        backend.run(workload, capture, protected, weights)
        outputs = capture.outputs
    found.update({op: errors(v, ref_ops[op]) for op, v in outputs.items() if op in ref_ops})
    return found


def measure_cell(backend: Backend, workload: Workload, harness: HarnessConfig) -> CellMeasurement:
    inputs, weights = workload.inputs(), workload.weights()
    output, ref_ops = workload.reference()
    reference = Reference(output)
    start = perf_counter()
    handles = backend.setup(workload, weights)
    cell = CellMeasurement(setup_s=perf_counter() - start, op_names=list(ref_ops))
    for _ in range(harness.warmup):
        run = online_run(backend, workload, inputs, handles)
        cell.first = cell.first or run
    while len(cell.runs) < max(harness.repeats, 1):
        run = online_run(backend, workload, inputs, handles)
        run.abs_error, run.rel_error = reference.errors(run.revealed)  # every repeat: MPC errors vary
        run.top1_agreement = reference.top1_agreement(run.revealed)
        run.revealed = None
        cell.runs.append(run)
        if backend.agree(sum(r.total_s for r in cell.runs) >= harness.budget_s):  # parties' clocks differ
            break
    if harness.per_op_error:
        worst = cell.worst()
        cell.op_errors = op_errors(backend, workload, inputs, handles, ref_ops, (worst.abs_error, worst.rel_error))
    return cell


def measure(backend: Backend, workload: Workload, harness: HarnessConfig) -> list[dict[str, Any]]:
    """The cell's rows: one per op (protect, the workload's ops, reveal) and `total`."""
    reason = backend.why_not(workload)
    if reason:
        return [{"op": TOTAL, "status": "skipped", "error": f"{backend.name}: {reason}"}]
    cell = measure_cell(backend, workload, harness)
    tolerance = backend.default_tolerance if workload.cfg.tolerance is None else workload.cfg.tolerance
    return tidy_rows(cell, backend, tolerance)


def tidy_rows(cell: CellMeasurement, backend: Backend, tolerance: float) -> list[dict]:
    """A row per op with what that op did, and the `total` row: the whole online run, the sums of
    the ops' `op`-scope columns and the cell's own figures (`metrics()`, setup).

    A `latency_s` among an op's static figures (`op_counters`) replaces its measured time (a
    modelled estimate, or the op timed as its own circuit); the total's latency swaps it in only for
    ops that the online run timed."""
    catalogue = for_backend(type(backend))
    first = cell.runs[0]
    recorded = [op for op in first.seconds if op not in ("protect", "reveal")]
    ops = ["protect", *cell.op_names, *(op for op in recorded if op not in cell.op_names), "reveal"]
    static, metrics = backend.op_counters(), backend.metrics()
    check_scopes(catalogue, backend.name, metrics, [*first.counters.values(), *static.values()])
    common = {"repeats": len(cell.runs), "tolerance": tolerance, "status": "ok"}
    replaced = {op: c["latency_s"] for op, c in static.items() if "latency_s" in c}
    # the first run's time where the latency is that run's kind (not a model's, nor another circuit's)
    warm = {op: s for op, s in cell.first.seconds.items() if op not in replaced} if cell.first else {}
    rows = []
    for op in ops:
        med, iqr = median_iqr([r.seconds[op] for r in cell.runs if op in r.seconds])
        figures = {**first.counters.get(op, {}), **static.get(op, {})}
        errs = error_columns(*cell.op_errors.get(op, (NAN, NAN)), tolerance)
        timing = {"latency_s": med, "latency_iqr_s": iqr, "first_run_s": warm.get(op, NAN)}
        rows.append({"op": op, **timing, **common, **figures, **errs})
    summed = catalogue.select({k for row in rows for k in row}, scope="op")
    totals = {k: sum(row[k] for row in rows if k in row) for k in summed}
    med, iqr = median_iqr(
        [r.total_s + sum(v - r.seconds[op] for op, v in replaced.items() if op in r.seconds) for r in cell.runs]
    )
    worst = cell.worst()
    total = {
        "op": TOTAL,
        "latency_s": med,
        "latency_iqr_s": iqr,
        "first_run_s": cell.first.total_s if cell.first and not replaced else NAN,
        **common,
        "setup_s": cell.setup_s,
        "inaccurate_repeats": sum(r.abs_error > tolerance for r in cell.runs),
        "top1_agreement": min(r.top1_agreement for r in cell.runs),
        **totals,
        **metrics,
        **error_columns(worst.abs_error, worst.rel_error, tolerance),
    }
    if "security_bits" in metrics:
        total["insecure"] = metrics["security_bits"] < SECURE_BITS
    return [*rows, total]


def check_scopes(catalogue: Catalogue, backend: str, metrics: dict, per_op: list[dict]) -> None:
    """A cell-level figure among per-op ones, or a per-op one among the cell's, is a backend bug: it
    would be copied onto every op row, or summed as if each op had done it."""
    wrong = catalogue.select(metrics, scope="op") + catalogue.select({k for d in per_op for k in d}, scope="cell")
    if wrong:
        raise ValueError(
            f"backend {backend} reports {', '.join(sorted(set(wrong)))} at the wrong scope (backends/base.py: Column)"
        )


def error_columns(abs_err: float, rel_err: float, tolerance: float) -> dict[str, Any]:
    accurate = None if math.isnan(abs_err) else abs_err <= tolerance
    return {"max_abs_error": abs_err, "max_rel_error": rel_err, "accurate": accurate}
