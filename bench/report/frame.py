"""Shared, matplotlib-free preparation of a results frame for the report, its plots and the compare gate.

Rows come from `bench.results.load`; what each column is comes from the registry (`bench.columns`).
`tidy` adds the columns a run lacks as NaN and derives the per-cell facts every consumer needs
(accuracy cliff, insecure parameters, labels).
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.columns import registry
from bench.results import ROWS_FILE, load

SIZES = ("seq_len", "d_model", "n_heads", "d_ff", "lora_rank")
MATCH = ("workload", "variant", *SIZES)  # one workload point: the join key with plaintext for overhead
KEY = ("backend", *MATCH, "backend_cfg", "workload_cfg")  # a cell across runs: no run_id, no harness config
SECURE_BITS = 128
PLAINTEXT = "plaintext"
SIZE_NAMES = {"seq_len": "seq", "d_model": "d", "n_heads": "h", "d_ff": "ff", "lora_rank": "r"}


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every registered column present and typed (a column no backend of the run fills is
    NaN, so no caller has to check), plus `cliff`, `insecure` and label columns."""
    catalogue = registry()
    missing = [c.name for c in catalogue if "*" not in c.name and c.name not in frame]
    frame = frame.reset_index(drop=True)
    frame = pd.concat([frame, pd.DataFrame(None, index=frame.index, columns=missing)], axis=1)
    numeric = [c for c in frame.columns if catalogue.numeric(c)]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    for column in catalogue.select(frame.columns, kind="flag"):
        frame[column] = frame[column].eq(True)
    frame["variant"] = frame["variant"].fillna("")
    # an accuracy cliff: the row says so, or its error is above its tolerance
    frame["cliff"] = frame["accurate"].eq(False) | (frame["max_abs_error"] > frame["tolerance"])
    low = frame["security_bits"] < SECURE_BITS  # a cell-level figure: on the total row
    cells = [frame["run_id"], frame["cell_id"]]
    frame["insecure"] = low.groupby(cells, dropna=False).transform("any").astype(bool)
    frame["simulated"] = frame["simulated"].groupby(cells, dropna=False).transform("any").astype(bool)
    return add_labels(frame).copy()  # one block per dtype again: the frame is wide


def present(frame: pd.DataFrame, **criteria: object) -> list[str]:
    """Registered columns of `frame` matching `criteria` (see `Catalogue.select`) that hold a value."""
    return [c for c in registry().select(frame.columns, **criteria) if frame[c].notna().any()]


def add_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """`tag` (config keys that tell cells apart), `sizes`, `series` (backend variant tag) and `cell` labels."""
    frame["tag"] = tags(frame)
    frame["sizes"] = size_text(frame)
    warn = frame["insecure"].map({True: " ⚠INSECURE", False: ""})
    warn += frame["simulated"].map({True: " (simulator)", False: ""})
    frame["series"] = join(frame["backend"], frame["variant"], frame["tag"]) + warn
    head = frame["backend"].astype(str) + "/" + frame["workload"].astype(str) + "[" + frame["variant"] + "]"
    frame["cell"] = join(head, frame["sizes"], frame["tag"]) + warn
    frame["row"] = join(frame["backend"], frame["variant"], frame["sizes"], frame["tag"]) + warn  # within a workload
    return frame


def join(*columns: pd.Series) -> pd.Series:
    """Non-empty string parts joined by single spaces."""
    parts = pd.concat([c.fillna("").astype(str) for c in columns], axis=1)
    return parts.apply(lambda row: " ".join(p for p in row if p), axis=1).astype(str)


def size_text(frame: pd.DataFrame) -> pd.Series:
    """`seq=8 d=64`, plus the other sizes wherever they vary within the frame (d_ff only where it
    is not GPT-2's 4 d_model)."""
    shown = [s for s in SIZES if s in ("seq_len", "d_model") or frame[s].nunique() > 1]

    def text(row) -> str:
        keep = [s for s in shown if s != "d_ff" or row["d_ff"] != 4 * row["d_model"]]
        return " ".join(f"{SIZE_NAMES[s]}={fmt_int(row[s])}" for s in keep)

    return frame[shown].apply(text, axis=1)


@cache
def parse_cfg(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def tags(frame: pd.DataFrame, exclude: tuple[str, ...] = ()) -> pd.Series:
    """Per row, `key=value` for each backend / workload config key that varies between cells of that
    backend / workload in the frame (sizes and variant switches are shown elsewhere)."""
    out = pd.Series("", index=frame.index, dtype=object)
    for column, by in (("backend_cfg", "backend"), ("workload_cfg", "workload")):
        for _, group in frame.groupby(by, dropna=False):
            switches = {part.split("=")[0] for v in group["variant"].unique() for part in str(v).split(",")}
            skip = {"name", *SIZES, *switches, *exclude}
            cfgs = [parse_cfg(c) for c in group[column].unique()]
            keys = sorted({k for c in cfgs for k in c if k not in skip and len({repr(d.get(k)) for d in cfgs}) > 1})
            if keys:
                text = group[column].map(
                    lambda c, keys=keys: " ".join(f"{k}={short(parse_cfg(c).get(k))}" for k in keys)
                )
                out[group.index] = join(out[group.index], text)
    return out


def short(value: Any, limit: int = 24) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ResultsError(ValueError):
    """A results path that cannot be used (missing, no rows); the message is one line."""


def read_run(path: str | Path) -> tuple[pd.DataFrame, str]:
    """The tidy rows of one run under `path` (see `select_run`) and its run_id."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such file or directory")
    frame = load(path)
    if frame.empty or frame["run_id"].isna().all():
        raise ResultsError(f"{path}: no result rows ({ROWS_FILE}) found")
    frame, run = select_run(frame, path)
    return tidy(frame), run


def select_run(frame: pd.DataFrame, path: str | Path) -> tuple[pd.DataFrame, str]:
    """The rows of one run under `path`: the run whose id names `path` or one of its parents, else the
    latest run (the one that finished last), so `PATH` may be a run, a job or a whole results directory."""
    runs = [r for r in frame["run_id"].dropna().unique()]
    if not runs:
        raise ValueError(f"no run_id in the rows under {path}")
    names = {p.name for p in (Path(path).resolve(), *Path(path).resolve().parents)}
    named = [r for r in runs if r in names]
    if named:
        run = named[0]
    else:
        last = frame.groupby("run_id")["finished_at"].max().fillna("")
        run = max(runs, key=lambda r: (last.get(r, ""), r))
    return frame[frame["run_id"] == run].reset_index(drop=True), str(run)


def backend_rank(name: str) -> tuple[int, str]:
    """Plaintext (the floor) first, then by name."""
    return (0 if name == PLAINTEXT else 1, str(name))


def sort_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a stable reading order: backend (plaintext first), then variant, sizes and tag."""
    order = frame.assign(_rank=frame["backend"].map(backend_rank))
    return order.sort_values(["_rank", "workload", "variant", *SIZES, "tag"], kind="stable").drop(columns="_rank")


def op_order(ops: pd.Series) -> list[str]:
    """Ops in first-seen (execution) order, `protect` first and `reveal` then `total` last."""
    seen = [op for op in dict.fromkeys(ops.dropna()) if op not in ("protect", "reveal", "total")]
    return [op for op in ("protect", *seen, "reveal", "total") if op in set(ops)]


def representative(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows at the one size point measured by the most backends (the smallest on a tie), so bars
    in one panel compare like with like."""
    if rows.empty:
        return rows
    counts = rows.groupby(list(SIZES), dropna=False)["backend"].nunique().rename("n").reset_index()
    best = counts.sort_values(["n", *SIZES], ascending=[False, *[True] * len(SIZES)]).iloc[0]
    mask = np.logical_and.reduce([rows[s].eq(best[s]) | (rows[s].isna() & pd.isna(best[s])) for s in SIZES])
    return rows[mask]


def size_point(rows: pd.DataFrame, skip: tuple[str, ...] = ()) -> str:
    """`seq_len=8, d_model=64, n_heads=4`: the main sizes shared by all rows (for titles)."""
    shown = [s for s in ("seq_len", "d_model", "n_heads") if s not in skip and rows[s].nunique() == 1]
    return ", ".join(f"{s}={fmt_int(rows[s].iloc[0])}" for s in shown)


def fmt_int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def fmt_seconds(value: float) -> str:
    """Human latency: µs, ms or s with three significant digits; `–` when unknown."""
    if value is None or not math.isfinite(value):
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(value) >= scale or unit == "µs":
            return f"{value / scale:.3g} {unit}"
    return "–"  # unreachable


def fmt_bytes(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def fmt_count(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.3g}"


def fmt_value(column: str, value: Any) -> str:
    """A value in its column's unit: bytes and seconds in human units, counts with separators."""
    spec = registry().lookup(column)
    unit = spec.unit if spec else "text"
    if unit in ("text", "bool"):
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return {"bytes": fmt_bytes, "s": fmt_seconds}.get(unit, fmt_count)(value)


def fmt_error(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2e}"
