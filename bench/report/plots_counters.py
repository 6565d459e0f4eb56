"""Counter and accuracy plot kinds: communication, the other per-op counters (PBS, depth, ...), error.

Each function takes the tidy frame (`bench.report.frame.tidy`) and returns a figure, or None when the run
has nothing to show for that kind.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.columns import registry
from bench.report.frame import fmt_seconds, op_order, present, representative, size_point, sort_cells, tags
from bench.report.style import (
    CLIFF,
    HATCHES,
    MARKERS,
    cell_ticks,
    colour,
    grid,
    legend_right,
    op_bars,
    panel_height,
    unit_axis,
    wrap,
)

AXIS_UNITS = {"bytes": "B", "s": "s"}  # other units are counts


def per_op_counters(frame: pd.DataFrame, kind: str) -> list[str]:
    """Registered per-op columns of `kind` with data (families like `comm_bytes_*` left out: their
    members are parts of a column shown)."""
    return [c for c in present(ok_ops(frame), scope="op", kind=kind) if registry().named(c)]


def ok_ops(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["status"] == "ok") & (frame["op"] != "total")]


def per_op_panels(frame: pd.DataFrame, columns: tuple[str, ...]) -> list:
    """One panel per (counter, workload) with a non-zero value, at the workload's representative size point."""
    ops = ok_ops(frame)
    panels = []
    for column in columns:
        for workload, rows in ops[ops[column].notna()].groupby("workload", sort=False):
            if not rows[column].any():  # all zero (CrypTen's trusted first party sends no triples): nothing to draw
                continue
            rows = representative(rows)
            height = max(3.0, 0.22 * rows["op"].nunique() * max(1, rows["cell_id"].nunique() ** 0.5) + 1.5)
            panels.append((height, lambda ax, c=column, w=workload, r=rows: per_op_panel(ax, c, w, r)))
    return panels


def per_op_panel(ax: Axes, column: str, workload: str, rows: pd.DataFrame) -> None:
    spec = registry().lookup(column)
    op_bars(ax, rows, column, AXIS_UNITS.get(spec.unit, "n"), label=lambda row: row["series"])
    ax.set_title(f"{workload}: {column} per op ({size_point(rows)})", loc="left", fontsize=10)
    ax.set_xlabel(spec.unit + (" (log)" if ax.get_xscale() == "log" else ""))
    legend_right(ax)


def communication(frame: pd.DataFrame) -> Figure | None:
    """Communication per op (bytes, rounds: every `communication` counter), and the estimated online
    time on each network next to the measured one."""
    panels = per_op_panels(frame, per_op_counters(frame, "communication"))
    est = frame[(frame["status"] == "ok") & (frame["op"] == "total")]
    networks = registry().select(present(est, kind="estimate"), name="est_*_s")
    est = sort_cells(est[est[networks].notna().any(axis=1)]) if networks else est.iloc[:0]
    if not est.empty:
        panels.append((max(3.0, panel_height(est["cell"], per_bar=0.5)), lambda ax: network_panel(ax, est, networks)))
    return grid(panels, ncols=1) if panels else None


def network_panel(ax: Axes, est: pd.DataFrame, networks: list[str]) -> None:
    y = np.arange(len(est))
    cols = [colour(b) for b in est["backend"]]
    series = [("latency_s", "measured (one machine)"), *((c, f"estimated {c[4:-2].upper()}") for c in networks)]
    width = 0.8 / len(series)
    for i, (column, name) in enumerate(series):
        alpha = 0.35 if column == "latency_s" else 0.9
        offset = (i - (len(series) - 1) / 2) * width
        bars = ax.barh(y + offset, est[column], height=width, color=cols, hatch=HATCHES[i % len(HATCHES)],
                       alpha=alpha, edgecolor="black", linewidth=0.3, label=name)  # fmt: skip
        ax.bar_label(bars, labels=[time_label(v) for v in est[column]], fontsize=7, padding=2)
    cell_ticks(ax, list(est["cell"]), list(est["backend"]))
    ax.set_xscale("log")
    unit_axis(ax, "s")
    ax.margins(x=0.15)
    ax.set_xlabel("total online time (log)")
    ax.set_title("Estimated online time per network (cost model) against measured", loc="left", fontsize=10)
    legend_right(ax)


def time_label(value: float) -> str:
    return fmt_seconds(value) if np.isfinite(value) else ""


def counters(frame: pd.DataFrame) -> Figure | None:
    """Every other per-op counter with data: PBS (TFHE), depth and rotations (CKKS), ..."""
    panels = per_op_panels(frame, per_op_counters(frame, "counter"))
    return grid(panels, ncols=1) if panels else None


def accuracy(frame: pd.DataFrame) -> Figure | None:
    """Max |error| against float64 per op and backend (log), each backend's tolerance dashed, ops above
    tolerance as red crosses; and the output error against `n_bits` where it was swept."""
    rows = frame[(frame["status"] == "ok") & (frame["max_abs_error"] > 0)]
    panels = []
    for workload, wrows in rows.groupby("workload", sort=False):
        # the representative size point, plus every cell with an op above tolerance: no cliff goes unseen
        keep = set(representative(wrows)["cell_id"]) | set(wrows.loc[wrows["cliff"], "cell_id"])
        wrows = wrows[wrows["cell_id"].isin(keep)]
        height = max(3.2, 0.3 * wrows["op"].nunique() + 1.6)
        panels.append((height, lambda ax, w=workload, r=wrows: error_panel(ax, w, r)))
    swept = n_bits_groups(frame)
    if swept:
        panels.append((4.0, lambda ax: n_bits_panel(ax, swept)))
    return grid(panels, ncols=1) if panels else None


def error_panel(ax: Axes, workload: str, rows: pd.DataFrame) -> None:
    ops = op_order(rows["op"])
    cells = sort_cells(rows.drop_duplicates("cell_id"))
    step = 0.7 / max(len(cells), 1)
    several = rows["sizes"].nunique() > 1
    for j, (_, cell) in enumerate(cells.iterrows()):
        mine = rows[rows["cell_id"] == cell["cell_id"]].set_index("op").reindex(ops)
        y = np.arange(len(ops)) + (j - (len(cells) - 1) / 2) * step
        ax.scatter(mine["max_abs_error"], y, color=colour(cell["backend"]), marker=MARKERS[j % len(MARKERS)], s=28,
                   label=wrap(cell["series"] + (f" [{cell['sizes']}]" if several else ""), 45), zorder=3)  # fmt: skip
        bad = mine["cliff"].eq(True).to_numpy()
        ax.scatter(mine["max_abs_error"][bad], y[bad], marker="x", color=CLIFF, s=110, linewidths=2.2, zorder=4)
    for (backend, tol), _ in cells.groupby(["backend", "tolerance"], sort=False):
        ax.axvline(tol, color=colour(backend), linestyle="--", linewidth=1)
        ax.annotate(f"tol {tol:.0e}", (tol, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    color=colour(backend), rotation=90, va="top", ha="right")  # fmt: skip
    ax.set_yticks(range(len(ops)), ops)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("max |revealed − float64 reference| (log); dashed: tolerance")
    n_bad = int(rows["cliff"].sum())
    title = f"{workload}: error per op ({size_point(rows)}); exact zeros not drawn"
    ax.set_title(title + (f" — {n_bad} ABOVE TOLERANCE" if n_bad else ""), loc="left", fontsize=10,
                 color=CLIFF if n_bad else "black")  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    cross = Line2D([], [], marker="x", color=CLIFF, linestyle="", markersize=9, markeredgewidth=2.2)
    legend_right(ax, handles=[*handles, cross], labels=[*labels, "above tolerance"])


def n_bits_groups(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Output-error series (total rows) that differ only in `n_bits`, with two or more values of it."""
    tot = frame[(frame["status"] == "ok") & (frame["op"] == "total") & frame["n_bits"].notna()]
    if tot.empty:
        return []
    tot = tot.assign(_series=tags(tot, exclude=("n_bits",)))
    keys = ["backend", "workload", "variant", "seq_len", "d_model", "n_heads", "d_ff", "lora_rank", "_series"]
    return [g for _, g in tot.groupby(keys, sort=False, dropna=False) if g["n_bits"].nunique() >= 2]


def n_bits_panel(ax: Axes, groups: list[pd.DataFrame]) -> None:
    for i, g in enumerate(groups):
        g = g.sort_values("n_bits")
        name = " ".join(p for p in (g["backend"].iloc[0], g["workload"].iloc[0], g["variant"].iloc[0],
                                    g["sizes"].iloc[0], g["_series"].iloc[0]) if p)  # fmt: skip
        ax.plot(g["n_bits"], g["max_abs_error"], marker=MARKERS[i % len(MARKERS)], color=colour(g["backend"].iloc[0]),
                label=wrap(name, 45))  # fmt: skip
        bad = g[g["cliff"]]
        ax.scatter(bad["n_bits"], bad["max_abs_error"], marker="x", color=CLIFF, s=110, linewidths=2.2, zorder=4)
        ax.axhline(g["tolerance"].iloc[0], color=colour(g["backend"].iloc[0]), linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ticks = sorted(pd.concat(groups)["n_bits"].unique())
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_xlabel("n_bits (TFHE quantization)")
    ax.set_ylabel("max |error| of the output")
    ax.set_title("Output error vs n_bits (dashed: tolerance; red ×: above it)", loc="left", fontsize=10)
    legend_right(ax)
