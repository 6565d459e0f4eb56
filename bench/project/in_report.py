"""The projection section of a run's report: GPT-2 over 128 tokens, when the run holds the model's
block variant at three or more shapes (what `+experiment=fit` measures)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.project.assemble import project
from bench.project.cli import configure
from bench.project.model import variant
from bench.project.page import breakdown_plot, model_table, validation_table
from bench.report.render import Block
from workloads.base import ConfigError


def projection_blocks(frame: pd.DataFrame, out: Path) -> list[Block]:
    cfg = configure([])
    cells = frame[(frame.workload == "block") & (frame.op == "total") & (frame.variant == variant(cfg.model))]
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
    plot = breakdown_plot(rows, out, networks)
    checked = validation_table(proj.validation)
    blocks += [("img", plot)] if plot else []
    blocks += [("h3", "Validation"), ("table", checked)] if checked else []
    return blocks
