"""The results store: tidy rows appended as JSON lines and flushed per cell; `load` for analysis.

Each job of a run writes `<results_dir>/<run_id>/[<job>/]rows.jsonl` and `manifest.json`. A row is
one (cell, op); the columns are catalogued in docs/metrics.md. Missing metrics are JSON null and
load as NaN, never 0.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.columns import TOTAL, registry

SCHEMA_VERSION = 2  # 2: per-op rows hold only what their op did; cell-level figures on `total` only
ROWS_FILE = "rows.jsonl"
# fmt: off
COLUMNS = (
    "run_id", "backend", "workload", "variant", "seq_len", "d_model", "n_heads", "op", "latency_s",
    "latency_iqr_s", "repeats", "setup_s", "pbs", "rounds", "comm_bytes", "ct_bytes", "key_bytes",
    "max_abs_error", "security_bits", "status", "error",
)  # always present in `load`'s frame, in this order; every column's meaning: `bench.columns`
# fmt: on
FINISHED = ("ok", "skipped")  # statuses that `resume` does not run again


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _plain(value.item())
    return value


class RowWriter:
    """Appends rows to a JSON-lines file, flushed and synced to disk on every write."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, rows: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n" for row in rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def row_files(path: str | Path) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else sorted(path.rglob(ROWS_FILE))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of every rows file under `path`; a line cut short by a crash is skipped."""
    rows = []
    for file in row_files(path) if Path(path).exists() else []:
        with open(file, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def load(path: str | Path) -> pd.DataFrame:
    """Every row under `path` (a rows file, a run, or a results directory) as one DataFrame.

    A cell measured again (`resume` retries errors and timeouts) keeps only its latest attempt.
    Rows of older schema versions are brought to the current one.
    """
    frame = upgrade(pd.DataFrame.from_records(read_rows(path)))
    if "cell_id" in frame:
        latest = frame.groupby(["run_id", "cell_id"])["finished_at"].transform("max")
        frame = frame[frame["finished_at"] == latest].reset_index(drop=True)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    catalogue = registry()
    numeric = [c for c in frame.columns if catalogue.numeric(c)]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
    """Schema 1 copied a backend's cell-level figures onto every op row: keep them on `total` only.
    A figure is taken as copied when its column is `cell`-scope, or when every op row of the cell
    holds the total's value (a traffic figure reported for the whole cell)."""
    if frame.empty or "cell_id" not in frame:
        return frame
    old = frame["schema_version"].isna() if "schema_version" in frame else pd.Series(True, index=frame.index)
    if not old.any():
        return frame
    frame = frame.copy()
    catalogue = registry()
    cell_scope = catalogue.select(frame.columns, scope="cell")
    per_op = catalogue.select(frame.columns, scope="op")
    for _, rows in frame[old].groupby(["run_id", "cell_id"]):
        ops, total = rows[rows["op"] != TOTAL], rows[rows["op"] == TOTAL]
        if total.empty or len(ops) < 2:
            continue
        copied = [c for c in per_op if total[c].notna().all() and (ops[c] == total[c].iloc[0]).all()]
        frame.loc[ops.index, cell_scope + copied] = None
    frame.loc[old, "schema_version"] = 1
    return frame


def finished_cells(path: str | Path) -> set[str]:
    """Cell ids under `path` whose total row says they finished (ok or skipped)."""
    return {r["cell_id"] for r in read_rows(path) if r.get("op") == TOTAL and r.get("status") in FINISHED}
