"""MPC party faults inside a real sweep, and what a test started and must leave behind: no process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from bench.cells import Cell
from bench.measure import HarnessConfig

SIZES = {"name": "attention_head", "seq_len": 4, "d_model": 16, "n_heads": 2}


def marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment carries `mark` (what this test started)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark.encode() in (proc / "environ").read_bytes():
                found.append((int(proc.name), (proc / "cmdline").read_bytes()[:80].decode(errors="replace")))
        except OSError:
            continue
    return found


def faulty_then_good(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    plugins: str,
    faulty: Callable[[], object],
    good: object,
    timeout_s: float,
) -> tuple[dict, str, list]:
    """A sweep of a cell whose party fails (the backend config `faulty()` makes, of a backend that
    `plugins` registers), then a good one: the tally, the failed cell's row, and the processes of
    this sweep left alive."""
    from bench.sweep import run_cells

    resource_tracker.ensure_running()  # this process's own helper: started before the mark, so not counted
    mark = f"ENCBENCH_TEST_{uuid.uuid4().hex}"
    monkeypatch.setenv(mark, "1")
    monkeypatch.setenv("ENCBENCH_BACKENDS", plugins)
    harness = asdict(HarnessConfig(warmup=0, repeats=1, timeout_s=timeout_s))
    cells = [Cell(asdict(faulty()), SIZES, harness), Cell(asdict(good), SIZES, harness)]
    tally = run_cells(cells, tmp_path, tmp_path, "t", timeout_s=timeout_s, progress=False)
    first = (tmp_path / "rows.jsonl").read_text().splitlines()[0]
    return tally, first, marked_processes(mark)
