"""The report's tables (pandas): latency and counter pivots per workload, accuracy cliffs, insecure cells,
failures; each a `Table` of display strings with CSS marks that render to HTML and markdown alike."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.columns import TOTAL, registry
from bench.report.frame import (
    backend_rank,
    fmt_count,
    fmt_error,
    fmt_seconds,
    fmt_value,
    op_order,
    present,
    sort_cells,
)

MARKERS_NOTE = ("Markers: ⚠CLIFF error above tolerance (accurate = false); ⚠INSECURE parameters below 128-bit "
                "security; ≈ latency estimated by a cost model; † per-op latency from a circuit compiled for that op "
                "alone (isolated); – not measured (e.g. ops fused into one circuit).")  # fmt: skip
MD_STRONG = ("cliff", "insecure", "bad")


@dataclass
class Table:
    """Display strings (the index holds the row labels) with an optional CSS class per cell and per label."""

    data: pd.DataFrame
    marks: pd.DataFrame | None = None
    label_marks: list[str] | None = None
    index_name: str = ""
    wrap: tuple[str, ...] = ()
    lines: bool = False  # cells hold several lines (newline-separated)

    def cells(self):
        for i, (label, row) in enumerate(self.data.iterrows()):
            marks = [self.marks.iat[i, j] if self.marks is not None else "" for j in range(len(row))]
            yield (
                (label, self.label_marks[i] if self.label_marks else ""),
                list(zip(row.index, row, marks, strict=True)),
            )

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [self.index_name, *self.data.columns])
        body = []
        for (label, mark), row in self.cells():
            extra = " lines" if self.lines else ""
            tds = [td(label, mark)] + [td(v, f"{m} wrap" if c in self.wrap else m + extra) for c, v, m in row]
            body.append("<tr>" + "".join(tds) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def to_markdown(self) -> str:
        header = [self.index_name or " ", *map(str, self.data.columns)]
        lines = ["| " + " | ".join(md(h, "") for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for (label, mark), row in self.cells():
            lines.append("| " + " | ".join([md(label, mark), *(md(v, m) for _, v, m in row)]) + " |")
        return "\n".join(lines)


def td(value: Any, mark: str) -> str:
    mark = mark.strip()
    return f"<td class='{mark}'>{html.escape(str(value))}</td>" if mark else f"<td>{html.escape(str(value))}</td>"


def md(value: Any, mark: str) -> str:
    text = str(value).replace("|", "\\|").replace("\n", "<br>")
    return f"**{text}**" if text and any(m in mark for m in MD_STRONG) else text


def ok_rows(frame: pd.DataFrame, workload: str) -> pd.DataFrame:
    rows = frame[(frame["workload"] == workload) & (frame["status"] == "ok")]
    return sort_cells(rows).drop_duplicates(["cell_id", "op"])


def by_op(rows: pd.DataFrame, values: list, cells: pd.Series, ops: list[str], fill: Any = "") -> pd.DataFrame:
    """values (one per row) laid out as cell x op."""
    table = rows.assign(_v=values).set_index(["cell_id", "op"])["_v"].unstack()
    return table.reindex(index=cells, columns=ops).fillna(fill)


def latency_text(row: Any) -> str:
    text = ("≈" if row.estimated else "") + fmt_seconds(row.latency_s) + ("†" if row.isolated else "")
    return f"⚠CLIFF {text}" if row.cliff else text


def latency_pivot(frame: pd.DataFrame, workload: str) -> Table:
    """Cells x ops of median latency, then setup and repeats; cliffs and insecure cells marked."""
    rows = ok_rows(frame, workload)
    cells = rows[rows["op"] == TOTAL]
    ops = op_order(rows["op"])
    data = by_op(rows, [latency_text(r) for r in rows.itertuples()], cells["cell_id"], ops)
    marks = by_op(rows, list(rows["cliff"].map({True: "cliff", False: ""})), cells["cell_id"], ops)
    data["setup"] = list(cells["setup_s"].map(fmt_seconds))
    data["repeats"] = list(cells["repeats"].map(fmt_count))
    marks["setup"] = marks["repeats"] = ""
    data.index = list(cells["row"])
    return Table(data, marks, list(cells["insecure"].map({True: "insecure", False: ""})), "cell")


def counter_text(row: pd.Series, columns: list[str], parts: dict[str, list[str]]) -> str:
    """One line per counter with a value, its parts (per party, per direction) in parentheses."""
    lines = []
    for column in columns:
        if pd.notna(row[column]):
            split = [f"{p[len(column) + 1 :]} {fmt_value(p, row[p])}" for p in parts[column] if pd.notna(row[p])]
            lines.append(f"{column} {fmt_value(column, row[column])}" + (f" ({' / '.join(split)})" if split else ""))
    return "\n".join(lines)


def counter_pivot(frame: pd.DataFrame, workload: str) -> Table | None:
    """Cells x ops of the deterministic per-op counters, then the cell's deterministic sizes and security."""
    rows = ok_rows(frame, workload)
    counted = present(rows, scope="op", deterministic=True)
    columns = [c for c in counted if registry().named(c)]
    rows = rows[rows["cell_id"].isin(rows.loc[rows[columns].notna().any(axis=1), "cell_id"])] if columns else rows[:0]
    if rows.empty:
        return None
    parts = {c: [p for p in counted if p.startswith(c + "_") and p not in columns] for c in columns}
    cells = rows[rows["op"] == TOTAL]
    ops = op_order(rows["op"])
    data = by_op(rows, [counter_text(r, columns, parts) for _, r in rows.iterrows()], cells["cell_id"], ops)
    marks = pd.DataFrame("", index=data.index, columns=data.columns)
    for column in [*present(cells, scope="cell", kind="size"), *present(cells, scope="cell", kind="security")]:
        data[column] = list(cells[column].map(lambda v, c=column: fmt_value(c, v)))
        marks[column] = ""
    if "security_bits" in data:
        low = list(cells["insecure"])
        bits = zip(data["security_bits"], low, strict=True)
        data["security_bits"] = [f"⚠INSECURE {v}" if bad else v for v, bad in bits]
        marks["security_bits"] = ["insecure" if bad else "" for bad in low]
    data.index = list(cells["row"])
    return Table(data, marks, list(cells["insecure"].map({True: "insecure", False: ""})), "cell", lines=True)


def cliff_table(frame: pd.DataFrame) -> Table | None:
    rows = sort_cells(frame[(frame["status"] == "ok") & frame["cliff"]])
    if rows.empty:
        return None
    data = pd.DataFrame({"op": list(rows["op"]), "max abs error": list(rows["max_abs_error"].map(fmt_error)),
                         "tolerance": list(rows["tolerance"].map(fmt_error)),
                         "× tolerance": [f"{e / t:.3g}" if t else "–" for e, t in
                                         zip(rows["max_abs_error"], rows["tolerance"], strict=True)]},
                        index=list(rows["cell"]))  # fmt: skip
    marks = pd.DataFrame("", index=data.index, columns=data.columns).assign(**{"max abs error": "cliff"})
    return Table(data, marks, index_name="cell")


def insecure_table(frame: pd.DataFrame) -> Table | None:
    rows = sort_cells(frame[frame["insecure"]])
    if rows.empty:
        return None
    bits = rows.groupby("cell_id", sort=False)["security_bits"].min()
    cells = rows.drop_duplicates("cell_id")
    data = pd.DataFrame({"security bits": [fmt_count(bits[c]) for c in cells["cell_id"]]}, index=list(cells["cell"]))
    return Table(data, data.map(lambda _: "insecure"), index_name="cell")


def failure_table(frame: pd.DataFrame) -> Table | None:
    rows = sort_cells(frame[(frame["op"] == "total") & (frame["status"] != "ok")])
    if rows.empty:
        return None
    data = pd.DataFrame({"status": list(rows["status"]), "message": list(rows["error"].fillna(""))},
                        index=list(rows["cell"]))  # fmt: skip
    marks = pd.DataFrame({"status": "bad", "message": ""}, index=data.index)
    return Table(data, marks, index_name="cell", wrap=("message",))


def status_table(frame: pd.DataFrame) -> Table:
    """Cells per backend and status."""
    totals = frame[frame["op"] == "total"]
    counts = totals.groupby(["backend", "status"])["cell_id"].nunique().unstack(fill_value=0)
    counts = counts.reindex(sorted(counts.index, key=backend_rank))
    known = [s for s in ("ok", "skipped", "error", "timeout") if s in counts]
    counts = counts[known + [s for s in counts if s not in known]]
    data = counts.astype(str).assign(cells=counts.sum(axis=1).astype(str))
    marks = pd.DataFrame("", index=data.index, columns=data.columns)
    for column in ("error", "timeout"):
        if column in counts:
            marks[column] = ["bad" if n else "" for n in counts[column]]
    return Table(data, marks, index_name="backend")


def cells_table(frame: pd.DataFrame, only: list[str] | None = None) -> Table | None:
    """One line per ok cell: total latency, setup, the totals of every deterministic per-op counter (a
    family's members, such as bytes per party, side by side), the cell's sizes, the estimates (network
    times, cost models), the output error (cliffs and insecure cells marked) and, where cells repeat,
    how many repeats missed the tolerance; `only` keeps those of the middle columns (and drops the
    families and the last)."""
    cells = sort_cells(frame[(frame["status"] == "ok") & (frame["op"] == TOTAL)])
    if cells.empty:
        return None
    catalogue = registry()
    counted = present(cells, scope="op", deterministic=True)
    counters = [c for c in counted if catalogue.named(c) and (only is None or c in only)]
    families = {} if only is not None else members(cells, [c for c in counted if not catalogue.named(c)])
    rest = [*present(cells, scope="cell", kind="size"), *present(cells, kind="estimate")]
    rest = [c for c in rest if only is None or c in only]
    data = pd.DataFrame(
        {
            "latency": [latency_text(r) for r in cells.itertuples()],
            **first_run(cells),
            "setup": list(cells["setup_s"].map(fmt_seconds)),
            **{c: [fmt_value(c, v) for v in cells[c]] for c in counters},
            **families,
            **{c: [fmt_value(c, v) for v in cells[c]] for c in rest},
            "max abs error": list(cells["max_abs_error"].map(fmt_error)),
            "tolerance": list(cells["tolerance"].map(fmt_error)),
        },
        index=list(cells["cell"]),
    )
    if only is None and cells["repeats"].gt(1).any():  # MPC errors vary per run: how many repeats missed
        pairs = zip(cells["inaccurate_repeats"], cells["repeats"], strict=True)
        data["inaccurate repeats"] = ["–" if pd.isna(bad) else f"{bad:.0f} of {n:.0f}" for bad, n in pairs]
    marks = pd.DataFrame("", index=data.index, columns=data.columns)
    marks["max abs error"] = list(cells["cliff"].map({True: "cliff", False: ""}))
    return Table(data, marks, list(cells["insecure"].map({True: "insecure", False: ""})), "cell")


def first_run(cells: pd.DataFrame) -> dict[str, list[str]]:
    """The first (warm-up) run's time beside the median, where the cells recorded one."""
    if "first_run_s" not in cells or cells["first_run_s"].isna().all():
        return {}
    return {"first run": list(cells["first_run_s"].map(fmt_seconds))}


def members(cells: pd.DataFrame, names: list[str]) -> dict[str, list[str]]:
    """Family members side by side, one column per family: `comm_bytes_p0/p1/p2` -> `1 MB / 2 MB / 2 MB`."""
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(registry().lookup(name).name, []).append(name)
    found = {}
    for family, names in families.items():
        head = family.rstrip("*") + "/".join(n.removeprefix(family.rstrip("*")) for n in names)
        found[head] = [" / ".join(fmt_value(n, row[n]) for n in names) for _, row in cells.iterrows()]
    return found


def cells_tables(frame: pd.DataFrame) -> list[tuple[str, Table]]:
    """`cells_table` per backend (each fills its own columns), plaintext first."""
    found = [(b, cells_table(rows)) for b, rows in frame.groupby("backend", sort=False)]
    return sorted([(b, t) for b, t in found if t is not None], key=lambda bt: backend_rank(bt[0]))


# a transformer block's op -> its part (the first prefix that matches), for comparing blocks
PARTS = {
    "norms": ("ln1.", "ln2.", "rms1.", "rms2."),
    "q, k, v": ("attn.qkv_proj",),
    "positions, K/V copies": ("attn.rope", "attn.repeat_kv"),
    "attention": ("attn.qk_matmul", "attn.softmax", "attn.av_matmul"),
    "out proj": ("attn.out_proj",),
    "residuals": ("attn.residual", "mlp.residual"),
    "MLP": ("mlp.",),
}


def part_of(op: str) -> str | None:
    return next((part for part, prefixes in PARTS.items() if op.startswith(prefixes)), None)


def parts_table(frame: pd.DataFrame, figure: str) -> Table | None:
    """Per ok cell of a block workload, `figure` summed over each part of the block (`PARTS`): where
    a block's design (RMSNorm, rotary positions, grouped K/V, a gated MLP) moves the cost."""
    rows = frame[(frame["status"] == "ok") & frame["workload"].isin(["block", "llama_block"])]
    rows = rows.assign(part=rows["op"].map(part_of)).dropna(subset=["part"])
    rows = rows[rows[figure].notna()]
    if rows.empty:
        return None
    sums = rows.groupby(["cell", "part"], sort=False)[figure].sum().unstack("part")
    cells = sort_cells(frame[(frame["op"] == TOTAL) & frame["cell"].isin(sums.index)])["cell"]
    sums = sums.reindex(index=list(cells), columns=[p for p in PARTS if p in sums.columns])
    return Table(sums.map(lambda v: "–" if pd.isna(v) else fmt_value(figure, v)), index_name="cell")
