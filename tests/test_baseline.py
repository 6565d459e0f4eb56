"""CI's regression gate: the quick sweep's deterministic counters and cells against the committed
baseline (`make baseline` refreshes it after an intended change)."""

import pytest
from conftest import REPO

import backends
from bench.columns import TOTAL, registry
from bench.report import compare
from bench.results import SCHEMA_VERSION, load

BASELINE = REPO / "results" / "baseline"


def test_quick_sweep_matches_the_committed_baseline(quick_sweep, capsys):
    assert quick_sweep.returncode == 0, quick_sweep.stderr
    code = compare.main([str(BASELINE), str(quick_sweep.results), "--counters-only"])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize("backend", backends.names(plugins=False))
def test_no_op_row_of_the_baseline_carries_a_cell_level_figure(backend):
    frame = load(BASELINE)
    cells = frame[(frame["backend"] == backend) & (frame["status"] == "ok")]
    assert not cells.empty, f"{backend} has no ok cell in the baseline"
    assert (cells["schema_version"] == SCHEMA_VERSION).all()  # as written, not upgraded on load
    ops, totals = cells[cells["op"] != TOTAL], cells[cells["op"] == TOTAL].set_index("cell_id")
    cell_level = registry().select(frame.columns, scope="cell")
    assert ops[cell_level].isna().all().all(), ops[cell_level].notna().sum()[lambda n: n > 0]
    for column in registry().select(frame.columns, scope="op"):  # and the cell's total is its ops' sum
        if totals[column].notna().any():
            gap = ops.groupby("cell_id")[column].sum(min_count=1).sub(totals[column]).abs()
            assert gap.fillna(0).max() <= 1e-6 * totals[column].abs().max(), column
