"""The tidy rows of a projection: one per model x backend x network x figure, with how each was
obtained, its extrapolation factor, validation error and flag; plus the validation and fit tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.project import model as models
from bench.project.fit import CLASSES, OTHER, time_figure
from bench.project.model import ProjectConfig
from bench.project.projection import (
    CELL_FIGURES,
    OP_FIGURES,
    Cells,
    block_at,
    collect,
    extrapolation,
    model_figures,
    network_time,
    sources,
    validate,
)
from workloads.base import ConfigError

INACCURATE = "from cells whose output missed its tolerance (their costs stand)"
UNITS = {**OP_FIGURES, **CELL_FIGURES, "online_s": "s", "client_s": "s"}


@dataclass
class Projection:
    rows: list[dict[str, object]]  # projection.jsonl
    validation: list[dict[str, object]]
    fits: list[dict[str, object]]
    notes: dict[str, list[str]]  # per backend


def project(frame: pd.DataFrame, cfg: ProjectConfig) -> Projection:
    """Project `cfg.model` for every backend of `frame` (or `cfg.backend`) and network."""
    m = cfg.model
    target, layers = models.shape(m), models.private_layers(m)
    found = collect(frame, models.block(m))
    client = client_block_s(found.get("plaintext"), target) * (m.n_layers - layers)
    if cfg.backend != "all":
        if cfg.backend not in found:
            raise ConfigError(f"backend={cfg.backend} has no block cells in the results; they have: {', '.join(found)}")
        found = {cfg.backend: found[cfg.backend]}
    if cfg.network != "all" and cfg.network not in cfg.networks:
        raise ConfigError(f"network={cfg.network} is unknown; choose one of: all, {', '.join(cfg.networks)}")
    nets = cfg.networks if cfg.network == "all" else {cfg.network: cfg.networks[cfg.network]}
    bounds = {"latency_s": cfg.latency_bound, "counter": cfg.counter_bound}
    out = Projection([], [], [], {})
    for backend, cells in found.items():
        base = {"model": m.name, "seq_len": m.seq_len, "private_layers": layers, "backend": backend}
        if isinstance(cells, str):
            out.rows.append({**base, "network": "", "figure": "online_s", "value": math.nan, "unit": "s", "how": "",
                             "extrapolation": math.nan, "validation_error": math.nan,
                             "flag": f"unsupported: {cells}"})  # fmt: skip
            continue
        out.notes[backend] = list(cells.notes)
        checked = validate(cells, bounds)
        out.validation += [{"backend": backend, **v} for v in checked]
        out.rows += backend_rows(base, cells, cfg, client, nets, {v["figure"]: v for v in checked})
        out.fits += [
            {"backend": backend, "op": op, "figure": figure, "form": f.form, "residual": f.residual,
             "exact": f.exact, "cells": f.cells}
            for (op, figure), f in cells.fitted.items()
        ]  # fmt: skip
    if all(isinstance(c, str) for c in found.values()):
        raise ConfigError(f"no backend can project {m.name}: " + "; ".join(found.values()))
    return out


def client_block_s(plain: Cells | str | None, target: dict[str, int]) -> float:
    """One block in plaintext at the model's shape (the client's frozen layers), NaN if unknown."""
    if not isinstance(plain, Cells):
        return math.nan
    block, _, _ = block_at(plain, target)
    return model_figures(block, 1)["online_s"]


HEAD_PROXIES = {"mlp.fc1": 1, "mlp.gate_up": 2}  # the MLP's first product: d_model -> maps x d_ff


def add_lm_head(cells: Cells, m: models.ModelConfig, figures, hows, factor, flags) -> None:
    """The private LM head (d_model x vocab), from the fits of the MLP's first product (GPT-2's
    fc1; Llama's gate_up, one product with two maps) at maps x d_ff = vocab; unvalidated unless the
    fitted cells varied d_ff apart from d_model."""
    op, maps = next((op, n) for op, n in HEAD_PROXIES.items() if op in cells.op_names)
    head_shape = {**models.shape(m), "d_ff": m.vocab / maps}
    found = cells.fitted
    head = {f: found[op, f](head_shape) for f in OP_FIGURES if (op, f) in found}
    head["time_linear_s"] = head.get("latency_s", 0.0)
    varied = len({s["d_ff"] / s["d_model"] for s in cells.shapes}) > 1
    for figure, value in head.items():
        key = "online_s" if figure == "latency_s" else figure
        if key not in figures:
            continue
        figures[key] += value
        hows[key] = "+".join(sorted({hows[key], "fitted"}))
        factor[key] = max(factor[key], head_shape["d_ff"] / max(s["d_ff"] for s in cells.shapes))
        if not varied:
            flags[key] = "unvalidated: the LM head is extrapolated from cells where d_ff = 4 d_model"


def backend_rows(base, cells: Cells, cfg: ProjectConfig, client: float, nets, checked) -> list[dict[str, object]]:
    m, target = cfg.model, models.shape(cfg.model)
    block, cell, how = block_at(cells, target)
    figures = model_figures(block, models.private_layers(m))
    hows = dict.fromkeys(figures, how)
    factor = dict.fromkeys(figures, extrapolation(cells, target) if how == "fitted" else 1.0)
    flags: dict[str, str] = {}
    shaky = any(sources(cells, target).inaccurate)
    if m.lm_head == "private":
        add_lm_head(cells, m, figures, hows, factor, flags)
    if m.n_layers > models.private_layers(m):
        figures["client_s"], hows["client_s"], factor["client_s"] = client, "plaintext", 1.0
        figures["online_s"] += 0.0 if math.isnan(client) else client
    rows = []

    def add(figure: str, value: float, network: str = "", source: str | None = None) -> None:
        of = source or figure
        unit = "s" if figure.endswith("_s") else UNITS.get(figure, "count")
        basis = "latency_s" if unit == "s" else of
        check = checked.get(basis)
        error = check["error"] if check else math.nan
        h = hows.get(of, how)
        rows.append(
            {**base, "network": network, "figure": figure, "value": value, "unit": unit, "how": h,
             "extrapolation": factor.get(of, 1.0), "validation_error": error,
             "flag": "; ".join(filter(None, [flags.get(of) or flag(h, check), shaky and INACCURATE]))}
        )  # fmt: skip

    for figure, value in figures.items():
        add(figure, value)
    for figure, value in cell.items():
        add(figure, value)
    for name, net in nets.items():
        add(f"online_{name}_s", network_time(figures, net), name, "online_s")
    return rows


def flag(how: str, check: dict[str, object] | None) -> str:
    """`validated`, `missed: ...` (shown flagged), `unvalidated`, or empty where nothing was fitted."""
    if "fitted" not in how:
        return ""
    if check is None:
        return "unvalidated: no held-out cell 2x beyond the fitted ones"
    if check["held"]:
        return "validated"
    return f"missed: validation error {check['error']:.0%} > {check['bound']:.0%}"


def classes() -> dict[str, str]:
    """The parts of the time breakdown: their `time_<class>_s` figure and name."""
    found = {time_figure(ends[0] if ends else name): name for name, ends, _ in (*CLASSES, OTHER) if name != "circuit"}
    return found | {"time_bootstrapping_s": "bootstrapping (cost model's price)"}
