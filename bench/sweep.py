"""Runs a job's cells one after another in a worker, flushing each cell's rows as it finishes."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from bench.cells import Cell
from bench.network import NetworkConfig, estimates
from bench.results import ROWS_FILE, SCHEMA_VERSION, RowWriter, finished_cells
from bench.worker import Worker


def run_cells(
    cells: list[Cell],
    job_dir: Path,
    run_dir: Path,
    run_id: str,
    *,
    timeout_s: float,
    networks: dict[str, NetworkConfig] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Counter:
    """Measure `cells` into `job_dir/rows.jsonl`; with `resume`, skip cells finished in `run_dir`.
    Rows with communication counters get estimated times on each of `networks`.

    Returns the count of cells per status (plus `resumed` for cells skipped as already done).
    """
    done = finished_cells(run_dir) if resume else set()
    todo = [c for c in cells if c.id not in done]
    tally = Counter(resumed=len(cells) - len(todo))
    writer = RowWriter(job_dir / ROWS_FILE)
    worker = Worker()
    bar = tqdm(total=len(todo), unit="cell", disable=not progress, dynamic_ncols=True)
    try:
        for cell in todo:
            bar.set_description(cell.label)
            start = time.perf_counter()
            rows = worker.run(cell, timeout_s)
            stamp = {
                "schema_version": SCHEMA_VERSION,
                "run_id": run_id,
                **cell.columns(),
                "finished_at": datetime.now(UTC).isoformat(),
            }
            rows = [{**stamp, **row, **estimates(row, networks or {})} for row in rows]
            total = rows[-1]
            total["cell_wall_s"] = time.perf_counter() - start
            writer.write(rows)
            tally[total["status"]] += 1
            bar.write(cell_line(cell, total))
            bar.update()
    finally:
        worker.close()
        bar.close()
    return tally


def cell_line(cell: Cell, total: dict) -> str:
    status = total["status"]
    if status != "ok":
        return f"{status:>7}  {cell.label}: {total.get('error')}"
    line = f"{status:>7}  {cell.label}: {total['latency_s'] * 1e3:.3f} ms, max_abs_error {total['max_abs_error']:.2e}"
    if total.get("accurate") is False:
        line += f"  ABOVE TOLERANCE {total['tolerance']:.1e}"
    return line
