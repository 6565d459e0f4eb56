"""encbench-compare on the stored golden run (tests/golden/README.md) and edited copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report.compare import Thresholds, compare, main
from bench.results import load

RUN_ID = "20261122-073709"
RUN = Path(__file__).parent / "golden" / "results" / RUN_ID
CONCRETE_6 = "concrete/attention_head[softmax=power] seq=8 d=64 n_bits=6"
CRYPTEN_16 = "crypten/attention_head[softmax=exact] seq=16 d=64"
TENSEAL_8 = "tenseal/attention_head[softmax=power] seq=8 d=64 allow_insecure=False poly_modulus_degree=16384"


@pytest.fixture(scope="module")
def golden() -> pd.DataFrame:
    return load(RUN)


def edited_copy(tmp_path: Path, edit) -> Path:
    """A copy of the golden run whose hand-made rows went through `edit(row) -> row | None`."""
    target = tmp_path / RUN_ID
    shutil.copytree(RUN, target)
    rows_file = target / "handmade" / "rows.jsonl"
    rows = [edit(json.loads(line)) for line in rows_file.read_text().splitlines()]
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows if r is not None))
    return target


def where(frame: pd.DataFrame, backend: str, op: str, **sizes) -> pd.Series:
    mask = (frame["backend"] == backend) & (frame["op"] == op)
    for key, value in sizes.items():
        mask &= frame[key] == value
    assert mask.sum() >= 1
    return mask


def kinds(result) -> list[tuple[str, str, str]]:
    return sorted((f.kind, f.cell, f.op) for f in result.regressions)


def test_run_against_itself_exits_0(capsys):
    assert main([str(RUN), str(RUN)]) == 0
    assert capsys.readouterr().out.strip().endswith("no regression")


def test_changed_pbs_exits_1_naming_cell_and_op(tmp_path, capsys):
    def edit(row):
        if row["backend"] == "concrete" and row.get("n_bits") == 6 and row["seq_len"] == 8 and row["op"] == "softmax":
            row["pbs"] += 1
        return row

    assert main([str(RUN), str(edited_copy(tmp_path, edit))]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("REGRESSION"))
    assert CONCRETE_6 in line and "op softmax" in line and "pbs 512 -> 513" in line


def test_changed_comm_bytes_exits_1_naming_cell_and_op(tmp_path, capsys):
    def edit(row):
        if row["backend"] == "crypten" and row["seq_len"] == 16 and row["op"] == "qk_matmul":
            row["comm_bytes"] = row["comm_bytes"] * 2
        return row

    assert main([str(RUN), str(edited_copy(tmp_path, edit)), "--counters-only"]) == 1
    regressions = [line for line in capsys.readouterr().out.splitlines() if line.startswith("REGRESSION")]
    assert len(regressions) == 1
    assert CRYPTEN_16 in regressions[0] and "op qk_matmul" in regressions[0] and "comm_bytes" in regressions[0]


def test_counter_that_appears_or_disappears_is_a_change(golden):
    new = golden.copy()
    new.loc[where(new, "plaintext", "softmax", seq_len=8), "depth"] = 3
    result = compare(golden, new)
    assert {(f.kind, f.op) for f in result.regressions} == {("counter", "softmax")}
    assert len(result.regressions) == 2  # both plaintext softmax variants at seq_len 8


def slowed(frame: pd.DataFrame, factor: float, iqr: float | None = None, backend="tenseal", op="softmax"):
    """A copy with one op of one cell `factor` times slower (tenseal seq 8 d 64 secure, by default)."""
    new = frame.copy()
    mask = where(new, backend, op, seq_len=8, d_model=64)
    if backend == "tenseal":
        mask &= ~new["backend_cfg"].str.contains('"allow_insecure": true')
    new.loc[mask, "latency_s"] *= factor
    if iqr is not None:
        new.loc[mask, "latency_iqr_s"] = new.loc[mask, "latency_s"] * iqr
    return new


def test_latency_regression_with_separate_spreads_is_caught(golden):
    result = compare(golden, slowed(golden, 2.0))
    assert kinds(result) == [("latency", TENSEAL_8, "softmax")]
    assert "2.00x" in result.regressions[0].detail


def test_latency_within_overlapping_spread_is_noise(golden):
    result = compare(golden, slowed(golden, 2.0, iqr=2.5))  # quartiles +-125 % of the median: overlap
    assert result.ok
    row = result.table[(result.table["cell"] == TENSEAL_8) & (result.table["op"] == "softmax")].iloc[0]
    assert row["verdict"] == "ok (slower, within noise)"


def test_latency_ratio_threshold_is_configurable(golden):
    new = slowed(golden, 1.3)
    assert compare(golden, new).ok
    assert kinds(compare(golden, new, Thresholds(latency_ratio=1.2))) == [("latency", TENSEAL_8, "softmax")]


def test_microsecond_slowdowns_are_below_the_absolute_floor(golden):
    new = slowed(golden, 3.0, iqr=0.01, backend="plaintext")  # 3x on a ~25 us op: timer-scale noise
    assert compare(golden, new).ok
    strict = compare(golden, new, Thresholds(latency_min_s=0))
    assert {f.op for f in strict.regressions} == {"softmax"}


def test_single_repeat_has_no_spread_and_the_ratio_decides(golden):
    base = golden.copy()
    base["latency_iqr_s"] = np.nan
    assert not compare(base, slowed(base, 1.6)).ok
    assert compare(base, slowed(base, 1.4)).ok


def test_no_latency_and_counters_only_skip_latency(tmp_path):
    def edit(row):
        if row["backend"] == "crypten" and row["op"] == "softmax":
            row["latency_s"] *= 10
        return row

    slow = str(edited_copy(tmp_path, edit))
    assert main([str(RUN), slow]) == 1
    assert main([str(RUN), slow, "--no-latency"]) == 0
    assert main([str(RUN), slow, "--counters-only"]) == 0


def test_error_growing_past_tolerance_is_a_regression(golden):
    new = golden.copy()
    mask = where(new, "crypten", "softmax", seq_len=16)
    new.loc[mask, "max_abs_error"] = 0.02  # tolerance 1e-2
    new.loc[mask, "accurate"] = False
    result = compare(golden, new)
    assert kinds(result) == [("error", CRYPTEN_16, "softmax")]
    assert compare(golden, new, Thresholds(error=False)).ok


def test_error_growth_within_tolerance_or_already_above_is_not_new(golden):
    new = golden.copy()
    new.loc[where(new, "crypten", "softmax", seq_len=16), "max_abs_error"] *= 2  # 4e-3: still within 1e-2
    new.loc[where(new, "tenseal", "softmax", seq_len=32), "max_abs_error"] *= 2  # was already a cliff
    assert compare(golden, new).ok


def test_vanished_and_new_cells_are_reported(golden):
    crypten_16 = (golden["backend"] == "crypten") & (golden["seq_len"] == 16)
    result = compare(golden, golden[~crypten_16])
    assert kinds(result) == [("vanished", CRYPTEN_16, "")]
    grown = compare(golden[~crypten_16], golden)
    assert grown.ok and [(f.kind, f.cell) for f in grown.findings if f.kind == "new"] == [("new", CRYPTEN_16)]


def test_vanished_op_is_a_regression(golden):
    op = where(golden, "tenseal", "out_proj", seq_len=16)
    result = compare(golden, golden[~op])
    assert [(f.kind, f.op) for f in result.regressions] == [("vanished", "out_proj")]


def test_status_change_ok_to_error_is_a_regression_and_back_is_a_fix(golden):
    cell = (golden["backend"] == "crypten") & (golden["seq_len"] == 16)
    failed = golden[cell & (golden["op"] == "total")].copy()
    failed = failed[["run_id", "cell_id", "backend", "workload", "variant", "seq_len", "d_model", "n_heads", "d_ff",
                     "lora_rank", "backend_cfg", "workload_cfg", "finished_at", "op"]]  # fmt: skip
    failed = failed.assign(status="error", error="RuntimeError: party 1 died")
    broken = pd.concat([golden[~cell], failed], ignore_index=True)
    result = compare(golden, broken)
    assert kinds(result) == [("status", CRYPTEN_16, "")]
    assert "ok -> error: RuntimeError: party 1 died" in result.regressions[0].detail
    back = compare(broken, golden)
    assert back.ok and any(f.kind == "fixed" for f in back.findings)


def test_cells_match_across_runs_and_harness_configs_not_by_id(golden):
    """Another run_id and other cell_ids (a different harness config hashes differently) still match."""
    new = golden.assign(run_id="20991231-000000", cell_id=golden["cell_id"].str[::-1], repeats=9)
    result = compare(golden, new)
    assert result.ok and not result.findings[3:]  # only the 3 notes about cells failing in both runs
    assert {f.kind for f in result.findings} == {"not ok"}


def test_a_different_backend_config_is_a_different_cell(golden):
    new = golden.copy()
    concrete = new["backend"] == "concrete"
    new.loc[concrete, "backend_cfg"] = new.loc[concrete, "backend_cfg"].str.replace("}", ', "p_error": 1e-06}')
    result = compare(golden, new)
    vanished = [f for f in result.regressions if f.kind == "vanished"]
    assert len(vanished) == 4 and all(f.cell.startswith("concrete/") for f in vanished)  # the 4 ok concrete cells


def test_table_has_a_row_per_cell_and_op(golden):
    result = compare(golden, golden)
    assert len(result.table) == len(golden)
    assert list(result.table.columns) == ["cell", "cell_id", "op", "base", "new", "ratio", "status", "verdict"]
    tenseal = result.table[result.table["cell"] == TENSEAL_8]
    assert list(tenseal["op"]) == ["protect", "qkv_proj", "qk_matmul", "softmax", "av_matmul", "out_proj", "reveal",
                                   "total"]  # fmt: skip


@pytest.mark.parametrize(
    "args", [["/nonexistent/base", str(RUN)], [str(RUN)], [str(RUN), str(RUN), "--latency-ratio", "0.9"]]
)
def test_usage_errors_exit_2_with_one_line(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("encbench-compare: error:") and "\n" not in err


def test_a_directory_without_rows_exits_2(tmp_path, capsys):
    assert main([str(tmp_path), str(RUN)]) == 2
    assert "no result rows" in capsys.readouterr().err
