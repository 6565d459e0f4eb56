"""`encbench-report PATH [--out DIR]`: a report from stored results only (nothing is re-run).

Writes `DIR/<run_id>/index.html` (self-contained apart from the PNG figures beside it; opens from disk)
and `report.md` (the same content as markdown, to paste into a PR), with the run manifest on top.
PATH may be a run directory, a job directory, a rows file, or a results directory holding several runs;
then the run named by PATH (or a parent of it) is used, else the run that finished last.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench.manifest import MANIFEST_FILE
from bench.project.in_report import projection_blocks
from bench.report.claims import claim_blocks
from bench.report.frame import ResultsError, read_run
from bench.report.plots import Plot, draw_all
from bench.report.render import Block, to_html, to_markdown
from bench.report.tables import (
    MARKERS_NOTE,
    Table,
    cells_tables,
    cliff_table,
    counter_pivot,
    failure_table,
    insecure_table,
    latency_pivot,
    status_table,
)
from bench.results import row_files


def build(results_path: str | Path, reports_dir: str | Path = "reports") -> Path:
    """Build the report of the run under `results_path` into `reports_dir/<run_id>/`; returns that directory."""
    frame, run_id = read_run(results_path)
    out = Path(reports_dir) / run_id
    plots = draw_all(frame, out)
    manifests = run_manifests(results_path, run_id)
    blocks = document(frame, run_id, Path(results_path), manifests, plots, out)
    (out / "index.html").write_text(to_html(blocks, f"encbench report {run_id}"), encoding="utf-8")
    (out / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    return out


def run_manifests(path: str | Path, run_id: str) -> dict[str, dict[str, Any]]:
    """The manifest next to each rows file of the run, by job directory name."""
    found = {}
    for rows in row_files(path):
        if first_run_id(rows) != run_id:
            continue
        file = rows.parent / MANIFEST_FILE
        try:
            found[rows.parent.name] = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return found


def first_run_id(rows_file: Path) -> str | None:
    with open(rows_file, encoding="utf-8") as f:
        for line in f:
            try:
                return json.loads(line).get("run_id")
            except (json.JSONDecodeError, AttributeError):
                continue
    return None


def document(
    frame: pd.DataFrame, run_id: str, path: Path, manifests: dict, plots: list[Plot], out: Path
) -> list[Block]:
    built = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        ("h1", f"encbench report: run {run_id}"),
        ("p", f"Built {built} from the stored results in {path} (nothing was re-run)."),
        ("h2", "Run manifest"),
        *manifest_blocks(manifests),
        ("h2", "Summary"),
        ("table", status_table(frame)),
        *warning_blocks(frame),
        *claim_blocks(frame, manifests, out),
        ("h2", "Plots"),
    ]
    if not plots:
        blocks.append(("p", "No plot has data in this run."))
    for plot in plots:
        blocks += [("h3", plot.title), ("img", plot)]
    blocks.append(("h2", "Tables"))
    for backend, cells in cells_tables(frame):
        blocks += [("h3", f"{backend}: cells (totals, sizes, estimates, output error)"), ("table", cells)]
    for workload in frame.loc[frame["status"] == "ok", "workload"].unique():
        blocks += [
            ("h3", f"{workload}: latency per op (median over repeats)"),
            ("table", latency_pivot(frame, workload)),
        ]
        counters = counter_pivot(frame, workload)
        if counters is not None:
            blocks += [("h3", f"{workload}: counters per op"), ("table", counters)]
    blocks += [("p", MARKERS_NOTE), *projection_blocks(frame, out)]
    blocks += [("h2", "Failed, skipped and timed-out cells")]
    failures = failure_table(frame)
    blocks.append(("table", failures) if failures is not None else ("p", "None: every cell ran."))
    return blocks


def warning_blocks(frame: pd.DataFrame) -> list[Block]:
    """Accuracy cliffs and insecure parameters, on top where nobody can miss them."""
    blocks: list[Block] = []
    cliffs = cliff_table(frame)
    if cliffs is not None:
        n = len(cliffs.data)
        blocks += [("alert", f"⚠ ACCURACY CLIFF: {n} op row(s) have an error above their tolerance."),
                   ("table", cliffs)]  # fmt: skip
    insecure = insecure_table(frame)
    if insecure is not None:
        blocks += [("alert", f"⚠ INSECURE: {len(insecure.data)} cell(s) ran with parameters below 128-bit security."),
                   ("table", insecure)]  # fmt: skip
    return blocks


COMMON_FIELDS = ("run_id", "started_at", "git_commit", "argv", "launcher", "jobs_in_parallel", "cpu_model", "cores",
                 "platform", "python", "libraries", "schema_version")  # fmt: skip
JOB_FIELDS = ("status", "cells", "overrides")


def manifest_blocks(manifests: dict[str, dict[str, Any]]) -> list[Block]:
    """The fields every job shares once, then one line per job, then the full manifests folded away."""
    if not manifests:
        return [("p", f"No {MANIFEST_FILE} was found next to these rows.")]
    values = {}
    for field in COMMON_FIELDS:
        seen = [m[field] for m in manifests.values() if field in m]
        if seen and field != "started_at":
            values[field] = seen[0] if all(v == seen[0] for v in seen) else "(differs per job, see below)"
        elif seen:
            values[field] = min(seen)
    first = next(iter(manifests.values()))
    if "git_commit" in values and first.get("git_dirty"):
        values["git_commit"] = f"{values['git_commit']} (with uncommitted changes)"
    common = pd.DataFrame({"value": [show(v) for v in values.values()]}, index=list(values))
    jobs = pd.DataFrame({f: [show(m.get(f, "")) for m in manifests.values()] for f in JOB_FIELDS},
                        index=list(manifests))  # fmt: skip
    blocks: list[Block] = [("table", Table(common, index_name="field", wrap=("value",))),
                           ("table", Table(jobs, index_name="job", wrap=("overrides",)))]  # fmt: skip
    parallel = max(int(m.get("jobs_in_parallel") or 1) for m in manifests.values())
    if parallel > 1:
        blocks.append(("alert", f"Jobs ran {parallel} at a time: their latencies may skew each other."))
    job, full = next(iter(manifests.items()))
    blocks.append(("details", (f"Full manifest of job {job} (the others differ as listed above)",
                               json.dumps(full, indent=2, default=str))))  # fmt: skip
    return blocks


def show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" if v is not None else f"{k} (not installed)" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: prints the paths of index.html and report.md; 2 on an unusable PATH."""
    parser = argparse.ArgumentParser(prog="encbench-report", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a run directory, job directory, rows file, or results directory")
    parser.add_argument("--out", default="reports", help="reports directory (default: reports)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    try:
        out = build(args.path, args.out)
    except (ResultsError, OSError) as exc:
        print(f"encbench-report: error: {exc}", file=sys.stderr)
        return 2
    print(out / "index.html")
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
