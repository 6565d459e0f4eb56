"""`encbench-project`: a synthetic backend whose costs are known formulas of the shape is projected
exactly; held-out cells stay out of their own fit; how, extrapolation and flags reach the output."""

import json

import pandas as pd
import pytest
from conftest import encbench

from bench.config import register
from bench.project.assemble import project
from bench.project.cli import configure, main
from bench.project.model import ModelConfig, ProjectConfig, block, variant
from bench.project.projection import collect
from workloads.base import ConfigError

OPS = {  # op: figure -> formula of (s, d, h, f); every one is in its op class's monomials
    "protect": {"latency_s": lambda s, d, h, f: 1e-6 * s * d, "comm_bytes": lambda s, d, h, f: 8 * s * d},
    "attn.qkv_proj": {
        "latency_s": lambda s, d, h, f: 2e-9 * s * d * d + 1e-4,
        "comm_bytes": lambda s, d, h, f: 16 * s * d + 48 * d * d,
    },
    "attn.softmax": {
        "latency_s": lambda s, d, h, f: 3e-7 * s * s * h,
        "pbs": lambda s, d, h, f: 2 * s * s * h + 5 * s * h,
    },
    "ln1.rsqrt": {"latency_s": lambda s, d, h, f: 4e-5 * s, "rounds": lambda s, d, h, f: 17.0},
    "mlp.fc1": {
        "latency_s": lambda s, d, h, f: 1e-9 * s * d * f,
        "comm_bytes": lambda s, d, h, f: 16 * (s * d + d * f),
    },
    "mlp.gelu": {"latency_s": lambda s, d, h, f: 5e-7 * s * f, "rounds": lambda s, d, h, f: 3.0},
    "reveal": {"latency_s": lambda s, d, h, f: 1e-6 * s * d, "rounds": lambda s, d, h, f: 1.0},
}
GRID = [(s, d) for s in (4, 8, 16, 32) for d in (16, 32, 64, 128)]
GPT2 = {"seq_len": 128, "d_model": 768, "n_heads": 12, "d_ff": 3072}


def synthetic(shapes=GRID, heads=2, backend="synthetic", scale=None, model=None, ops=None) -> pd.DataFrame:
    """Rows of `model`'s block cells (GPT-2's by default) whose figures are the formulas of `ops`
    (`OPS`); `scale` multiplies a shape's figures."""
    rows, model = [], model or ModelConfig()
    kv = heads // (model.n_heads // (model.n_kv_heads or model.n_heads))  # the model's grouping
    for s, d in shapes:
        f = 4 * d
        cell = {"run_id": "r", "cell_id": f"{backend}-{s}-{d}", "backend": backend, "workload": model.workload,
                "variant": variant(model), "seq_len": s, "d_model": d, "n_heads": heads, "d_ff": f,
                "workload_cfg": json.dumps({"n_heads": heads, "n_kv_heads": kv}),
                "backend_cfg": "{}", "status": "ok", "finished_at": "2026-12-03T00:00:00"}  # fmt: skip
        factor = (scale or {}).get((s, d), 1.0)
        for op, figures in (ops or OPS).items():
            rows.append({**cell, "op": op, **{k: factor * v(s, d, heads, f) for k, v in figures.items()}})
        rows.append({**cell, "op": "total", "accurate": True, "setup_s": 0.5, "key_bytes": 1000.0})
    return pd.DataFrame(rows)


def exact(op_figures, shape, layers=12) -> dict[str, float]:
    """The model's figures straight from the formulas."""
    s, d, h, f = (shape[k] for k in ("seq_len", "d_model", "n_heads", "d_ff"))
    total = {}
    for op, figures in op_figures.items():
        times = 1 if op in ("protect", "reveal") else layers
        for name, formula in figures.items():
            key = "online_s" if name == "latency_s" else name
            total[key] = total.get(key, 0.0) + times * formula(s, d, h, f)
    return total


def figures(proj, backend="synthetic", network="") -> dict[str, dict]:
    return {r["figure"]: r for r in proj.rows if r["backend"] == backend and r["network"] == network}


def config(**model) -> ProjectConfig:
    return configure([f"model.{k}={v}" for k, v in model.items()])


def test_a_synthetic_backend_of_known_formulas_is_projected_exactly():
    proj = project(synthetic(), config())
    got = figures(proj)
    for name, value in exact(OPS, GPT2).items():
        assert got[name]["value"] == pytest.approx(value, rel=1e-9), name
        assert got[name]["how"] == "fitted" and got[name]["flag"] == "validated"
        assert got[name]["extrapolation"] == 6.0  # d_model 768 / 128 (and d_ff 3072 / 512)
    wan = figures(proj, network="wan")["online_wan_s"]["value"]
    assert wan == pytest.approx(
        got["online_s"]["value"] + got["rounds"]["value"] * 0.08 + got["comm_bytes"]["value"] * 8 / 1e8
    )
    assert all(v["error"] < 1e-9 and v["held"] for v in proj.validation)
    assert {v["held_out"] for v in proj.validation} == {"seq_len 32, d_model 128"}
    assert all(f["exact"] for f in proj.fits if f["figure"] != "latency_s" or f["op"] != "total")


def test_the_held_out_cell_is_never_used_by_its_own_fit():
    honest = project(synthetic(), config())
    skewed = project(synthetic(scale={(32, 128): 2.0}), config())  # only the held-out cell changes
    for a, b in zip(honest.validation, skewed.validation, strict=True):
        assert a["predicted"] == pytest.approx(b["predicted"], rel=1e-12)  # its fit never saw it
        assert b["measured"] == pytest.approx(2 * a["measured"]) and b["error"] == pytest.approx(0.5) and not b["held"]
    assert figures(skewed)["online_s"]["flag"] == "missed: validation error 50% > 25%"
    assert figures(skewed)["comm_bytes"]["flag"] == "missed: validation error 50% > 5%"


def test_a_cell_at_the_models_own_shape_is_taken_as_measured():
    model_cell = [(GPT2["seq_len"], GPT2["d_model"])]
    frame = pd.concat([synthetic(), synthetic(model_cell, heads=12)])
    got = figures(project(frame, config()))
    assert got["online_s"]["how"] == "measured" and got["online_s"]["extrapolation"] == 1.0
    assert got["online_s"]["flag"] == ""
    assert got["comm_bytes"]["value"] == pytest.approx(exact(OPS, GPT2)["comm_bytes"])


def test_frozen_layers_run_on_the_client_in_plaintext():
    frame = pd.concat([synthetic(), synthetic(backend="plaintext")])
    half = figures(project(frame, config(private_layers=6)))
    private = exact(OPS, GPT2, layers=6)
    plain_block = exact(OPS, GPT2, layers=1)["online_s"]
    assert half["client_s"]["value"] == pytest.approx(6 * plain_block)
    assert half["online_s"]["value"] == pytest.approx(private["online_s"] + 6 * plain_block)
    assert half["rounds"]["value"] == pytest.approx(private["rounds"])


def test_inaccurate_cells_are_flagged_and_failed_backends_said_unsupported():
    frame = synthetic()
    frame.loc[(frame.op == "total") & (frame.seq_len == 4) & (frame.d_model == 16), "accurate"] = False
    skipped = pd.DataFrame([{"run_id": "r", "cell_id": "x", "backend": "ckks", "workload": "block",
                             "variant": variant(ModelConfig()), "op": "total", "status": "skipped",
                             "error": "ckks: seq_len 128 > head_dim 64"}])  # fmt: skip
    found = collect(pd.concat([frame, skipped]), block(ModelConfig()))
    assert found["ckks"] == "ckks: seq_len 128 > head_dim 64"
    assert sum(found["synthetic"].inaccurate) == 1 and len(found["synthetic"].shapes) == len(GRID)
    proj = project(pd.concat([frame, skipped]), config())
    assert figures(proj, "ckks")["online_s"]["flag"] == "unsupported: ckks: seq_len 128 > head_dim 64"
    assert (
        figures(proj)["online_s"]["flag"]
        == "validated; from cells whose output missed its tolerance (their costs stand)"
    )
    assert figures(project(synthetic(), config()))["online_s"]["flag"] == "validated"


def test_no_backend_able_to_run_the_model_is_one_error():
    failed = synthetic().assign(status="error", error="synthetic: RuntimeError: out of memory")
    with pytest.raises(ConfigError, match="^no backend can project gpt2: synthetic: RuntimeError: out of memory$"):
        project(failed, config())


def test_a_fit_run_reports_its_gpt2_projection(tmp_path):
    grid = ("workload.seq_len=4,8", "workload.d_model=16,32", "harness.repeats=1")
    done = encbench("+experiment=fit", "backend=plaintext", *grid, f"reports_dir={tmp_path / 'reports'}",
                    "report=true", results=tmp_path / "results")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (page,) = (tmp_path / "reports").glob("*/report.md")
    assert "## Projection: gpt2, 128 tokens" in page.read_text() and "report failed" not in done.stdout + done.stderr


def write_rows(path, frame):
    path.mkdir(parents=True)
    (path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))


def test_the_command_writes_the_tidy_rows_and_the_pages(tmp_path, capsys):
    write_rows(tmp_path / "run", synthetic())
    assert main([str(tmp_path / "run"), "model=gpt2-medium", f"out={tmp_path / 'out'}", "network=wan"]) == 0
    rows = pd.read_json(tmp_path / "out" / "projection.jsonl", lines=True)
    assert set(rows.columns) >= {"model", "backend", "network", "figure", "value", "unit", "how", "extrapolation",
                                 "validation_error", "flag"}  # fmt: skip
    assert set(rows.network) == {"", "wan"} and set(rows.model) == {"gpt2-medium"}
    page = (tmp_path / "out" / "projection.md").read_text()
    assert "24 of 24 layers private" in page and "## Validation" in page and "(F ×8)" in page
    assert (tmp_path / "out" / "index.html").exists() and (tmp_path / "out" / "fig-projection.png").exists()


BAD = [
    (["model=gpt3"], "model=gpt3 is unknown; choose one of: gpt2, gpt2-medium, llama-3.2-1b, llama-7b, pythia-70m"),
    (["model.workload=layernorm"], "model.workload=layernorm is not a block; choose one of: block, llama_block"),
    (["model=gpt2", "model.layers=3"], "model.layers is not a known key (did you mean model.n_layers?)"),
    (["model.private_layers=13"], "model.private_layers=13: choose 0..12 (n_layers)"),
    (["model.n_heads=5"], "model.d_model=768 is not divisible by model.n_heads=5"),
    (["model.gelu=tanh"], "model.gelu=tanh is not a variant of block"),
    (["network=mars"], "network=mars is unknown; choose one of: all, lan, wan"),
    (["backend=tenseal"], "backend=tenseal has no block cells in the results; they have: synthetic"),
    (["model.softmax=power"], "the results hold no block cells of variant softmax=power,"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    write_rows(tmp_path / "run", synthetic())
    assert main([str(tmp_path / "run"), *args, f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("encbench-project: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_missing_results_are_named(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "model=gpt2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["model=gpt2"]) == 2
    assert "give the results to project from" in capsys.readouterr().err


def test_presets_match_the_published_shapes():
    names = ("gpt2", "gpt2-medium", "pythia-70m", "llama-7b", "llama-3.2-1b")
    shapes = {m: configure([f"model={m}"]).model for m in names}
    assert [(m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.vocab) for m in shapes.values()] == [
        (12, 768, 12, None, 3072, 50257),
        (24, 1024, 16, None, 4096, 50257),
        (6, 512, 8, None, 2048, 50304),
        (32, 4096, 32, 32, 11008, 32000),
        (16, 2048, 32, 8, 8192, 128256),
    ]
    assert "not modelled" in shapes["pythia-70m"].block
    assert {block(shapes[m]).name for m in names} == {"block", "llama_block"}


LLAMA_OPS = {  # Llama's names for the same kinds of work, and its gated MLP's first product
    **{k: v for k, v in OPS.items() if not k.startswith(("ln1.", "mlp."))},
    "rms1.rsqrt": OPS["ln1.rsqrt"],
    "attn.rope": {"latency_s": lambda s, d, h, f: 3e-8 * s * d, "rounds": lambda s, d, h, f: 0.0},
    "mlp.gate_up": {
        "latency_s": lambda s, d, h, f: 2e-9 * s * d * f,
        "comm_bytes": lambda s, d, h, f: 16 * (s * d + 2 * d * f),
    },
}


def test_a_llama_model_is_projected_from_cells_of_its_own_kv_grouping():
    """llama-3.2-1b (4 query heads per K/V head) from llama_block cells of that grouping, exactly;
    cells of another grouping do not stand in for it; the private LM head is the gated MLP's first
    product (two maps) at half the vocabulary."""
    model = configure(["model=llama-3.2-1b"]).model
    cells = synthetic(heads=4, model=model, ops=LLAMA_OPS)
    got = figures(project(cells, configure(["model=llama-3.2-1b"])))
    shape = {"seq_len": 128, "d_model": 2048, "n_heads": 32, "d_ff": 8192}
    assert got["online_s"]["value"] == pytest.approx(exact(LLAMA_OPS, shape, layers=16)["online_s"], rel=1e-6)
    assert got["comm_bytes"]["value"] == pytest.approx(exact(LLAMA_OPS, shape, layers=16)["comm_bytes"], rel=1e-9)
    head = figures(project(cells, configure(["model=llama-3.2-1b", "model.lm_head=private"])))
    gate_up = LLAMA_OPS["mlp.gate_up"]["latency_s"](128, 2048, 32, 128256 / 2)
    assert head["online_s"]["value"] == pytest.approx(got["online_s"]["value"] + gate_up, rel=1e-6)
    with pytest.raises(
        ConfigError, match="with 4 query heads per K/V head.*workload.n_kv_heads = workload.n_heads / 4"
    ):
        project(
            synthetic(heads=4, model=configure(["model=llama-7b"]).model, ops=LLAMA_OPS),
            configure(["model=llama-3.2-1b"]),
        )


def test_a_private_lm_head_is_added_and_flagged_when_its_width_was_never_varied():
    client = figures(project(synthetic(), config()))
    private = figures(project(synthetic(), config(lm_head="private")))
    fc1 = OPS["mlp.fc1"]["latency_s"]
    assert private["online_s"]["value"] == pytest.approx(client["online_s"]["value"] + fc1(128, 768, 12, 50257))
    assert private["online_s"]["how"] == "fitted" and private["online_s"]["extrapolation"] > 98
    assert private["online_s"]["flag"].startswith("unvalidated: the LM head is extrapolated")
    wide = synthetic([(8, 32)]).assign(d_ff=512, cell_id="wide")  # one cell with d_ff apart from 4 d_model
    wide.loc[wide.op == "mlp.fc1", "latency_s"] = fc1(8, 32, 2, 512)
    both = figures(project(pd.concat([synthetic(), wide]), config(lm_head="private")))
    assert not both["online_s"]["flag"].startswith("unvalidated")


def test_bootstrapping_time_is_split_out_at_the_cost_models_price():
    frame = synthetic()
    rsqrt = frame.op == "ln1.rsqrt"
    frame.loc[rsqrt, "bootstraps"] = frame.loc[rsqrt, "seq_len"] * 2.0  # 2 per token
    frame.loc[rsqrt, "latency_s"] += frame.loc[rsqrt, "bootstraps"] * 0.5
    frame.loc[frame.op == "total", "he_cost_model"] = "s at the top level: mul=0.25,bootstrap=0.5 (this machine)"
    got = figures(project(frame, config()))
    assert got["bootstraps"]["value"] == pytest.approx(12 * 2 * 128)
    assert got["time_bootstrapping_s"]["value"] == pytest.approx(12 * 2 * 128 * 0.5)
    assert got["time_norms_s"]["value"] == pytest.approx(12 * 4e-5 * 128)  # the rsqrt without its bootstraps


def test_the_client_layers_count_when_one_backend_is_picked():
    frame = pd.concat([synthetic(), synthetic(backend="plaintext")])
    picked = figures(project(frame, configure(["model.private_layers=6", "backend=synthetic"])))
    assert picked["client_s"]["value"] == pytest.approx(6 * exact(OPS, GPT2, layers=1)["online_s"])


def test_backend_and_network_are_picks_even_where_encbench_registered_its_groups():
    register()  # as in a process that also ran encbench's config (its report, or the tests before)
    picked = configure(["backend=crypten", "network=wan"])
    assert (picked.backend, picked.network) == ("crypten", "wan")
