"""The `encbench` command line end to end: quick sweep, sweeps, bad input, resume, Ctrl-C."""

import json
import signal
import subprocess
import time

import pytest
from conftest import ENCBENCH, REPO, encbench
from test_harness import pid_alive

import bench
from backends import get, installed
from bench.cells import expand
from bench.config import AllWorkloadsConfig
from bench.measure import HarnessConfig


def manifests(results):
    return [json.loads(p.read_text()) for p in sorted(results.rglob("manifest.json"))]


def test_default_quick_sweep_runs_every_workload_on_plaintext(quick_sweep):
    done, results = quick_sweep, quick_sweep.results
    assert done.returncode == 0, done.stderr
    frame = bench.load(results)
    totals = frame[frame.op == "total"]
    assert set(totals.workload) == {"attention_head", "layernorm", "block", "lora_update"}
    plain = frame[frame.backend == "plaintext"]
    assert (plain.status == "ok").all() and (plain.max_abs_error < 1e-9).all()
    per_backend = len(expand(get("plaintext").Config(), AllWorkloadsConfig(), HarnessConfig()))
    assert (totals.groupby("backend").size() == per_backend).all()
    assert set(totals.backend) == set(installed()) - {"faulty"}  # every installed backend, in the sweep
    assert frame.run_id.nunique() == 1
    (m,) = manifests(results)
    assert m["schema_version"] == 1 and m["status"] == "finished" and m["cells"] == len(totals)
    assert m["cores"] >= 1 and m["cpu_model"] and m["python"].startswith("3.11")
    assert m["libraries"]["torch"].startswith("2.13.0") and m["jobs_in_parallel"] == 1
    assert set(m["threat_models"]) == set(totals.backend) and all(m["threat_models"].values())
    assert f"results in {results}/{m['run_id']}/" in done.stdout
    report = quick_sweep.reports / m["run_id"]
    assert f"report in {report}/index.html and {report}/report.md" in done.stdout
    assert (report / "index.html").stat().st_size > 0 and (report / "report.md").stat().st_size > 0


def test_multirun_sweep_shares_one_run(tmp_path):
    done = encbench(
        "-m",
        "backend=plaintext",
        "workload=attention_head,layernorm",
        "workload.seq_len=8,16",
        "workload.d_model=32",
        results=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    frame = bench.load(tmp_path)
    totals = frame[frame.op == "total"]
    assert sorted(zip(totals.workload, totals.seq_len, strict=True)) == [
        ("attention_head", 8),
        ("attention_head", 16),
        ("layernorm", 8),
        ("layernorm", 16),
    ]
    assert frame.run_id.nunique() == 1 and (totals.d_model == 32).all()
    assert len(manifests(tmp_path)) == 4


def test_parallel_launcher_records_jobs_in_parallel(tmp_path):
    done = encbench(
        "-m",
        "hydra/launcher=parallel",
        "backend=plaintext",
        "workload=layernorm",
        "workload.seq_len=4,8",
        results=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert [m["jobs_in_parallel"] for m in manifests(tmp_path)] == [2, 2]
    assert (bench.load(tmp_path).status == "ok").all()


BAD_INPUT = [
    (["backend=foo"], "backend=foo is unknown; choose one of: all, concrete, crypten, faulty, plaintext, tenseal"),
    (["workload=mlp"], "workload=mlp is unknown; choose one of: all, attention_head, layernorm, block, lora_update"),
    (["workload=attention_head", "workload.n_heads=5"], "workload.d_model=64 is not divisible by workload.n_heads=5"),
    (["workload=block", "workload.gelu=tanh"], "workload.gelu=tanh is not a variant of block; allowed: exact, poly"),
    (["workload=layernorm", "workload.d_model=-4"], "workload.d_model=-4 must be a positive integer"),
    (["workload=layernorm", "workload.seq_ln=3"], "workload.seq_ln is not a known key; workload keys: name, seq_len"),
    (["workload.seq_len=abc"], "workload.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["-m", "workload=attention_head", "workload.n_heads=4,5"], "not divisible by workload.n_heads=5"),
    (["workload.seq_len=8,16"], "workload.seq_len=8,16 is a sweep; add -m"),
    (["backend=plaintext", "backend.dtype=float16"], "backend.dtype=float16 is unknown; allowed: float64, float32"),
    (["resume=true"], "resume=true: no earlier run of this sweep under"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, args, message):
    done = encbench(*args, results=tmp_path / "r")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("encbench: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


def test_failing_cells_are_recorded_while_the_sweep_finishes(tmp_path):
    done = encbench("backend=faulty", "backend.fault_op=softmax", "workload.variants=default", results=tmp_path)
    assert done.returncode == 0, done.stderr
    totals = bench.load(tmp_path).query("op == 'total'").set_index("workload")
    assert totals.status.to_dict() == {
        "attention_head": "error",
        "layernorm": "ok",
        "block": "error",
        "lora_update": "ok",
    }
    assert totals.error["block"].startswith("RuntimeError: injected fault in softmax")
    assert "4 cells (2 error, 2 ok)" in done.stdout


def test_resume_continues_the_same_run_without_measuring_again(tmp_path):
    args = ("backend=plaintext", "workload=layernorm")
    first = encbench(*args, results=tmp_path)
    again = encbench(*args, "resume=true", results=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert "1 resumed" in again.stdout
    assert len(list(tmp_path.iterdir())) == 1  # the same run directory
    assert len(bench.load(tmp_path)) == 7 and len(bench.results.read_rows(tmp_path)) == 7


def test_ctrl_c_keeps_finished_cells_and_leaves_no_process(tmp_path):
    pid_file = tmp_path / "party.pid"
    args = [
        "backend=faulty",
        "backend.fault=hang",
        "backend.fault_op=gelu",
        f"backend.pid_file={pid_file}",
        "workload.variants=default",
        f"results_dir={tmp_path}",
        "progress=false",
        "report=false",
    ]  # block hangs
    proc = subprocess.Popen([str(ENCBENCH), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "the hanging cell never started"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "interrupted; finished cells are kept" in out
    frame = bench.load(tmp_path)
    assert list(frame.query("op == 'total'").workload) == ["attention_head", "layernorm"]
    assert (frame.status == "ok").all()
    assert not pid_alive(int(pid_file.read_text()))  # the backend's own child went with the worker
    assert [m["status"] for m in manifests(tmp_path)] == ["interrupted"]
