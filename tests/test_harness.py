"""The measurement loop, the results store and fault isolation, on real cells."""

import functools
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

import backends
import bench
import workloads
from bench.cells import Cell, expand, measure_job
from bench.config import AllBackendsConfig, AllWorkloadsConfig
from bench.measure import HarnessConfig
from bench.results import COLUMNS
from bench.sweep import run_cells
from workloads.attention import AttentionConfig
from workloads.layernorm import LayerNormConfig

FAST = HarnessConfig(warmup=0, repeats=3, timeout_s=60)


def measure(workload=None, harness=FAST, **backend_cfg):
    """One cell on the plaintext backend, in this process, as the worker runs it."""
    cfg = backends.get("plaintext").Config(**backend_cfg)
    cell = Cell(asdict(cfg), workload or {"name": "attention_head"}, asdict(harness))
    return backends.get("plaintext").execute(cfg, functools.partial(measure_job, cell))


def test_plaintext_rows_per_op_and_total():
    rows = measure()
    assert [r["op"] for r in rows] == [
        "protect",
        "qkv_proj",
        "qk_matmul",
        "softmax",
        "av_matmul",
        "out_proj",
        "reveal",
        "total",
    ]
    for row in rows:
        assert row["status"] == "ok" and row["repeats"] == 3
        assert row["latency_s"] > 0 and row["latency_iqr_s"] >= 0
        assert row["max_abs_error"] < 1e-9 and row["accurate"] is True
        assert "pbs" not in row and "rounds" not in row  # not measurable in plaintext: left missing
    ops = sum(r["latency_s"] for r in rows[:-1])
    assert ops <= rows[-1]["latency_s"] * 1.5  # the total brackets its ops
    assert rows[-1]["setup_s"] >= 0 and all("setup_s" not in r for r in rows[:-1])  # a cell-level figure


def test_the_first_warm_up_is_timed_per_op_apart_from_the_median():
    warm = measure(harness=HarnessConfig(warmup=2, repeats=2))
    assert all(r["first_run_s"] > 0 for r in warm)
    ops = sum(r["first_run_s"] for r in warm[:-1])
    assert ops <= warm[-1]["first_run_s"] * 1.5  # the whole first run brackets its ops
    assert all(math.isnan(r["first_run_s"]) for r in measure())  # no warm-up: not measured


def test_float32_error_is_measured_not_assumed():
    rows = measure(dtype="float32")
    total = rows[-1]
    assert 1e-9 < total["max_abs_error"] < 1e-4 and total["accurate"] is True
    assert total["max_rel_error"] <= total["max_abs_error"] * 10


def test_budget_cuts_repeats_of_slow_cells():
    rows = measure(harness=HarnessConfig(warmup=0, repeats=50, budget_s=1e-9))
    assert rows[-1]["repeats"] == 1 and math.isnan(rows[-1]["latency_iqr_s"])


def test_unsupported_variant_is_skipped_with_reason(monkeypatch):
    cls = backends.get("plaintext")
    narrowed = backends.Capabilities(workloads={"attention_head": {"softmax": ("exact",)}})
    monkeypatch.setattr(cls, "capabilities", narrowed)
    rows = measure({"name": "attention_head", "softmax": "gaussian"})
    assert rows == [
        {"op": "total", "status": "skipped", "error": "plaintext: softmax=gaussian is not supported (supported: exact)"}
    ]


def test_quick_sweep_cells_cover_every_workload_and_variant():
    cells = expand(AllBackendsConfig(), AllWorkloadsConfig(), FAST)
    labels = {(c.backend["name"], c.workload["name"]) for c in cells}
    assert {("plaintext", w) for w in ("attention_head", "layernorm", "block", "lora_update", "llama_block")} <= labels
    softmaxes = {c.workload.get("softmax") for c in cells if c.workload["name"] == "attention_head"}
    assert softmaxes == {"exact", "power", "gaussian", "quad2", "relu"}
    assert len({c.id for c in cells}) == len(cells)

    def values(backend, switch):
        return {c.workload.get(switch) for c in cells if c.backend["name"] == backend} - {None}

    # blocks leave softmax to the head (`each_fixed`); concrete's GELU / SiLU forms are one lookup each
    assert {c.workload["softmax"] for c in cells if c.workload["name"] in ("block", "llama_block")} == {"exact"}
    assert values("crypten", "gelu") == values("crypten", "silu") == {"exact", "poly", "quad", "relu"}
    assert values("concrete", "gelu") == values("concrete", "silu") == {"exact"}
    assert values("concrete", "norm") == {"exact", "poly"}


@pytest.mark.parametrize("mode", ["each", "grid"])
def test_sweep_leaves_out_variants_the_sizes_do_not_allow(mode):
    cells = expand(plaintext(), AllWorkloadsConfig(n_heads=3, d_model=48, variants=mode), FAST)
    merges = {c.workload["head_merge"] for c in cells if c.workload["name"] == "block"}
    assert merges == {1}  # head_merge=2 does not divide 3 heads
    assert {c.workload["name"] for c in cells} == set(workloads.REGISTRY)


def cells_for(*backend_cfgs, workload=None):
    workload = workload or LayerNormConfig()
    return [c for b in backend_cfgs for c in expand(b, workload, FAST)]


def children_of(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def faulty(fault, **extra):
    return backends.get("faulty").Config(fault=fault, fault_op="rsqrt", **extra)


def plaintext():
    return backends.get("plaintext").Config()


def test_raising_crashing_and_hanging_cells_are_recorded_and_the_sweep_goes_on(tmp_path):
    pid_file = tmp_path / "child.pid"
    cells = cells_for(plaintext(), faulty("raise"), workload=LayerNormConfig(seq_len=4))
    cells += cells_for(
        plaintext(), faulty("crash"), faulty("hang", pid_file=str(pid_file)), workload=LayerNormConfig(seq_len=5)
    )
    cells += cells_for(plaintext(), workload=LayerNormConfig(seq_len=6))
    before = children_of(os.getpid())
    tally = run_cells(cells, tmp_path, tmp_path, "t", timeout_s=8, progress=False)
    frame = bench.load(tmp_path)
    totals = frame[frame.op == "total"].reset_index(drop=True)
    assert list(totals.status) == ["ok", "error", "ok", "error", "timeout", "ok"]
    assert "RuntimeError: injected fault in rsqrt" in totals.error[1]
    assert "crashed the worker process (exit code -11)" in totals.error[3]
    assert "harness.timeout_s=8 while hanging on purpose in rsqrt" in totals.error[4]
    assert tally["ok"] == 3 and tally["error"] == 2 and tally["timeout"] == 1
    child = int(pid_file.read_text())  # the hanging backend's own child process was killed too
    deadline = time.time() + 5
    while pid_alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in children_of(os.getpid()) - before}
    left = {p: cmd for p, cmd in left.items() if b"resource_tracker" not in cmd}  # multiprocessing's own helper
    assert not left, left  # no worker left behind


def test_load_returns_required_columns_with_missing_metrics_as_nan(tmp_path):
    run_cells(cells_for(plaintext()), tmp_path, tmp_path, "t", timeout_s=60, progress=False)
    frame = bench.load(tmp_path)
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(frame) == 7 and set(frame.op) >= {"protect", "mean", "variance", "rsqrt", "scale_shift", "total"}
    assert frame[["pbs", "rounds", "comm_bytes", "ct_bytes", "key_bytes", "security_bits"]].isna().all().all()
    assert (frame.run_id == "t").all() and (frame.status == "ok").all()


def test_resume_skips_finished_cells_and_retries_failed_ones(tmp_path):
    cells = cells_for(plaintext(), faulty("raise"))
    first = run_cells(cells, tmp_path, tmp_path, "t", timeout_s=60, progress=False)
    again = run_cells(cells, tmp_path, tmp_path, "t", timeout_s=60, resume=True, progress=False)
    assert first["ok"] == 1 and first["error"] == 1
    assert again["resumed"] == 1 and again["error"] == 1 and again["ok"] == 0
    frame = bench.load(tmp_path)
    assert (frame[frame.op == "total"].groupby("cell_id").size() == 1).all()  # latest attempt only


def test_a_truncated_last_line_does_not_lose_the_rows_before_it(tmp_path):
    run_cells(cells_for(plaintext()), tmp_path, tmp_path, "t", timeout_s=60, progress=False)
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"run_id": "t", "op": "prot')  # a crash mid-write
    assert len(bench.load(tmp_path)) == 7


@pytest.mark.parametrize("softmax", ["exact", "power"])
def test_workload_tolerance_overrides_the_backend_default(softmax):
    rows = measure({"name": "attention_head", "softmax": softmax, "tolerance": 1e-30}, dtype="float32")
    assert rows[-1]["tolerance"] == 1e-30 and rows[-1]["accurate"] is False
    assert AttentionConfig().tolerance is None


def test_load_brings_schema_1_rows_to_the_current_scopes():
    """Schema 1 copied cell-level figures onto every op row (tests/golden: a run of that time)."""
    frame = bench.load(Path(__file__).parent / "golden" / "results" / "20261122-073709" / "handmade" / "rows.jsonl")
    assert (frame.schema_version == 1).all()
    ops, totals = frame[frame.op != "total"], frame[(frame.op == "total") & (frame.status == "ok")]
    assert ops[["setup_s", "key_bytes", "security_bits", "ct_bytes"]].isna().all().all()
    he = totals[totals.backend.isin(["tenseal", "concrete"])]
    assert he[["setup_s", "key_bytes", "security_bits"]].notna().all().all()
    assert ops.groupby("cell_id").comm_bytes.sum().gt(0).any()  # per-op traffic stays where it was measured
