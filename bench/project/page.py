"""The projection's page: whole-model figures per backend, where the time goes (table and stacked
bars per backend x network), the validation table and the notes; as markdown and HTML."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.project.assemble import Projection, classes
from bench.project.model import ProjectConfig, private_layers, variant
from bench.project.projection import OP_FIGURES
from bench.report.frame import fmt_bytes, fmt_count, fmt_seconds
from bench.report.plots import Plot, plt
from bench.report.render import Block, to_html, to_markdown
from bench.report.style import figure
from bench.report.tables import Table

HOW_MARK = {"measured": "M", "counted": "C", "fitted": "F", "plaintext": "P"}
FIGURE_NAMES = {"comm_bytes": "communication", "rounds": "rounds", "pbs": "PBS", "bootstraps": "bootstraps",
                "refreshes": "refreshes", "key_bytes": "keys", "setup_s": "setup (one block)"}  # fmt: skip
PLOT_FILE = "fig-projection.png"  # the report's prefix: a rebuild removes a stale one


def fmt_unit(unit: str, value: float) -> str:
    """Seconds and bytes in human units; counts rounded, with separators."""
    if unit in ("s", "bytes"):
        return {"s": fmt_seconds, "bytes": fmt_bytes}[unit](value)
    return fmt_count(round(value) if math.isfinite(value) else value)


def show(row: pd.Series) -> str:
    """A value in its unit, with how it was obtained (M, C, F xfactor, P) and a flag mark."""
    if math.isnan(row.value):
        return "–"
    text = fmt_unit(row.unit, row.value)
    marks = "+".join(HOW_MARK.get(h, h) for h in row.how.split("+") if h)
    if "fitted" in row.how and row.extrapolation > 1:
        marks += f" ×{row.extrapolation:.3g}"
    return f"{text} ({marks})" + (" ⚠" if row.flag not in ("", "validated") else "")


def model_table(rows: pd.DataFrame, networks: list[str]) -> Table:
    columns = {"online_s": "online (compute)", **{f"online_{n}_s": f"online, {n}" for n in networks}}
    columns |= FIGURE_NAMES
    data, marks = {}, {}
    for backend, of in rows.groupby("backend", sort=False):
        by = of.set_index("figure")
        unsupported = of.flag.str.startswith("unsupported")
        if unsupported.any():
            data[backend] = {name: "" for name in columns.values()} | {"online (compute)": of.flag[unsupported].iloc[0]}
            marks[backend] = {name: "bad" if name == "online (compute)" else "" for name in columns.values()}
            continue
        data[backend] = {name: show(by.loc[f]) if f in by.index else "–" for f, name in columns.items()}
        flagged = {f for f in by.index if str(by.at[f, "flag"]).startswith("missed")}
        marks[backend] = {name: "bad" if f in flagged else "" for f, name in columns.items()}
    frame = pd.DataFrame.from_dict(data, orient="index")
    return Table(frame, pd.DataFrame.from_dict(marks, orient="index"), index_name="backend")


def time_table(rows: pd.DataFrame) -> Table | None:
    parts = classes()
    times = rows[rows.figure.isin([*parts, "client_s"]) & rows.network.eq("")]
    if times.empty:
        return None
    wide = times.pivot_table(index="backend", columns="figure", values="value", aggfunc="sum", sort=False)
    total = wide.sum(axis=1)
    order = [f for f in [*parts, "client_s"] if f in wide and (wide[f] > 0).any()]
    shares = {parts.get(f, "client layers (plaintext)"): (wide[f] / total).map(lambda v: f"{v:.0%}") for f in order}
    table = pd.DataFrame(shares)
    table.insert(0, "online (compute)", total.map(fmt_seconds))
    return Table(table, index_name="backend")


def validation_table(validation: list[dict[str, object]]) -> Table | None:
    if not validation:
        return None
    frame = pd.DataFrame(validation)
    units = [OP_FIGURES[f] for f in frame.figure]
    table = pd.DataFrame(
        {
            "figure": frame.figure,
            "fitted": frame.fitted,
            "held out": frame.held_out,
            "predicted": [fmt_unit(u, v) for u, v in zip(units, frame.predicted, strict=True)],
            "measured": [fmt_unit(u, v) for u, v in zip(units, frame.measured, strict=True)],
            "error": frame.error.map(lambda e: f"{e:.1%}" if math.isfinite(e) else "∞"),
            "verdict": [
                f"held (≤ {b:.0%})" if h else f"MISSED (> {b:.0%})"
                for b, h in zip(frame.bound, frame.held, strict=True)
            ],
        },
    )
    table.index = frame.backend
    marks = pd.DataFrame("", index=table.index, columns=table.columns)
    marks["verdict"] = ["" if h else "bad" for h in frame.held]
    return Table(table, marks, index_name="backend")


def breakdown_plot(rows: pd.DataFrame, out: Path, networks: list[str], file: str = PLOT_FILE) -> Plot | None:
    """Stacked bars of shares: per backend x network, the model's online time by op class, the
    client's plaintext layers and the network; the total at the bar's end."""
    parts = classes()
    totals = rows[rows.network.eq("") & rows.figure.eq("online_s") & rows.value.notna()]
    if totals.empty:
        return None
    bars = []
    for backend in totals.backend:
        of = rows[rows.backend == backend].set_index("figure").value
        segments = {name: of.get(f, 0.0) for f, name in parts.items()} | {"client layers": of.get("client_s", 0.0)}
        talks = of.get("rounds", 0.0) > 0 or of.get("comm_bytes", 0.0) > 0
        for net in ["", *(networks if talks else [])]:
            wire = of[f"online_{net}_s"] - of["online_s"] if net else 0.0
            bars.append((f"{backend}, {net or 'compute only'}", {**segments, "network": wire}))
    fig, (ax,) = figure([0.32 * len(bars) + 1.2])
    labels = [label for label, _ in bars]
    totals = [sum(np.nan_to_num(list(b.values()))) for _, b in bars]
    left = np.zeros(len(bars))
    for name in [*parts.values(), "client layers", "network"]:
        widths = np.array([np.nan_to_num(b.get(name, 0.0)) for _, b in bars]) / np.maximum(totals, 1e-300)
        if widths.any():
            ax.barh(labels, widths * 100, left=left * 100, label=name)
            left += widths
    for y, total in enumerate(totals):
        ax.text(101, y, fmt_seconds(total), va="center", fontsize=8)
    ax.set_xlim(0, 112)
    ax.set_xlabel("share of one forward's online time (%); the total at the right")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.savefig(out / file, bbox_inches="tight", dpi=110)
    plt.close(fig)
    return Plot(
        "projection",
        "Where the time goes",
        file,
        "Projected online time of one forward per backend "
        "and network, as shares: op classes of the private layers, the client's plaintext layers, and the "
        "network (rounds x RTT + busiest bytes / bandwidth).",
    )


def document(proj: Projection, cfg: ProjectConfig, command: str, out: Path) -> list[Block]:
    m = cfg.model
    rows = pd.DataFrame(proj.rows)
    networks = sorted({n for n in rows.network if n})
    layers = private_layers(m)
    head = {"client": "on the client, in plaintext, on the revealed last hidden state (the head's weights are then "
            "the client's)", "private": "privately, as one more linear layer (d_model x vocab), from the MLP's "
            "first linear layer's fits at d_ff = vocab"}[m.lm_head]  # fmt: skip
    frozen = f" The first {m.n_layers - layers} layers run on the client in plaintext (Marill's layer freezing)."
    frozen = frozen if layers < m.n_layers else ""
    blocks: list[Block] = [
        ("h1", f"Projection: {m.name}, {m.seq_len} tokens, {layers} of {m.n_layers} layers private"),
        ("p", f"Command: {command}"),
        ("p", f"Model: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, d_ff {m.d_ff}, vocab {m.vocab}; "
              f"block variant {variant(m)}; projected with the {m.block} block. The embedding lookup runs on the "
              f"client (token ids are its own); the LM head runs {head}." + frozen),
        ("p", "How: M measured at the model's block shape, C counted there (dry run or compile; latency from the "
              "backend's cost model), F fitted on smaller cells (×: extrapolation factor, target over largest "
              "measured size), P the plaintext backend. ⚠ a projection whose validation missed its bound "
              f"(counters {cfg.counter_bound:.0%}, latency {cfg.latency_bound:.0%}), could not be validated, or comes "
              "from cells whose output missed its tolerance (projection.jsonl's flag says which). "
              "Protect and reveal once per forward; every other op once per private layer."),
        ("h2", "Whole model per backend"),
        ("table", model_table(rows, networks)),
    ]  # fmt: skip
    times = time_table(rows)
    if times is not None:
        blocks += [("h2", "Where the time goes"), ("table", times)]
        plot = breakdown_plot(rows, out, networks)
        blocks += [("img", plot)] if plot else []
    checked = validation_table(proj.validation)
    blocks += [("h2", "Validation")]
    blocks += [("table", checked)] if checked else [("p", "No backend has a cell 2x beyond its fitted cells.")]
    notes = [f"{b}: {n}" for b, ns in proj.notes.items() for n in ns]
    notes += [f"{r['backend']}: {r['flag']}" for r in proj.rows if str(r["flag"]).startswith("unsupported")]
    if notes:
        blocks += [("h2", "Notes"), *(("p", n) for n in notes)]
    return blocks


def write(proj: Projection, cfg: ProjectConfig, command: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("projection", proj.rows), ("validation", proj.validation), ("fits", proj.fits)):
        pd.DataFrame(records).to_json(out / f"{name}.jsonl", orient="records", lines=True)
    blocks = document(proj, cfg, command, out)
    (out / "index.html").write_text(to_html(blocks, f"encbench projection {cfg.model.name}"), encoding="utf-8")
    (out / "projection.md").write_text(to_markdown(blocks), encoding="utf-8")
