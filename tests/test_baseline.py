"""CI's regression gate: the quick sweep's deterministic counters and cells against the committed
baseline (`make baseline` refreshes it after an intended change)."""

from conftest import REPO

from bench.report import compare

BASELINE = REPO / "results" / "baseline"


def test_quick_sweep_matches_the_committed_baseline(quick_sweep, capsys):
    assert quick_sweep.returncode == 0, quick_sweep.stderr
    code = compare.main([str(BASELINE), str(quick_sweep.results), "--counters-only"])
    assert code == 0, capsys.readouterr().out
