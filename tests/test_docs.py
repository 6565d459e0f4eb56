"""The pages that hold figures are generated: they must match the code and the committed results."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from bench.report import docs
from bench.report.frame import fmt_value, tidy
from bench.report.tables import PARTS, part_of, parts_table
from bench.results import SCHEMA_VERSION, load

RUNS, HEADLINE = docs.load_spec()


@pytest.fixture
def in_tree_backends(monkeypatch):
    """The committed pages list the backends in backends/, not the tests' own."""
    monkeypatch.delenv("ENCBENCH_BACKENDS")


def test_generated_pages_match_the_code_and_the_committed_results(in_tree_backends):
    stale = [str(p.relative_to(docs.REPO)) for p in docs.stale()]
    assert not stale, f"{stale} differ from what the code and results/ give: run `make docs` and commit"


@pytest.mark.parametrize("run", RUNS, ids=[r.run for r in RUNS])
def test_every_committed_run_is_current_schema_and_ran(run, in_tree_backends):
    docs.check_command(run)  # made by the command the page shows
    frame = load(run.path)
    totals = frame[frame["op"] == "total"]
    assert (frame["schema_version"] == SCHEMA_VERSION).all()
    assert (totals["status"] == "ok").any(), f"results/{run.run}/: no cell ran"


def test_results_made_by_another_command_are_refused():
    other = dataclasses.replace(RUNS[0], command="encbench backend=plaintext workload.seq_len=4")
    with pytest.raises(docs.DocsError, match=r"were made by `encbench.*docs/results.yaml says"):
        docs.check_command(other)


def test_a_changed_result_changes_the_page(tmp_path, monkeypatch, in_tree_backends):
    run = RUNS[0]
    before = docs.run_section(run)
    shutil.copytree(run.path, tmp_path / "results" / run.run)
    rows_file = next((tmp_path / "results" / run.run).rglob("rows.jsonl"))
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    next(r for r in rows if r["op"] == "total" and r["status"] == "ok")["max_abs_error"] = 123.0
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    after = docs.run_section(run)
    assert before != after and any("1.23e+02" in line for line in after)


def test_block_parts_sum_each_ops_figure_into_its_part_of_the_block():
    frame = tidy(load(docs.REPO / "results" / "llama-vs-gpt2"))
    table = parts_table(frame, "comm_bytes")
    ok = frame[(frame.status == "ok") & (frame.op != "total") & (frame.backend == "crypten")]
    for cell, rows in ok.groupby("cell"):
        parts = rows.assign(part=rows.op.map(part_of)).groupby("part").comm_bytes.sum()
        assert set(parts.index) <= set(PARTS)
        for part, value in parts.items():
            assert table.data.at[cell, part] == fmt_value("comm_bytes", value)
    assert part_of("rms2.rsqrt") == part_of("ln1.mean") == "norms" and part_of("mlp.residual") == "residuals"
    assert part_of("attn.rope") == part_of("attn.repeat_kv") == "positions, K/V copies" and part_of("protect") is None
