"""Latency plot kinds: per-op breakdown, scaling with size, overhead against plaintext, setup against online.

Each function takes the tidy frame (`bench.report.frame.tidy`) and returns a figure, or None when the run
has nothing to show for that kind.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.report.frame import (
    MATCH,
    PLAINTEXT,
    SIZE_NAMES,
    SIZES,
    backend_rank,
    fmt_int,
    fmt_seconds,
    op_order,
    present,
    representative,
    size_point,
    sort_cells,
)
from bench.report.style import (
    HATCHES,
    MARKERS,
    cell_ticks,
    colour,
    figure,
    grid,
    legend_right,
    panel_height,
    series_styles,
    unit_axis,
    wrap,
)

SCALING_DIMS = {"seq_len": "seq_len (tokens)", "d_model": "d_model (features)"}


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def totals(frame: pd.DataFrame) -> pd.DataFrame:
    rows = ok_rows(frame)
    return rows[(rows["op"] == "total") & (rows["latency_s"] > 0)]


def breakdown(frame: pd.DataFrame) -> Figure | None:
    """Where the online time goes: each op's share of a cell's online latency (protect + ops + reveal),
    one bar per backend x variant at one size point per workload, the total written in the bar's label.
    In a cell whose ops were timed as circuits of their own, the bar shows those ops, not the fused run
    they stand for (which would count the same work twice)."""
    ops = ok_rows(frame)
    ops = ops[(ops["op"] != "total") & (ops["latency_s"] > 0)]
    has_isolated = ops.groupby(["run_id", "cell_id"])["isolated"].transform("any")
    ops = ops[~has_isolated | ops["isolated"] | ops["op"].isin(["protect", "reveal"])]
    panels = [representative(ops[ops["workload"] == w]) for w in ops["workload"].unique()]
    if not panels:
        return None
    labels = [p.drop_duplicates("cell_id")["series"] + " — 100 ms" for p in panels]  # as long as the real labels
    heights = [max(2.4, panel_height(lab), 0.1 * p["op"].nunique() + 1) for lab, p in zip(labels, panels, strict=True)]
    fig, axes = figure(heights)
    for ax, rows in zip(axes, panels, strict=True):
        breakdown_panel(ax, rows, totals(frame).set_index("cell_id")["latency_s"])
    return fig


def breakdown_panel(ax: Axes, rows: pd.DataFrame, total_s: pd.Series) -> None:
    ops = op_order(rows["op"])
    cells = [c for c, _, _ in series_styles(rows)]
    latency = rows.pivot_table(index="cell_id", columns="op", values="latency_s", aggfunc="first")
    latency = latency.reindex(index=cells, columns=ops).fillna(0.0)
    share = latency.div(latency.sum(axis=1), axis=0) * 100
    first = rows.drop_duplicates("cell_id").set_index("cell_id").loc[cells]
    first[["estimated", "isolated"]] = rows.groupby("cell_id")[["estimated", "isolated"]].any().loc[cells]
    colours = op_colours(len(ops))  # segments are ops; the backend colour is on the tick labels
    hatch = ["//" if e else "" for e in first["estimated"]]
    left = np.zeros(len(cells))
    for i, op in enumerate(ops):
        bars = ax.barh(range(len(cells)), share[op], left=left, color=colours[i], edgecolor="white", linewidth=0.6,
                       label=op)  # fmt: skip
        for bar, h in zip(bars, hatch, strict=True):
            bar.set_hatch(h)
        left += share[op].to_numpy()
    labels = [bar_label(row, total_s.get(cell, np.nan)) for cell, row in first.iterrows()]
    cell_ticks(ax, labels, list(first["backend"]))
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of online latency (%)")
    ax.set_title(f"{rows['workload'].iloc[0]}: per-op latency breakdown ({size_point(rows)})", loc="left")
    legend_right(ax, ncol=1 if len(ops) <= 12 else 2, title="op")


def factor_text(factor: float) -> str:
    return f"{float(f'{factor:.3g}'):,g}×" if factor < 1e6 else f"{factor:.3g}×"


def bar_label(row: pd.Series, total: float) -> str:
    notes = [n for n, on in (("est.", row["estimated"]), ("isolated ops", row["isolated"])) if on]
    return f"{row['series']} — {fmt_seconds(total)}" + (f" ({', '.join(notes)})" if notes else "")


def op_colours(n: int) -> list:
    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def scaling(frame: pd.DataFrame) -> Figure | None:
    """Total online latency against each swept size, log-log, the fitted slope (the empirical exponent)
    in the legend; one panel per (size, workload) with at least one series of two or more points."""
    tot = totals(frame)
    panels = []
    for dim in SCALING_DIMS:
        others = [s for s in SIZES if s != dim and not (dim == "d_model" and s == "d_ff")]  # d_ff follows d_model
        for workload, rows in tot.groupby("workload", sort=False):
            groups = [g for _, g in rows.groupby(["backend", "variant", "tag", *others], sort=False, dropna=False)
                      if g[dim].nunique() >= 2]  # fmt: skip
            if groups:
                panels.append((4.2, lambda ax, d=dim, w=workload, gs=groups: scaling_panel(ax, d, w, gs)))
    return grid(panels) if panels else None


def scaling_panel(ax: Axes, dim: str, workload: str, groups: list[pd.DataFrame]) -> None:
    groups = sorted(groups, key=lambda g: (backend_rank(g["backend"].iloc[0]), g["series"].iloc[0]))
    everything = pd.concat(groups)
    others = [s for s in SIZES if s != dim]
    varying = [s for s in others if everything[s].nunique() > 1 and not (dim == "d_model" and s == "d_ff")]
    for i, g in enumerate(groups):
        points = g.groupby(dim)["latency_s"].median()
        x, y = points.index.to_numpy(dtype=float), points.to_numpy()
        slope = np.polyfit(np.log(x), np.log(y), 1)[0]
        at = " ".join(f"{SIZE_NAMES[s]}={fmt_int(g[s].iloc[0])}" for s in varying)
        name = f"{g['series'].iloc[0]}{f' [{at}]' if at else ''}: slope {slope:.2f}"
        ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colour(g["backend"].iloc[0]), label=wrap(name, 45))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted(everything[dim].unique())
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.minorticks_off()
    unit_axis(ax, "s", "y")
    ax.set_xlabel(SCALING_DIMS[dim])
    ax.set_ylabel("total online latency")
    ax.set_title(f"{workload}: latency vs {dim} ({size_point(everything, skip=(dim,))})", loc="left", fontsize=10)
    legend_right(ax)


def overhead(frame: pd.DataFrame) -> Figure | None:
    """Each backend's total online latency divided by plaintext's for the same workload point."""
    tot = totals(frame)
    plain = tot[tot["backend"] == PLAINTEXT].groupby(list(MATCH), dropna=False)["latency_s"].median()
    others = tot[tot["backend"] != PLAINTEXT]
    if plain.empty or others.empty:
        return None
    joined = others.join(plain.rename("plain_s"), on=list(MATCH), how="inner")
    if joined.empty:
        return None
    joined = sort_cells(joined.assign(factor=joined["latency_s"] / joined["plain_s"]))
    fig, (ax,) = figure([panel_height(joined["cell"])])
    y = np.arange(len(joined))
    hatches = [HATCHES[1] if e else "" for e in joined["estimated"]]
    bars = ax.barh(y, joined["factor"], color=[colour(b) for b in joined["backend"]], hatch=hatches)
    ax.bar_label(bars, labels=[factor_text(f) for f in joined["factor"]], fontsize=8, padding=3)
    cell_ticks(ax, list(joined["cell"]), list(joined["backend"]))
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    ax.margins(x=0.12)
    ax.set_xlim(left=0.5)
    ax.set_xlabel("slowdown: total online latency ÷ plaintext's for the same cell (×, log)")
    ax.set_title("Overhead factor against plaintext", loc="left")
    return fig


def setup(frame: pd.DataFrame) -> Figure | None:
    """Setup (once per cell) against online cost (per run), with 1×, 10×, ... guides: how many runs
    amortise the setup; and, where backends split it, setup by component."""
    tot = totals(frame)
    tot = tot[tot["setup_s"] > 0]
    if tot.empty:
        return None
    components = present(tot, scope="cell", kind="setup")
    parts = tot[tot[components].notna().any(axis=1)] if components else tot.iloc[:0]
    panels = [(5.5, lambda ax: setup_scatter(ax, tot))]
    if not parts.empty:
        height = max(3.0, panel_height(parts["cell"] + " — setup 1 s"))
        panels.append((height, lambda ax: setup_parts(ax, sort_cells(parts), components)))
    return grid(panels, ncols=1)


def setup_scatter(ax: Axes, tot: pd.DataFrame) -> None:
    for backend, rows in sort_cells(tot).groupby("backend", sort=False):
        ax.scatter(rows["latency_s"], rows["setup_s"], color=colour(backend), s=40, label=backend, zorder=3,
                   edgecolor="white")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo = min(tot["latency_s"].min(), tot["setup_s"].min()) / 3
    hi = max(tot["latency_s"].max(), tot["setup_s"].max()) * 3
    x = np.array([lo, hi])
    for k in (1, 10, 100, 1000, 10_000):  # equal aspect: every guide is a 45° line, labelled along it
        ax.plot(x, k * x, color="grey", linestyle=":", linewidth=0.8, zorder=1)
        at = hi / 4 / k
        if at > lo * 2:
            ax.text(at, at * k, "setup = 1× online" if k == 1 else f"{k:,}×", fontsize=7.5, color="dimgrey",
                    rotation=45, rotation_mode="anchor", ha="right", va="bottom")  # fmt: skip
    ax.set_aspect("equal")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    unit_axis(ax, "s", "x")
    unit_axis(ax, "s", "y")
    ax.set_xlabel("online latency per run (total)")
    ax.set_ylabel("setup, once per cell")
    ax.set_title("Setup vs online cost (one point per cell)", loc="left")
    ax.legend(loc="lower right", frameon=False)


def setup_parts(ax: Axes, parts: pd.DataFrame, components: list[str]) -> None:
    known = parts[components].fillna(0.0)
    other = (parts["setup_s"] - known.sum(axis=1)).clip(lower=0.0)
    stack = known.assign(other_s=other)
    y, left = np.arange(len(parts)), np.zeros(len(parts))
    used, names = [], []
    for column, hatch in zip(stack.columns, HATCHES, strict=False):
        if stack[column].sum() <= 0:
            continue
        used.append(hatch)
        names.append(column.removesuffix("_s").replace("_", " "))
        share = stack[column] / stack.sum(axis=1) * 100
        ax.barh(y, share, left=left, color=[colour(b) for b in parts["backend"]], hatch=hatch, edgecolor="white",
                alpha=0.85, label=column.removesuffix("_s").replace("_", " "))  # fmt: skip
        left += share.to_numpy()
    labels = [f"{c} — setup {fmt_seconds(s)}" for c, s in zip(parts["cell"], parts["setup_s"], strict=True)]
    cell_ticks(ax, labels, list(parts["backend"]))
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of setup time (%) — hatch marks the component")
    ax.set_title("Setup by component", loc="left")
    handles = [Patch(facecolor="grey", edgecolor="white", hatch=h, label=n) for h, n in zip(used, names, strict=True)]
    legend_right(ax, handles=handles)
