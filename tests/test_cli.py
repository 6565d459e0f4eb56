"""The `encbench` command line end to end: quick sweep, sweeps, bad input, resume, Ctrl-C, SIGKILL."""

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ENCBENCH, REPO, encbench
from test_harness import children_of, pid_alive

import bench
import workloads
from backends import installed
from bench.cells import expand
from bench.config import AllBackendsConfig, AllWorkloadsConfig
from bench.measure import HarnessConfig
from bench.prepare import jobs, prepare
from bench.results import read_rows
from workloads.layernorm import LayerNorm, LayerNormConfig


def manifests(results):
    return [json.loads(p.read_text()) for p in sorted(results.rglob("manifest.json"))]


def test_default_quick_sweep_runs_every_workload_on_plaintext(quick_sweep):
    done, results = quick_sweep, quick_sweep.results
    assert done.returncode == 0, done.stderr
    frame = bench.load(results)
    totals = frame[frame.op == "total"]
    assert set(totals.workload) == set(workloads.REGISTRY)
    plain = frame[frame.backend == "plaintext"]
    assert (plain.status == "ok").all() and (plain.max_abs_error < 1e-9).all()
    planned = Counter(c.backend["name"] for c in expand(AllBackendsConfig(), AllWorkloadsConfig(), HarnessConfig()))
    assert totals.groupby("backend").size().to_dict() == {b: planned[b] for b in installed(plugins=False)}
    assert set(totals.backend) == set(installed(plugins=False))  # every installed backend, in the sweep
    assert frame.run_id.nunique() == 1
    (m,) = manifests(results)
    assert m["schema_version"] == bench.results.SCHEMA_VERSION
    assert m["status"] == "finished" and m["cells"] == len(totals)
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


@pytest.mark.parametrize("mode, directory", [("", "hydra.run.dir"), ("-m", "hydra.sweep.dir")])
def test_the_report_reads_the_directory_hydra_wrote(tmp_path, mode, directory):
    """A run or sweep moved with hydra's own setting is reported from where its rows are."""
    where = tmp_path / "moved"
    args = [a for a in (mode, "backend=plaintext", "workload=layernorm", "workload.seq_len=4") if a]
    done = encbench(*args, f"{directory}={where}", "report=true", f"reports_dir={tmp_path / 'r'}", results=tmp_path)
    assert done.returncode == 0 and "report failed" not in done.stderr, done.stderr
    assert len(list((tmp_path / "r").glob("*/report.md"))) == 1 and len(bench.load(where)) > 0


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


def test_submitit_launcher_writes_the_same_layout(tmp_path):
    """The cluster path (the plugin of the SLURM preset), through submitit's local executor."""
    done = encbench(
        "-m",
        "hydra/launcher=submitit_local",
        "backend=plaintext",
        "workload=layernorm",
        "workload.seq_len=4,8",
        "harness.warmup=0",
        "harness.repeats=1",
        results=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (run,) = tmp_path.iterdir()
    for name in ("rows.jsonl", "manifest.json"):
        assert sorted(p.relative_to(run).as_posix() for p in run.glob(f"*/{name}")) == [f"0/{name}", f"1/{name}"]
    assert [(m["run_id"], m["launcher"], m["status"]) for m in manifests(tmp_path)] == [
        (run.name, "LocalLauncher", "finished")
    ] * 2
    totals = bench.load(tmp_path).query("op == 'total'")
    assert sorted(totals.seq_len) == [4, 8] and (totals.status == "ok").all()


BAD_INPUT = [
    (
        ["backend=foo"],
        "backend=foo is unknown; choose one of: all, concrete, crypten, faulty, lattigo, plaintext, spu, tenseal, wid",
    ),
    (["workload=mlp"], "workload=mlp is unknown; choose one of: all, attention_head, layernorm, block, lora_update"),
    (["workload=attention_head", "workload.n_heads=5"], "workload.d_model=64 is not divisible by workload.n_heads=5"),
    (["workload=block", "workload.gelu=tanh"], "workload.gelu=tanh is not a variant of block; allowed: exact, poly"),
    (["workload=layernorm", "workload.d_model=-4"], "workload.d_model=-4 must be a positive integer"),
    (
        ["workload=layernorm", "workload.seq_ln=3"],
        "workload.seq_ln is not a known key (did you mean workload.seq_len?); workload keys: name, seq_len",
    ),
    (
        ["workload=layernorm", "+workload.seqlen=16"],
        "workload.seqlen is not a known key (did you mean workload.seq_len?)",
    ),
    (["+harness.repeat=3"], "harness.repeat is not a known key (did you mean harness.repeats?); harness keys: "),
    (["backend=concrete", "+backend.nbits=4"], "backend.nbits is not a known key (did you mean backend.n_bits?)"),
    (["+foo=1"], "foo is not a known key; top-level keys: "),
    (["~workload.seq_len"], "~workload.seq_len: encbench needs workload.seq_len; set a value instead"),
    (["~harness"], "~harness: encbench needs harness; set a value instead"),
    (["+workload.seq_len=4"], "workload.seq_len is already set; drop the + to change it (workload.seq_len=...)"),
    (
        ["-m", "backend=concrete,plaintext", "++backend.n_bits=3"],
        "backend.n_bits is not a known key; backend keys: name, dtype, threads (in the job backend=plaintext)",
    ),
    (["+backend.quick.concrete.nbits=3"], "backend.quick.concrete.nbits is not a known key (did you mean "),
    (
        ["+networks.dc.rtt_ms=3"],
        "networks.dc is not a network yet; start it from a preset: +network@networks.dc=<lan|wan>",
    ),
    (["+experiment=nosuch"], "+experiment=nosuch is unknown; choose one of: claim_ef_llm, claim_marill"),
    (["claims=[nope]"], "claims=['nope'] unknown; choose among zama_pbs, zama_accuracy"),
    (["+experiment=claim_marill", "backend=spu"], "backend=spu: claims=['marill'] run their own cells"),
    (
        ["+experiment=fit", "workload.seq_len=4,x"],
        "workload.seq_len: Value 'x' of type 'str' could not be converted to Integer (in the job workload.seq_len=x "
        "workload.d_model=16)",
    ),
    (["workload.seq_len=abc"], "workload.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
    (["-m", "workload=attention_head", "workload.n_heads=4,5"], "not divisible by workload.n_heads=5"),
    (["workload.seq_len=8,16"], "workload.seq_len=8,16 is a sweep; add -m"),
    (["backend=plaintext", "backend.dtype=float16"], "backend.dtype=float16 is unknown; allowed: float64, float32"),
    (["resume=true"], "resume=true: no earlier run of this sweep under"),
    (["workload=layernorm", "workload.tolerance=-1"], "workload.tolerance=-1.0 must be >= 0"),
    (["results_dir=/proc/x"], "results_dir=/proc/x cannot be written (/proc: "),
    (["network=mars"], "network=mars: networks are not picked with network=; rows get an estimate per entry"),
    (["+network@networks.dc=mars"], "+network@networks.dc=mars is unknown; choose one of: lan, wan"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, args, message):
    done = encbench(*args, results=tmp_path / "r")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("encbench: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


def test_a_preset_sweeps_its_own_grid_and_the_command_line_wins():
    assert len(jobs(["+experiment=fit", "backend=plaintext"], multirun=False)) == 16
    four = jobs(["+experiment=fit", "workload.seq_len=4"], multirun=False)
    assert len(four) == 4 and all("workload.seq_len=4" in job for job in four)


def test_hydra_keys_and_free_form_entries_pass_untouched(tmp_path):
    args = ["backend=plaintext", "workload=layernorm", "hydra.job.name=x", "~networks.wan", f"results_dir={tmp_path}"]
    assert sweep_of(*args, "+network@networks.dc=lan") != sweep_of(*args)  # the added network is measured


def test_zero_tolerance_is_allowed():
    LayerNorm.validate(LayerNormConfig(tolerance=0.0))


def sweep_of(*argv: str) -> str:
    return next(a for a in prepare(list(argv)) if a.startswith("sweep="))


def test_a_sweep_is_identified_by_what_it_measures(tmp_path):
    args = ["-m", "backend=plaintext", "workload=attention_head,layernorm", "workload.seq_len=8,16"]
    same = ["-m", "workload.seq_len=16,8", "harness.repeats=5", "workload=layernorm,attention_head"]
    same += ["backend=plaintext", "hydra/launcher=parallel", f"results_dir={tmp_path}", "report=false"]
    assert sweep_of(*args) == sweep_of(*same)
    assert sweep_of(*args) != sweep_of(*args, "harness.repeats=3") != sweep_of(*args, "networks.lan.rtt_ms=1")


def test_failing_cells_are_recorded_while_the_sweep_finishes(tmp_path):
    done = encbench("backend=faulty", "backend.fault_op=softmax", "workload.variants=default", results=tmp_path)
    assert done.returncode == 0, done.stderr
    totals = bench.load(tmp_path).query("op == 'total'").set_index("workload")
    assert totals.status.to_dict() == {
        "attention_head": "error",
        "layernorm": "ok",
        "block": "error",
        "lora_update": "ok",
        "llama_block": "error",
        "finetune": "error",
    }
    assert totals.error["block"].startswith("RuntimeError: injected fault in softmax")
    assert "6 cells (4 error, 2 ok)" in done.stdout


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


def live_in_group(pgid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            found.add(int(stat.parent.name))
    return found


def test_a_killed_sweep_leaves_no_process_and_resume_measures_only_what_is_missing(tmp_path):
    results, pid_file = tmp_path / "r", tmp_path / "party.pid"
    sweep = [
        "-m",
        "backend=faulty",
        "backend.fault=hang",
        "backend.fault_op=gelu",  # block: the third of the first job's six cells
        f"backend.pid_file={pid_file}",
        f"backend.fault_once={tmp_path / 'hung'}",  # the same command gets past it the second time
        "workload.variants=default",
        "workload.seq_len=4,8",
    ]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [str(ENCBENCH), f"results_dir={results}", "progress=false", "report=false", *sweep],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), (tmp_path / "killed.log").read_text()
    party = int(pid_file.read_text())
    group = int(Path(f"/proc/{party}/stat").read_text().rsplit(")", 1)[1].split()[2])  # the worker's group
    spawned = children_of(proc.pid)  # the worker, its watchdog, multiprocessing's resource tracker
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while (live_in_group(group) or any(map(pid_alive, spawned))) and time.time() < deadline:
        time.sleep(0.1)
    assert live_in_group(group) == set() and not pid_alive(party)
    assert [p for p in spawned if pid_alive(p)] == []
    before = {r["cell_id"]: r for r in read_rows(results) if r["op"] == "total"}
    assert sorted((r["workload"], r["seq_len"]) for r in before.values()) == [("attention_head", 4), ("layernorm", 4)]

    again = encbench(*sweep, "resume=true", results=results)
    assert again.returncode == 0, again.stderr
    assert "6 cells (4 ok, 2 resumed)" in again.stdout and "6 cells (6 ok)" in again.stdout
    totals = [r for r in read_rows(results) if r["op"] == "total"]
    assert len(totals) == len({r["cell_id"] for r in totals}) == 12  # each cell measured exactly once
    assert all(r["status"] == "ok" for r in totals)
    assert [r for r in totals if r["cell_id"] in before] == list(before.values())  # kept, not measured again
    assert len(list(results.iterdir())) == 1  # the same run directory
    assert [m["status"] for m in manifests(results)] == ["finished", "finished"]
