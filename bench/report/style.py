"""The shared look of the report figures: one colour per backend in every plot, readable sizes, log axes
where values span decades, and grouped per-op bars used by several plot kinds."""

from __future__ import annotations

import textwrap
import zlib
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

import backends  # noqa: E402
from bench.report.frame import PLAINTEXT, backend_rank, fmt_bytes, fmt_count, fmt_seconds, op_order  # noqa: E402

STYLE = {  # applied around all drawing by bench.plots.draw_all
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.labelsize": 10, "legend.fontsize": 8.5,
    "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 100,
}  # fmt: skip
WIDTH = 12.0  # inches: 1200 px at 100 dpi, the report's page width
PLAINTEXT_COLOUR = "#7f7f7f"
PALETTE = ("#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79")
CLIFF = "#d62728"  # red is reserved for "above tolerance"
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">")


def colour(backend: str) -> str:
    """The backend's colour, the same in every plot and every report."""
    if backend == PLAINTEXT:
        return PLAINTEXT_COLOUR
    builtin = [n for n in backends.names(plugins=False) if n != PLAINTEXT]  # fixed per version of the code
    if backend in builtin:
        return PALETTE[builtin.index(backend) % len(PALETTE)]
    return PALETTE[zlib.crc32(str(backend).encode()) % len(PALETTE)]


def figure(heights: Sequence[float], ncols: int = 1, width: float = WIDTH) -> tuple[Figure, list[Axes]]:
    """A figure whose panel rows have the given heights (inches); panels fill it row by row."""
    fig, axes = plt.subplots(len(heights), ncols, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": list(heights)}, layout="constrained")  # fmt: skip
    return fig, list(axes.flat)


def grid(panels: list[tuple[float, Callable[[Axes], None]]], ncols: int = 1) -> Figure:
    """Panels (height in inches, draw) laid out `ncols` to a row. Each row is its own subfigure, so a
    panel with long tick labels does not squeeze the panels of other rows."""
    ncols = min(ncols, len(panels))
    rows = [panels[i : i + ncols] for i in range(0, len(panels), ncols)]
    heights = [max(h for h, _ in row) for row in rows]
    fig = plt.figure(figsize=(WIDTH, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(rows), 1, height_ratios=heights, squeeze=False).flat
    for subfig, row in zip(subfigs, rows, strict=True):
        axes = subfig.subplots(1, ncols, squeeze=False).flat
        for ax, (_, draw) in zip(axes, row, strict=False):
            draw(ax)
        for ax in list(axes)[len(row) :]:
            ax.set_visible(False)
    return fig


def wrap(label: str, width: int = 50) -> str:
    """Long tick labels on two or more lines instead of one line eating the plot's width."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False)) or label


def spans_decades(values: pd.Series | np.ndarray, decades: float = 2.0) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and v.max() / v.min() >= 10**decades


FORMATS = {"s": fmt_seconds, "B": fmt_bytes, "n": fmt_count}


def unit_axis(ax: Axes, unit: str, axis: str = "x") -> None:
    """Tick labels in human units (`s` -> µs/ms/s, `B` -> kB/MB/GB, `n` -> counts); on a log axis that
    spans less than a decade and a half, ticks at 1-2-5 steps so it still has labelled ticks."""
    fmt = FORMATS[unit]
    target = ax.xaxis if axis == "x" else ax.yaxis
    if target.get_scale() == "log":
        lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
        if lo > 0 and hi / lo < 10**1.5:
            target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))


def panel_height(labels: Sequence[str], per_line: float = 0.17, per_bar: float = 0.16, base: float = 1.3) -> float:
    """Inches a horizontal-bar panel needs so that its wrapped tick labels do not overlap."""
    return base + sum(per_bar + per_line * wrap(label).count("\n") + per_line for label in labels)


def legend_right(ax: Axes, ncol: int = 1, **kwargs) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, ncol=ncol, **kwargs)


def cell_ticks(ax: Axes, labels: Sequence[str], backends: Sequence[str]) -> None:
    """Wrapped y tick labels, one per bar from the top, in their backend's colour."""
    ax.set_yticks(range(len(labels)), [wrap(label) for label in labels])
    colour_ticklabels(ax, backends)
    ax.invert_yaxis()


def colour_ticklabels(ax: Axes, backends: Sequence[str], axis: str = "y") -> None:
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    for label, backend in zip(labels, backends, strict=False):
        label.set_color(colour(backend))


def series_styles(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(cell_id, backend, hatch) per cell in reading order; cells of one backend get distinct hatches."""
    cells = frame.drop_duplicates("cell_id")
    cells = cells.assign(_r=cells["backend"].map(backend_rank)).sort_values(["_r", "variant", "seq_len", "tag"])
    seen: dict[str, int] = {}
    out = []
    for cell, backend in zip(cells["cell_id"], cells["backend"], strict=True):
        out.append((cell, backend, HATCHES[seen.get(backend, 0) % len(HATCHES)]))
        seen[backend] = seen.get(backend, 0) + 1
    return out


def op_bars(ax: Axes, rows: pd.DataFrame, column: str, unit: str, label: Callable[[pd.Series], str]) -> None:
    """Grouped horizontal bars: one group per op (execution order, top to bottom), one bar per cell,
    coloured by backend; a log axis when the values span two decades or more."""
    rows = rows[rows[column].notna() & (rows["op"] != "total")]
    ops = op_order(rows["op"])
    styles = series_styles(rows)
    height = 0.8 / max(len(styles), 1)
    for j, (cell, backend, hatch) in enumerate(styles):
        mine = rows[rows["cell_id"] == cell]
        values = mine.set_index("op")[column].reindex(ops)
        y = np.arange(len(ops)) + (j - (len(styles) - 1) / 2) * height
        bars = ax.barh(y, values.to_numpy(dtype=float), height=height, color=colour(backend), hatch=hatch,
                       edgecolor="white", linewidth=0.5, label=wrap(label(mine.iloc[0]), 45))  # fmt: skip
        if len(styles) * len(ops) <= 40:
            ax.bar_label(bars, labels=[FORMATS[unit](v) if np.isfinite(v) else "" for v in values], fontsize=7,
                         padding=2)  # fmt: skip
    ax.set_yticks(range(len(ops)), ops)
    ax.invert_yaxis()
    if spans_decades(rows[column]):
        ax.set_xscale("log")
    unit_axis(ax, unit)
    ax.margins(x=0.15)
