"""The backend contract as a newcomer meets it: the example in backends/base.py runs, a class that
lacks part of the contract is refused by name, figures at the wrong scope fail their cell, a backend
that gives its own per-op outputs is run no more than its timings need, and a counter a backend
declares is gated, plotted, tabulated and documented without any change to bench/."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from dataclasses import asdict

import pytest
from conftest import REPO
from widgets import WidgetsBackend, WidgetsConfig

import backends
import backends.base as base
from bench.cells import Cell
from bench.columns import registry
from bench.measure import HarnessConfig, measure
from bench.report import docs, plots_counters, tables
from bench.report.compare import compare
from bench.report.frame import read_run
from bench.results import load
from bench.sweep import run_cells
from workloads.base import ConfigError

FAST = HarnessConfig(warmup=1, repeats=3)


def workload(name: str = "layernorm", **sizes):
    return Cell({}, {"name": name, "seq_len": 4, "d_model": 16, "n_heads": 2, **sizes}, {}).make_workload()


IMPORTS = "import torch\nfrom dataclasses import dataclass\nfrom workloads.ops import TorchOps"


def docstring_example() -> type[base.Backend]:
    """The class the contract's docstring shows, defined by running its text."""
    namespace = dict(vars(base))
    exec(IMPORTS + "\n" + textwrap.dedent(base.__doc__.split("::", 1)[1]), namespace)  # our own docstring
    return namespace["Float32"]


@pytest.mark.parametrize("name", ["layernorm", "attention_head"])
def test_the_docstring_example_is_a_working_backend(name):
    cls = docstring_example()
    assert all(hasattr(cls, attr) for attr in backends.REQUIRED)
    rows = measure(cls(cls.Config()), workload(name), FAST)
    assert [r["status"] for r in rows] == ["ok"] * len(rows)
    assert 0 < rows[-1]["max_abs_error"] <= cls.default_tolerance  # float32 computed, checked against float64


def test_a_backend_lacking_its_threat_model_is_refused_by_name(tmp_path, monkeypatch):
    example = textwrap.dedent(base.__doc__.split("::", 1)[1]).replace("threat_model = ", "# threat_model = ")
    (tmp_path / "no_threat.py").write_text(f"from backends.base import *\n{IMPORTS}\n{example}\nBACKEND = Float32\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ENCBENCH_BACKENDS", "no_threat")
    with pytest.raises(ConfigError, match=r"backend no_threat: Float32 lacks `threat_model` \(who holds"):
        backends.get("no_threat")


class CellFigureOnOps(WidgetsBackend):
    name = "cell_figure_on_ops"

    def counters(self):
        return {"widgets": self.turned, "key_bytes": 1024}  # a key size is the cell's, not an op's


def test_a_figure_at_the_wrong_scope_fails_its_cell():
    with pytest.raises(ValueError, match="reports key_bytes at the wrong scope"):
        measure(CellFigureOnOps(WidgetsConfig()), workload(), FAST)


def test_the_circuit_runs_once_per_warmup_and_repeat_when_the_backend_gives_op_outputs():
    for own, extra in ((True, 0), (False, 1)):  # without its own op outputs, one untimed run reveals every op
        backend = WidgetsBackend(WidgetsConfig(own_op_outputs=own))
        rows = measure(backend, workload("attention_head"), FAST)
        assert backend.runs == FAST.warmup + FAST.repeats + extra
        errors = {r["op"]: r["max_abs_error"] for r in rows}
        assert all(0 <= e < 1e-9 for e in errors.values()), errors  # every op's error known either way


def test_columns_declared_twice_must_agree(monkeypatch, tmp_path):
    (tmp_path / "clash.py").write_text(
        "from backends.base import Column, Capabilities\nfrom widgets import WidgetsBackend\n"
        "class Clash(WidgetsBackend):\n    name = 'clash'\n"
        "    capabilities = Capabilities(workloads={}, columns=(Column('widgets', 'bytes', 'cell', 'other'),))\n"
        "BACKEND = Clash\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ENCBENCH_BACKENDS", "widgets,clash")
    with pytest.raises(ValueError, match="backend widgets declares column widgets unlike"):
        registry()


def test_a_new_counter_is_gated_plotted_tabulated_and_documented_without_touching_bench(tmp_path):
    assert not [p for p in (REPO / "bench").rglob("*.py") if "widgets" in p.read_text()]
    cells = [Cell(asdict(WidgetsConfig()), {"name": name, "seq_len": 4, "d_model": 16}, asdict(FAST))
             for name in ("layernorm", "attention_head")]  # fmt: skip
    run_cells(cells, tmp_path / "base" / "r", tmp_path / "base" / "r", "r", timeout_s=120, progress=False)
    frame, _ = read_run(tmp_path / "base")
    ops = frame[~frame["op"].isin(["protect", "reveal", "total"]) & (frame["workload"] == "layernorm")]
    assert len(ops) == 4 and (ops["widgets"] > 0).all()  # per op

    turned = int(ops.loc[ops["op"] == "variance", "widgets"].iloc[0])

    # gated: one op turning one widget more is a regression naming the column and the op
    shutil.copytree(tmp_path / "base", tmp_path / "new")
    rows_file = tmp_path / "new" / "r" / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    for row in rows:
        row["widgets"] += row["op"] == "variance"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = compare(load(tmp_path / "base"), load(tmp_path / "new"))
    changed = [(f.op, f.detail) for f in result.regressions if f.kind == "counter"]
    assert ("variance", f"widgets {turned} -> {turned + 1}") in changed and not result.ok

    # plotted: a panel of the counters figure per workload
    fig = plots_counters.counters(frame)
    titles = [ax.get_title(loc="left") for ax in fig.get_axes() if ax.get_visible()]
    assert any(t.startswith("layernorm: widgets per op") for t in titles), titles

    # tabulated and documented
    assert f"widgets {turned}" in tables.counter_pivot(frame, "layernorm").to_markdown()
    assert re.search(r"\| `widgets` \| count \| op \| yes \| widgets \| widgets the op turned", docs.metrics_page())
