"""The projection sections of a run's report: GPT-2 (from `block` cells), Llama-7B or Llama-3.2-1B
(from `llama_block` cells of their K/V grouping) over 128 tokens, each when the run holds the
model's block variant at three or more shapes (what `+experiment=fit` / `fit_llama` measure)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.project.assemble import project
from bench.project.cli import configure
from bench.project.model import block, kv_group
from bench.project.page import breakdown_plot, model_table, validation_table
from bench.project.projection import cfg_kv_group
from bench.report.render import Block
from workloads.base import ConfigError

MODELS = ("gpt2", "llama-7b", "llama-3.2-1b")


def projection_blocks(frame: pd.DataFrame, out: Path) -> list[Block]:
    return [b for model in MODELS for b in model_blocks(frame, configure([f"model={model}"]), out)]


def model_blocks(frame: pd.DataFrame, cfg, out: Path) -> list[Block]:
    repeated = block(cfg.model)
    totals = frame[(frame.workload == repeated.name) & (frame.op == "total") & (frame.variant == repeated.variant)]
    cells = totals[totals.workload_cfg.map(cfg_kv_group) == kv_group(repeated)]
    if len(set(zip(cells.seq_len, cells.d_model, strict=True))) < 3:
        return []
    blocks: list[Block] = [("h2", f"Projection: {cfg.model.name}, {cfg.model.seq_len} tokens")]
    try:
        proj = project(frame, cfg)
    except ConfigError as exc:
        return [*blocks, ("p", f"Not projected: {exc}")]
    rows = pd.DataFrame(proj.rows)
    networks = sorted({n for n in rows.network if n})
    blocks += [
        ("p", "One private forward of the whole model from this run's block cells (encbench-project; "
              "docs/reports.md says how). M measured, C counted, F fitted (x extrapolation), ⚠ flagged."),
        ("table", model_table(rows, networks)),
    ]  # fmt: skip
    plot = breakdown_plot(rows, out, networks, file=f"fig-projection-{cfg.model.name}.png")
    checked = validation_table(proj.validation)
    blocks += [("img", plot)] if plot else []
    blocks += [("h3", "Validation"), ("table", checked)] if checked else []
    return blocks
