"""A whole model's private forward, per backend, from the block cells of stored results.

Per backend and op, each figure is taken from a cell at the model's own block shape when there is
one (`measured`; `counted` when the backend counted it and modelled its latency), else fitted over
the backend's cells and extrapolated (`fitted`, with the form, residual and extrapolation factor).
Validation: every figure's fit over the cells at most half the largest cell's seq_len and d_model
predicts that largest cell, which it never saw; a miss beyond the bound is flagged.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import backends
from bench.network import NetworkConfig, estimates
from bench.project.fit import Fit, fit, relative, terms_for, time_figure
from bench.project.model import BLOCKS, kv_group
from bench.report.frame import parse_cfg
from workloads.base import ConfigError, Workload

OP_FIGURES = {"latency_s": "s", "comm_bytes": "bytes", "busiest_bytes": "bytes", "rounds": "count", "pbs": "count"}
OP_FIGURES |= {"bootstraps": "count", "refreshes": "count", "boot_s": "s"}  # boot_s: time in bootstraps
CELL_FIGURES = {"setup_s": "s", "key_bytes": "bytes"}
COUNTERS = [f for f, unit in OP_FIGURES.items() if unit != "s"]  # summed over a model's ops
BOOT_PRICE = re.compile(r"\bbootstrap=([0-9.eE+-]+)")  # in a CKKS cost model's prices (`he_cost_model`)
SIZES = ("seq_len", "d_model", "n_heads", "d_ff")
ENDS = ("protect", "reveal")  # once per model; every other op once per private layer


@dataclass
class Cells:
    """One backend's usable block cells: per cell its shape, per-op figures and cell figures."""

    shapes: list[dict[str, int]]
    ops: list[dict[str, dict[str, float]]]  # per cell: op -> figure -> value
    cell: list[dict[str, float]]  # per cell: setup_s, key_bytes
    estimated: list[bool]
    inaccurate: list[bool]  # output error above tolerance: the cell's costs stand, its output did not
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def fitted(self) -> dict[tuple[str, str], Fit]:
        """`fits` over these cells, made once (read after `collect` has filled them)."""
        return fits(self)

    @property
    def op_names(self) -> list[str]:
        return list(dict.fromkeys(op for ops in self.ops for op in ops))

    def subset(self, keep: list[int]) -> Cells:
        fields = ("shapes", "ops", "cell", "estimated", "inaccurate")
        return Cells(*([getattr(self, a)[i] for i in keep] for a in fields))


def busiest(rows: pd.DataFrame) -> pd.Series:
    """Per row, the bytes of the busiest party or direction (else the total), as `bench.network`."""
    split = [c for c in rows.columns if c.startswith("comm_bytes_") and rows[c].notna().any()]
    return rows[split].max(axis=1).fillna(rows["comm_bytes"]) if split else rows["comm_bytes"]


def collect(frame: pd.DataFrame, block: Workload) -> dict[str, Cells | str]:
    """Per backend, its cells of the model's block variant; or why it has none (its skip or error
    message), or why it cannot run the block at the model's shape."""
    variant, name, group = block.variant, block.name, kv_group(block)
    of_block = frame[frame.workload == name]
    rows = of_block[(of_block.variant == variant) & (of_block.workload_cfg.map(cfg_kv_group) == group)].copy()
    if rows.empty:
        found = sorted(of_block.variant.unique())
        raise ConfigError(
            f"the results hold no {name} cells of variant {variant}"
            + (f" with {group} query heads per K/V head" if group > 1 else "")
            + f"; set the model's variant to one they have ({', '.join(found) or 'none'}) or measure it "
            f"(encbench +experiment={BLOCKS[name]}"
            + (f", with workload.n_kv_heads = workload.n_heads / {group})" if group > 1 else ")")
        )
    rows["busiest_bytes"] = busiest(rows)
    found: dict[str, Cells | str] = {}
    for backend, of_backend in rows.groupby("backend"):
        totals = of_backend[of_backend.op == "total"]
        ok = totals[totals.status == "ok"]
        if ok.empty:
            found[backend] = str(totals.error.dropna().iloc[0]) if totals.error.notna().any() else "no ok cell"
            continue
        config = ok.backend_cfg.mode().iloc[0]
        notes = []
        if (ok.backend_cfg != config).any():
            notes.append(f"{(ok.backend_cfg != config).sum()} cells of another backend config left out")
        keep = ok[ok.backend_cfg == config]
        reason = why_not(backend, config, block)
        if keep.empty or reason:
            found[backend] = f"{backend}: {reason} (at the model's shape)" if reason else "; ".join(notes)
            continue
        cells = Cells([], [], [], [], [], notes)
        kept = set(zip(keep.run_id, keep.cell_id, strict=True))
        for key, cell_rows in of_backend.groupby(["run_id", "cell_id"]):
            if key not in kept:
                continue
            total = cell_rows[cell_rows.op == "total"].iloc[0]
            cells.shapes.append({k: int(total[k]) for k in SIZES})
            ops = cell_rows[cell_rows.op != "total"].set_index("op")
            figures = {op: {f: float(ops.at[op, f]) for f in OP_FIGURES if f in ops} for op in ops.index}
            price = BOOT_PRICE.search(str(total.get("he_cost_model", "")))
            for op in figures if price else ():
                figures[op]["boot_s"] = figures[op].get("bootstraps", 0.0) * float(price.group(1))
            cells.ops.append(figures)
            cells.cell.append({f: float(total.get(f, np.nan)) for f in CELL_FIGURES})
            cells.estimated.append(bool(pd.notna(total.get("estimated")) and total.get("estimated")))
            accurate = total.get("accurate")
            cells.inaccurate.append(bool(pd.notna(accurate) and not accurate))
        found[backend] = cells
    return found


def cfg_kv_group(workload_cfg: str) -> int:
    """Query heads per K/V head of a stored cell (its `workload_cfg` JSON; 1 if it has none)."""
    cfg = parse_cfg(workload_cfg)
    heads = cfg.get("n_heads") or 1
    return heads // (cfg.get("n_kv_heads") or heads)


def why_not(name: str, config: str, block: Workload) -> str | None:
    """Why backend `name` (its config as JSON) cannot run `block`; None if it can or is not known
    here. A backend that only lives inside its parties (MPC) answers from its capabilities."""
    if name not in backends.names():
        return None
    cls = backends.get(name)
    try:
        live = cls(cls.Config(**json.loads(config)))
    except Exception:  # noqa: BLE001 - e.g. MPC state that only parties have
        return cls.capabilities.why_not(block)
    try:
        return live.why_not(block)
    finally:
        live.close()


def fits(cells: Cells) -> dict[tuple[str, str], Fit]:
    """One fit per (op, figure) over every cell that has the figure; (total, ...) for cell figures."""
    found = {}
    for op in cells.op_names:
        for figure in OP_FIGURES:
            points = [(s, o[op][figure]) for s, o in zip(cells.shapes, cells.ops, strict=True) if has(o, op, figure)]
            if points:
                found[op, figure] = fit(terms_for(op, figure), *map(list, zip(*points, strict=True)))
    for figure in CELL_FIGURES:
        points = [(s, c[figure]) for s, c in zip(cells.shapes, cells.cell, strict=True) if not math.isnan(c[figure])]
        if points:
            found["total", figure] = fit(terms_for("total", figure), *map(list, zip(*points, strict=True)))
    return found


def has(ops: dict[str, dict[str, float]], op: str, figure: str) -> bool:
    return op in ops and figure in ops[op] and not math.isnan(ops[op][figure])


def sources(cells: Cells, target: dict[str, int]) -> Cells:
    """The cells a block at `target` is taken from: those at that shape, else all (fitted)."""
    at = [i for i, s in enumerate(cells.shapes) if s == target]
    return cells.subset(at) if at else cells


def block_at(cells: Cells, target: dict[str, int]) -> tuple[dict[str, dict[str, float]], dict[str, float], str]:
    """Per-op and cell figures of one block at `target`, and how they were obtained."""
    median = sources(cells, target)
    if median.shapes[0] == target:
        ops = {op: {f: float(np.median([o[op][f] for o in median.ops])) for f in v} for op, v in median.ops[0].items()}
        cell = {f: median_of([c[f] for c in median.cell]) for f in CELL_FIGURES}
        return ops, cell, "counted" if all(median.estimated) else "measured"
    found = cells.fitted
    ops = {op: {f: found[op, f](target) for f in OP_FIGURES if (op, f) in found} for op in cells.op_names}
    return ops, {f: found["total", f](target) for f in CELL_FIGURES if ("total", f) in found}, "fitted"


def median_of(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.median(known)) if known else math.nan


def time_parts(ops: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each op's share of the online time. A fused circuit (TFHE) is timed whole: its time is
    split over the op classes in proportion to the ops' isolated estimates."""
    latency = {op: v.get("latency_s", 0.0) for op, v in ops.items()}
    if "circuit" not in latency:
        return latency
    inner = {op: t for op, t in latency.items() if op not in (*ENDS, "circuit")}
    scale = latency["circuit"] / (sum(inner.values()) or 1.0)
    return {**{op: t * scale for op, t in inner.items()}, **{op: latency[op] for op in ENDS if op in latency}}


def validate(cells: Cells, bounds: dict[str, float]) -> list[dict[str, object]]:
    """Per figure, the block total of the largest cell predicted by fits over the cells at most
    half its seq_len and d_model (which never see it), against what was measured there."""
    big_s = max(s["seq_len"] for s in cells.shapes)
    big_d = max(s["d_model"] for s in cells.shapes)
    held = [i for i, s in enumerate(cells.shapes) if s["seq_len"] == big_s and s["d_model"] == big_d]
    train = [i for i, s in enumerate(cells.shapes) if 2 * s["seq_len"] <= big_s and 2 * s["d_model"] <= big_d]
    if not held or len(train) < 3:
        return []
    fitted = cells.subset(train)
    predicted, _, _ = block_at(fitted, cells.shapes[held[0]])
    sizes = f"{len(train)} cells, seq_len <= {max(s['seq_len'] for s in fitted.shapes)}, d_model <= "
    sizes += f"{max(s['d_model'] for s in fitted.shapes)}"
    found = []
    for figure in OP_FIGURES:
        measured = float(np.median([block_total(cells.ops[i], figure) for i in held]))
        guess = block_total(predicted, figure)
        if math.isnan(measured) or math.isnan(guess):
            continue
        error = float(relative(np.array([guess]), np.array([measured]))[0])
        bound = bounds["latency_s" if OP_FIGURES[figure] == "s" else "counter"]
        found.append(
            {"figure": figure, "fitted": sizes, "held_out": f"seq_len {big_s}, d_model {big_d}", "predicted": guess,
             "measured": measured, "error": error, "bound": bound, "held": error <= bound}
        )  # fmt: skip
    return found


def block_total(ops: dict[str, dict[str, float]], figure: str) -> float:
    if figure == "latency_s":
        return sum(time_parts(ops).values())
    values = [v[figure] for v in ops.values() if figure in v and not math.isnan(v[figure])]
    return float(sum(values)) if values else math.nan


def extrapolation(cells: Cells, target: dict[str, int]) -> float:
    """Target size over the largest measured size, in the dimension where that is largest."""
    return max(max(1.0, target[k] / max(s[k] for s in cells.shapes)) for k in ("seq_len", "d_model", "d_ff"))


def model_figures(block: dict[str, dict[str, float]], layers: int) -> dict[str, float]:
    """Sums over the model: protect and reveal once, every other op once per private layer."""
    times = time_parts(block)
    found = {"online_s": sum(t * (1 if op in ENDS else layers) for op, t in times.items())}
    for figure in COUNTERS:
        values = [(op, v[figure]) for op, v in block.items() if figure in v and not math.isnan(v[figure])]
        if values:
            found[figure] = sum(x * (1 if op in ENDS else layers) for op, x in values)
    for op, t in times.items():
        boot = block[op].get("boot_s", 0.0) if op in block else 0.0
        for name, part in ((time_figure(op), t - boot), ("time_bootstrapping_s", boot)):
            found[name] = found.get(name, 0.0) + part * (1 if op in ENDS else layers)
    return found


def network_time(figures: dict[str, float], net: NetworkConfig) -> float:
    """The model's online time on `net`, by the rows' formula (`bench.network.estimates`)."""
    sent = figures.get("busiest_bytes", figures.get("comm_bytes", 0.0))
    row = {"latency_s": figures["online_s"], "rounds": figures.get("rounds", 0.0), "comm_bytes": sent}
    return estimates(row, {"net": net})["est_net_s"]
