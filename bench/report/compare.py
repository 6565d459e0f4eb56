"""`encbench-compare BASE NEW`: the regression gate between two stored runs (see docs/reports.md).

Cells are matched by what they measure, never by run: (backend, workload, variant, sizes, backend_cfg,
workload_cfg) and op. `cell_id` is not used to match because it also hashes the harness config, so
the same cell measured with more repeats or a longer budget would look new.

A regression (exit 1) is any of:
- a deterministic column (every one the registry marks so: pbs, rounds, comm_bytes and its per-party and
  per-direction parts, ct_bytes, key_bytes, depth, rotations, security_bits, ... see docs/metrics.md)
  that differs at all, appearing or disappearing included;
- an op whose error is above its tolerance in NEW but was within it (or unmeasured) in BASE;
- latency (unless --no-latency): NEW's median at least R times BASE's (default 1.5), the spreads do
  not overlap (NEW's lower quartile above BASE's upper; quartiles taken as median -/+ IQR/2, IQR 0 with
  one repeat), and NEW slower by at least --latency-min-s (default 1 ms);
- a cell ok in BASE that is not ok in NEW or has vanished, or an op that vanished from an ok cell.
New cells and ops, and changes among failed cells, are reported but pass.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import pandas as pd

from bench.columns import registry
from bench.report.frame import (
    KEY,
    ResultsError,
    fmt_error,
    fmt_seconds,
    fmt_value,
    read_run,
    sort_cells,
)
from bench.report.frame import tidy as tidy_frame

DEFAULT_RATIO = 1.5
DEFAULT_MIN_S = 1e-3
ROW_KEY = [*KEY, "op"]


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression; `latency` / `error` off leaves the counter and cell checks."""

    latency_ratio: float = DEFAULT_RATIO
    latency_min_s: float = DEFAULT_MIN_S
    latency: bool = True
    error: bool = True


@dataclass(frozen=True)
class Finding:
    kind: str  # counter, error, latency, status, vanished, new, fixed, not ok
    cell: str  # label: backend/workload[variant] sizes config
    cell_id: str  # NEW's id when the cell exists there, else BASE's
    op: str  # "" when about the whole cell
    detail: str
    regression: bool

    def line(self) -> str:
        where = f"{self.cell} (cell {self.cell_id})" + (f" op {self.op}" if self.op else "")
        return f"{'REGRESSION' if self.regression else 'note':<10}  {self.kind:<8}  {where}: {self.detail}"


@dataclass
class Comparison:
    """One table row per (cell, op) seen in either run, and every finding."""

    table: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def ok(self) -> bool:
        return not self.regressions


def prepare(base: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Both runs tidied together (so labels agree), one row per (cell key, op) and side, the latest."""
    both = tidy_frame(pd.concat([base.assign(_side="base"), new.assign(_side="new")], ignore_index=True))
    both = both.assign(_pos=range(len(both))).sort_values("finished_at", na_position="first", kind="stable").copy()
    return both.drop_duplicates([*ROW_KEY, "_side"], keep="last").sort_values("_pos")


def compare(base: pd.DataFrame, new: pd.DataFrame, thresholds: Thresholds | None = None) -> Comparison:
    """Compare two runs' rows (as from `bench.results.load`); pure: reads nothing, prints nothing."""
    thresholds = thresholds or Thresholds()
    both = prepare(base, new)
    checked = [c for c in registry().select(both.columns, deterministic=True) if both[c].notna().any()]
    side = {s: both[both["_side"] == s].drop(columns="_side") for s in ("base", "new")}
    rows = side["base"].merge(side["new"], on=ROW_KEY, how="outer", suffixes=("_b", "_n"), indicator=True)
    rows["cell"] = rows["cell_n"].fillna(rows["cell_b"])
    rows["id"] = rows["cell_id_n"].fillna(rows["cell_id_b"])
    rows["tag"] = rows["tag_n"].fillna(rows["tag_b"])
    rows = sort_cells(rows.assign(_pos=rows["_pos_n"].fillna(rows["_pos_b"])).sort_values("_pos"))  # file order
    rows["_cell"] = rows[list(KEY)].astype(str).agg("|".join, axis=1)  # NaN sizes match as "nan"
    findings, verdicts = [], {}
    for _, ops in rows.groupby("_cell", sort=False):
        total = ops[ops["op"] == "total"]
        if total.empty:  # a cell always has a total row; tolerate hand-edited files
            continue
        cell_findings = cell_status(total.iloc[0])
        findings += cell_findings
        for f in cell_findings:
            verdicts[(f.cell_id, "total")] = f"{'REGRESSION' if f.regression else 'note'}: {f.kind}"
        if cell_findings or total.iloc[0]["status_b"] != "ok":
            continue
        for _, row in ops.iterrows():
            found = op_findings(row, thresholds, checked)
            findings += found
            verdicts[(row["id"], row["op"])] = verdict(row, found, thresholds)
    return Comparison(summary_table(rows, verdicts), findings)


def cell_status(total: pd.Series) -> list[Finding]:
    """Findings about a whole cell: vanished, new, or a status change."""
    made = total["_merge"]
    status_b, status_n = total["status_b"], total["status_n"]

    def finding(kind: str, detail: str, regression: bool) -> list[Finding]:
        return [Finding(kind, total["cell"], total["id"], "", detail, regression)]

    if made == "left_only":
        return finding("vanished", f"in BASE ({status_b}), missing from NEW", status_b == "ok")
    if made == "right_only":
        return finding("new", f"only in NEW ({status_n})", False)
    if status_b == status_n == "ok":
        return []
    message = total["error_n"] if isinstance(total["error_n"], str) else ""
    if status_b == "ok":
        return finding("status", f"ok -> {status_n}: {message}", True)
    if status_n == "ok":
        return finding("fixed", f"{status_b} -> ok", False)
    return finding("not ok", f"{status_b} -> {status_n}: {message}", False)


def op_findings(row: pd.Series, thresholds: Thresholds, checked: list[str]) -> list[Finding]:
    """Counter, error and latency findings for one op of a cell that is ok in both runs."""
    out = []

    def add(kind: str, detail: str, regression: bool = True) -> None:
        out.append(Finding(kind, row["cell"], row["id"], row["op"], detail, regression))

    if row["_merge"] == "left_only":
        add("vanished", "op in BASE, missing from NEW")
        return out
    if row["_merge"] == "right_only":
        add("new", "op only in NEW", False)
        return out
    for column in checked:
        b, n = row[f"{column}_b"], row[f"{column}_n"]
        if not (pd.isna(b) and pd.isna(n)) and (pd.isna(b) or pd.isna(n) or b != n):
            add("counter", f"{column} {fmt_value(column, b)} -> {fmt_value(column, n)}")
    if thresholds.error and row["cliff_n"] and not row["cliff_b"]:
        add("error", f"max_abs_error {fmt_error(row['max_abs_error_n'])} above tolerance "
                     f"{fmt_error(row['tolerance_n'])} (BASE {fmt_error(row['max_abs_error_b'])})")  # fmt: skip
    if thresholds.latency and slower(row, thresholds):
        add("latency", f"{fmt_seconds(row['latency_s_b'])} -> {fmt_seconds(row['latency_s_n'])} "
                       f"({ratio(row):.2f}x, quartiles apart)")  # fmt: skip
    return out


def ratio(row: pd.Series) -> float:
    b, n = row["latency_s_b"], row["latency_s_n"]
    return n / b if pd.notna(b) and pd.notna(n) and b > 0 else math.nan


def apart(slow: pd.Series, fast: pd.Series) -> bool:
    """`slow`'s lower quartile above `fast`'s upper one (median -/+ IQR/2; no IQR counts as 0)."""
    lo = slow["latency_s"] - (0 if pd.isna(slow["latency_iqr_s"]) else slow["latency_iqr_s"] / 2)
    hi = fast["latency_s"] + (0 if pd.isna(fast["latency_iqr_s"]) else fast["latency_iqr_s"] / 2)
    return bool(lo > hi)


def sides(row: pd.Series) -> tuple[pd.Series, pd.Series]:
    cols = ["latency_s", "latency_iqr_s"]
    return (pd.Series({c: row[f"{c}_b"] for c in cols}), pd.Series({c: row[f"{c}_n"] for c in cols}))


def slower(row: pd.Series, thresholds: Thresholds) -> bool:
    base, new = sides(row)
    r = ratio(row)
    gap = new["latency_s"] - base["latency_s"]
    return bool(r >= thresholds.latency_ratio and apart(new, base) and gap >= thresholds.latency_min_s)


def verdict(row: pd.Series, found: list[Finding], thresholds: Thresholds) -> str:
    if found:
        kinds = sorted({f.kind for f in found})
        return ("REGRESSION: " if any(f.regression for f in found) else "note: ") + ", ".join(kinds)
    base, new = sides(row)
    r = ratio(row)
    if thresholds.latency and r <= 1 / thresholds.latency_ratio and apart(base, new):
        return "faster"
    if thresholds.latency and r >= thresholds.latency_ratio:
        return "ok (slower, within noise)"
    return "ok"


def summary_table(rows: pd.DataFrame, verdicts: dict) -> pd.DataFrame:
    table = pd.DataFrame({
        "cell": rows["cell"], "cell_id": rows["id"], "op": rows["op"],
        "base": rows["latency_s_b"].map(fmt_seconds), "new": rows["latency_s_n"].map(fmt_seconds),
        "ratio": [f"{r:.2f}" if math.isfinite(r) else "–" for r in rows.apply(ratio, axis=1)],
        "status": rows["status_b"].fillna("–") + " -> " + rows["status_n"].fillna("–"),
    })  # fmt: skip
    table["verdict"] = [verdicts.get((c, o), "") for c, o in zip(table["cell_id"], table["op"], strict=True)]
    return table.reset_index(drop=True)


def report(comparison: Comparison) -> str:
    """The table, one block per cell, then the findings and a one-line summary."""
    lines = []
    for (cell, cell_id), ops in comparison.table.groupby(["cell", "cell_id"], sort=False):
        lines.append(f"{cell} (cell {cell_id})")
        body = ops[["op", "base", "new", "ratio", "status", "verdict"]].to_string(index=False)
        lines += ["  " + line for line in body.splitlines()] + [""]
    lines += [f.line() for f in comparison.findings]
    n = len(comparison.regressions)
    lines.append(f"encbench-compare: {n} regression(s)" if n else "encbench-compare: no regression")
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="encbench-compare", description="Compare two encbench runs; exit 1 on a regression.")
    parser.add_argument("base", help="results of the baseline run (run dir, job dir, rows file or results dir)")
    parser.add_argument("new", help="results of the run to check")
    parser.add_argument(
        "--latency-ratio",
        type=float,
        default=DEFAULT_RATIO,
        metavar="R",
        help=f"flag latency when NEW median >= R x BASE median (default {DEFAULT_RATIO})",
    )
    parser.add_argument(
        "--latency-min-s",
        type=float,
        default=DEFAULT_MIN_S,
        metavar="S",
        help=f"ignore latency slowdowns smaller than S seconds (default {DEFAULT_MIN_S:g})",
    )
    parser.add_argument("--no-latency", action="store_true", help="do not check latency")
    parser.add_argument("--counters-only", action="store_true",
                        help="check only deterministic counters and cells (CI, where latency is noise)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.latency_ratio <= 1:
        parser.error(f"--latency-ratio {args.latency_ratio:g} must be above 1")
    if args.latency_min_s < 0:
        parser.error(f"--latency-min-s {args.latency_min_s:g} must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0 no regression, 1 regression, 2 usage error (bad option, unreadable path)."""
    try:
        args = parse(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        (base, base_run), (new, new_run) = read_run(args.base), read_run(args.new)
    except (ResultsError, OSError) as exc:
        print(f"encbench-compare: error: {exc}", file=sys.stderr)
        return 2
    latency = not (args.no_latency or args.counters_only)
    thresholds = Thresholds(args.latency_ratio, args.latency_min_s, latency=latency, error=not args.counters_only)
    comparison = compare(base, new, thresholds)
    checks = "counters and cells" if args.counters_only else "counters, cells, error"
    if latency:
        checks += f", latency (>= {args.latency_ratio:g}x, quartiles apart, >= {args.latency_min_s:g} s slower)"
    print(f"BASE {args.base} (run {base_run})  vs  NEW {args.new} (run {new_run}); checking {checks}\n")
    print(report(comparison))
    return 0 if comparison.ok else 1


if __name__ == "__main__":
    sys.exit(main())
