"""The report's figures: the seven plot kinds, in report order, drawn as PNG files beside the report.

A kind with no data in the run returns no figure and is left out of the report rather than drawn
empty, so the number of images equals the number of kinds this run has data for. The kinds live in
`plots_latency` and `plots_counters`; shared look and data helpers in `style` / `frame`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, before pyplot is imported anywhere

import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bench.report import plots_counters as counters  # noqa: E402
from bench.report import plots_latency as latency  # noqa: E402
from bench.report.style import STYLE  # noqa: E402

PREFIX = "fig-"  # every file the report draws starts with this; a rebuild removes stale ones


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    draw: Callable[[pd.DataFrame], Figure | None]
    caption: str


KINDS = (
    Kind("breakdown", "Per-op latency breakdown", latency.breakdown,
         "Share of each cell's online latency per op (protect, workload ops, reveal); the bar label gives the "
         "total. One bar per backend × variant at one size point per workload; tick labels in backend colour."),
    Kind("scaling", "Scaling with size", latency.scaling,
         "Total online latency against the swept size, log-log. The slope is the fitted exponent: 1 linear, "
         "2 quadratic in that size."),
    Kind("overhead", "Overhead against plaintext", latency.overhead,
         "Each backend's total online latency divided by plaintext's for the same workload, variant and sizes."),
    Kind("communication", "Communication", counters.communication,
         "Bytes and rounds per op (all parties, both ways), and the estimated online time on each network "
         "preset next to the time measured with all parties on one machine."),
    Kind("counters", "Counters per op", counters.counters,
         "Every other deterministic per-op counter the backends declare: programmable bootstraps (TFHE), "
         "multiplicative depth and rotations (CKKS), ... (docs/metrics.md lists them)."),
    Kind("accuracy", "Accuracy", counters.accuracy,
         "Max absolute error of each op's revealed output against the float64 reference; dashed lines are "
         "tolerances, red crosses mark ops above tolerance (accuracy cliffs)."),
    Kind("setup", "Setup against online cost", latency.setup,
         "Setup (keygen, compile, party start; once per cell) against one online run: a point on the 10× line "
         "needs 10 runs to amortise its setup."),
)  # fmt: skip


@dataclass(frozen=True)
class Plot:
    kind: str
    title: str
    file: str
    caption: str


def draw_all(frame: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """Draw every kind that has data into `out_dir` (removing figures of an earlier build first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{PREFIX}*.png"):
        stale.unlink()
    plots = []
    with plt.rc_context(STYLE):
        for number, kind in enumerate(KINDS, start=1):
            fig = kind.draw(frame)
            if fig is None:
                continue
            file = f"{PREFIX}{number}-{kind.name}.png"
            try:
                fig.savefig(out_dir / file, bbox_inches="tight")
            finally:
                plt.close(fig)
            plots.append(Plot(kind.name, kind.title, file, kind.caption))
    return plots
