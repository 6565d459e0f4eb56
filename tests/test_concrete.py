"""The concrete (TFHE) backend: the quantized-clear model against float64, the integer blocks it
builds circuits from, PBS per op against counting formulas (ours and the demo port's), the on-disk
circuit cache, isolated per-op circuits, and the errors that name a fix."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from test_backend_conformance import BackendConformance

import workloads
from bench.cells import Cell, run_cell
from bench.measure import HarnessConfig
from workloads.attention import AttentionConfig
from workloads.base import ConfigError
from workloads.llama import rope_tables
from workloads.ops import TorchOps

pytest.importorskip("concrete.fhe")

from backends.concrete import ConcreteBackend, ConcreteConfig, calibration_inputs  # noqa: E402
from backends.concrete import circuit as tfhe_circuit  # noqa: E402
from backends.concrete.blocks import concrete_fhe, elementwise_product  # noqa: E402
from backends.concrete.fused import FusedScheme  # noqa: E402
from backends.concrete.quant import QuantOps  # noqa: E402
from backends.concrete.values import QuantSettings  # noqa: E402

QUICK = HarnessConfig(warmup=0, repeats=1)


class TestConcrete(BackendConformance):
    backend = "concrete"
    # mono: the same counts as multi, compiles fast; 5 bits with exact rounding: every workload fits (at 6,
    # llama_block's x / rms * gamma reaches 17 bits on a calibration input: no mono parameters)
    config = {"parameter_strategy": "mono", "n_bits": 5, "rounding": "exact", "isolated_ops": False}
    round_trip_workload = "attention_head"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh circuit cache, so a test sees its own compilations."""
    monkeypatch.setattr(tfhe_circuit, "CACHE", tmp_path / "concrete")
    return tmp_path / "concrete"


def run(workload: dict, **backend) -> dict[str, dict]:
    rows = run_cell(Cell(asdict(ConcreteConfig(**backend)), workload, asdict(QUICK)))
    return {r["op"]: r for r in rows}


def head(seq: int = 4, d: int = 16, **kw) -> dict:
    return {"name": "attention_head", "seq_len": seq, "d_model": d, "n_heads": 1, **kw}


def llama(seq: int = 4, d: int = 16, **kw) -> dict:
    return {"name": "llama_block", "seq_len": seq, "d_model": d, "n_heads": 2, **kw}


def clear_error(n_bits: int) -> float:
    """Max abs error of the quantized-clear head against float64 (no Concrete compilation)."""
    wl = workloads.REGISTRY["attention_head"](AttentionConfig(seq_len=6, d_model=32, n_heads=1))
    scheme = FusedScheme(QuantSettings(n_bits, "none", n_bits + 2), wl, wl.weights())
    scheme.calibrate(calibration_inputs(wl, 4))
    out = scheme.decode(scheme.clear(*scheme.encode(wl.inputs())))
    return float((out - wl.reference()[0]).abs().max())


def test_quantized_clear_model_converges_to_float64():
    err4, err8 = clear_error(4), clear_error(8)
    assert err8 < err4 / 4  # each bit halves the step: 4 more bits, well over 4x less error
    assert err8 < 0.05


def test_products_by_squares_are_exact_on_needed_entries():
    settings = QuantSettings(n_bits=4, rounding="none", rounding_bits=6)
    ops = QuantOps(settings, "clear", [])
    gen = np.random.default_rng(0)
    a, b = gen.integers(-7, 8, (5, 6)), gen.integers(-7, 8, (6, 5))
    qa, qb = (ops.encrypted(ops.weight(torch.zeros(1)), v) for v in (a, b))
    for q, v in ((qa, a), (qb, b)):
        q.fixed, q.narrow, q.scale = np.full(v.shape, np.nan), True, 1.0
    mask = np.tril(np.ones((5, 5)))
    got = ops.mul(ops.matmul(qa, qb), torch.as_tensor(mask))
    assert np.array_equal(got.v * got.scale, (a @ b) * mask)
    assert np.array_equal(np.isnan(got.fixed), mask == 1)  # entries above the diagonal are known zeros


def test_elementwise_product_is_exact_with_mixed_signs(cache):
    """Concrete 2.11's own multiplication is wrong for signed x unsigned operands; ours is not."""
    fhe = concrete_fhe()
    signed, unsigned = np.arange(-8, 8), np.arange(16) % 11
    assert np.array_equal(elementwise_product(signed, unsigned), signed * unsigned)
    circuit = fhe.Compiler(elementwise_product, {"a": "encrypted", "b": "encrypted"}).compile(
        [(signed, unsigned), (-signed - 1, unsigned[::-1])], fhe.Configuration(fhe_simulation=True, fhe_execution=False)
    )
    assert np.array_equal(circuit.simulate(signed, unsigned), signed * unsigned)
    assert circuit.programmable_bootstrap_count == 2 * signed.size


def test_pbs_per_op_follow_the_counting_formula(cache):
    seq, hd = 4, 16
    rows = run(head(seq, hd), mode="compile", parameter_strategy="mono", isolated_ops=False)
    assert rows["total"]["status"] == "ok", rows["total"].get("error")
    pairs = seq * (seq + 1) // 2  # causal: the lower triangle only
    # qk: re-quantize q and k, square every entry of each, one square per needed (i, j, t)
    assert rows["qk_matmul"]["pbs"] == 4 * seq * hd + pairs * hd
    # av: re-quantize the weights and v, square them, one square per (i, j <= i, t)
    assert rows["av_matmul"]["pbs"] == 2 * pairs + 2 * seq * hd + pairs * hd
    assert rows["out_proj"]["pbs"] == seq * hd  # re-quantize the heads before the clear projection
    assert rows["total"]["pbs"] == rows["total"]["pbs_total"]
    assert rows["total"]["security_bits"] == 128 and rows["total"]["key_bytes"] > 0 and rows["total"]["ct_bytes"] > 0


def test_rotary_and_repeat_heads_cost_no_pbs_and_mean_what_torch_means(cache):
    """On narrow (re-quantized) heads: circuits without a lookup, and float64's values within the
    cos / sin tables' grid step. (Not simulated: with no PBS to size its parameters for, Concrete
    2.11 decrypts a product by clear integers off by one in a few percent of entries.)"""
    fhe = concrete_fhe()
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ops = QuantOps(QuantSettings(6, "none", 8), "clear", [[0.0, float(x.abs().max()), -np.inf]])
    q = ops.private(x)
    cos, sin = rope_tables(4, 8, 10000.0)
    rotary, repeat = (lambda t: ops.rotary(t, cos, sin)), (lambda t: ops.repeat_heads(t, 2))
    torch_ops, x_q = TorchOps(), ops.dequantize(q)
    for fn, want, bound in (
        (rotary, torch_ops.rotary(x_q, cos, sin), x.abs().max() / ops.qmax),
        (repeat, torch_ops.repeat_heads(x_q, 2), 0),
    ):
        out = fn(q)
        assert (ops.dequantize(out) - want).abs().max() <= bound
        circuit = fhe.Compiler(on_tracer(ops, q, fn), {"v": "encrypted"}).compile(
            [q.v, -q.v], fhe.Configuration(fhe_simulation=True, fhe_execution=False)
        )
        assert circuit.programmable_bootstrap_count == 0
        assert np.array_equal(circuit.graph(q.v), out.v)  # the traced graph, in the clear


def on_tracer(ops, q, fn):
    """`fn` of `q`'s structure on the circuit's input `v`, as the circuit's integers."""
    return lambda v: fn(ops.encrypted(q, v)).v


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_llama_rotary_and_shared_kv_heads_cost_the_requantization_of_their_inputs(cache, kv_heads):
    """Rotating and repeating cost nothing: rope pays the re-quantization of q and k, repeat_kv that
    of k and v on their own heads; the causal products as in `attention_head`, re-quantizing the
    rotated q, and k and v unless repeat_kv did."""
    seq, hd, heads = 4, 8, 2
    rows = run(llama(seq, n_kv_heads=kv_heads), mode="compile", parameter_strategy="mono", isolated_ops=False)
    assert rows["total"]["status"] == "ok", rows["total"].get("error")
    q, kv, pairs = heads * seq * hd, kv_heads * seq * hd, heads * seq * (seq + 1) // 2
    shared = kv_heads < heads
    assert rows["attn.rope"]["pbs"] == q + kv
    assert rows.get("attn.repeat_kv", {}).get("pbs") == (2 * kv if shared else None)
    requantized = q if shared else 2 * q  # the rotated q (and k), then every entry of each squared
    assert rows["attn.qk_matmul"]["pbs"] == requantized + 2 * q + pairs * hd
    assert rows["attn.av_matmul"]["pbs"] == 2 * pairs + (q if shared else 2 * q) + pairs * hd


@pytest.mark.parametrize(("silu", "kv_heads"), [("exact", 1), ("poly", 2), ("quad", 1), ("relu", 2)])
def test_llama_block_simulates_within_tolerance(cache, silu, kv_heads):
    """Every SiLU variant, with shared (grouped-query) and per-head K/V, in Concrete's simulation."""
    rows = run(llama(silu=silu, n_kv_heads=kv_heads), n_bits=5, rounding="exact", parameter_strategy="mono",
               isolated_ops=False)  # fmt: skip
    total = rows["total"]
    assert total["status"] == "ok", total.get("error")
    assert total["qclear_abs_error"] == 0  # the circuit computes the clear model's integers
    assert total["max_abs_error"] <= total["tolerance"]


def test_unfused_requantization_costs_one_lookup_per_accumulator_entry(cache):
    """fuse_requant=false re-quantizes each accumulator before the lookup that reads it: in the
    softmax, the shifted scores before exp, one per causal score. (The row sums' re-quantization
    before 1/x costs nothing: Concrete fuses two lookups itself when nothing sits between them.)"""
    seq = 4
    fused, unfused = (run(head(seq), mode="compile", parameter_strategy="mono", fuse_requant=f, isolated_ops=False)
                      for f in (True, False))  # fmt: skip
    pairs = seq * (seq + 1) // 2
    assert unfused["softmax"]["pbs"] - fused["softmax"]["pbs"] == pairs
    assert unfused["qk_matmul"]["pbs"] == fused["qk_matmul"]["pbs"]  # its lookups read narrow values already


def test_the_demo_port_costs_what_the_demo_computes(cache):
    """The public demo's head: requantization twice after the projection, Concrete's products (2 PBS
    per term) over every score, and a softmax of 7 lookups per score; ours costs under half."""
    seq, hd = 4, 16
    demo = run(head(seq, hd), scheme="demo", mode="compile", parameter_strategy="mono", isolated_ops=False)
    assert demo["total"]["status"] == "ok", demo["total"].get("error")
    assert demo["qkv_proj"]["pbs"] == 2 * 3 * seq * hd
    assert demo["qk_matmul"]["pbs"] == demo["av_matmul"]["pbs"] == 2 * seq * seq * hd
    assert demo["softmax"]["pbs"] == 7 * seq * seq


def test_at_the_demos_shape_ours_costs_at_most_half_the_pbs_at_better_accuracy(cache):
    """The issue's target, at the demo's head shape (seq 6, head_dim 64 of d_model 768, 4 bits)."""
    shape = {"name": "attention_head", "seq_len": 6, "d_model": 768, "n_heads": 12}
    cfg = {"mode": "compile", "parameter_strategy": "mono", "isolated_ops": False}  # mono: same counts, fast
    demo, ours = (run(shape, scheme=scheme, **cfg) for scheme in ("demo", "fused"))
    assert ours["total"]["status"] == demo["total"]["status"] == "ok", (
        ours["total"].get("error"),
        demo["total"].get("error"),
    )
    assert ours["total"]["pbs"] <= demo["total"]["pbs"] / 2
    assert ours["av_matmul"]["max_abs_error"] < demo["av_matmul"]["max_abs_error"]  # the head's output
    assert ours["total"]["max_abs_error"] < demo["total"]["max_abs_error"]  # after the projection


def test_a_cached_cell_is_not_recompiled(cache, monkeypatch):
    wl = Cell({}, head(), {}).make_workload()
    cfg = {"mode": "compile", "parameter_strategy": "mono", "rounding": "exact", "isolated_ops": False}
    first = ConcreteBackend(ConcreteConfig(**cfg))
    first.setup(wl, wl.weights())

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(tfhe_circuit, "compile_entry", no_compiling)
    second = ConcreteBackend(ConcreteConfig(**cfg))
    second.setup(wl, wl.weights())  # a new backend, as in another process: only the disk cache is shared
    assert not first.metrics()["cache_hit"] and second.metrics()["cache_hit"]
    assert second.per_tag == first.per_tag and second.metrics()["compile_s"] == first.metrics()["compile_s"]
    with pytest.raises(AssertionError, match="compiled again"):  # anything that shapes the circuit misses
        ConcreteBackend(ConcreteConfig(**cfg, n_bits=5)).setup(wl, wl.weights())


def test_isolated_ops_are_timed_as_their_own_circuits(cache):
    rows = run(head(), mode="compile", parameter_strategy="mono", rounding="exact")
    assert rows["total"]["status"] == "ok", rows["total"].get("error")
    for op in ("qkv_proj", "qk_matmul", "softmax", "av_matmul", "out_proj"):
        assert rows[op]["isolated"] and rows[op]["estimated"] and rows[op]["latency_s"] > 0
    circuit = rows["circuit"]
    assert not circuit.get("isolated") and circuit["latency_s"] == circuit["est_fhe_s"]
    assert rows["total"]["latency_s"] >= circuit["latency_s"]  # the circuit plus protect and reveal
    isolated = sum(rows[op]["latency_s"] for op in ("qk_matmul", "softmax", "av_matmul", "out_proj"))
    assert 0.5 < isolated / circuit["latency_s"] < 2  # the same lookups, cut at op boundaries


def test_isolated_ops_count_the_pbs_of_their_tag(cache):
    wl = Cell({}, head(), {}).make_workload()
    backend = ConcreteBackend(ConcreteConfig(mode="compile", parameter_strategy="mono", rounding="exact"))
    backend.setup(wl, wl.weights())
    for op, counts in backend.per_tag.items():
        program, _ = backend._compiled(backend.scheme.isolate(op), op)
        assert program.server.programmable_bootstrap_count(program.name) == counts["pbs"], op


def test_an_over_wide_circuit_names_the_op_and_the_fix(cache):
    total = run(head(4, 256), n_bits=8, rounding="none", mode="compile", isolated_ops=False)["total"]
    assert total["status"] == "error"
    assert "bit lookup" in total["error"] and "backend.rounding" in total["error"]


def test_keys_too_large_for_the_machine_are_refused_before_keygen(cache):
    total = run(head(2, 8), mode="execute", parameter_strategy="mono", rounding="exact", max_key_gb=0.01)["total"]
    assert total["status"] == "error"
    assert "backend.max_key_gb=0.01" in total["error"] and "backend.mode=simulate" in total["error"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("n_bits", 9), ("mode", "fast"), ("rounding_bits", 2), ("scheme", "zama"), ("rounding", "up")]
    + [("out_proj_bits", 3), ("out_proj_bits", 13)],
)
def test_bad_configs_are_refused_with_the_key_named(key, value):
    with pytest.raises(ConfigError, match=f"backend.{key}"):
        ConcreteBackend.validate(ConcreteConfig(**{key: value}))


@pytest.mark.parametrize("setting", [{"rounding": "exact"}, {"out_proj_bits": 8}, {"client_projection": True}])
def test_settings_of_our_scheme_are_refused_for_the_demo_port(setting):
    with pytest.raises(ConfigError, match="apply to scheme=fused, not to the demo's head"):
        ConcreteBackend.validate(ConcreteConfig(scheme="demo", **setting))


def test_approximate_rounding_is_refused_with_the_fix():
    """Concrete's approximate rounding is one step off on some entries, which a head amplifies."""
    with pytest.raises(ConfigError, match="backend.rounding=approximate is refused.*use backend.rounding=exact"):
        ConcreteBackend.validate(ConcreteConfig(rounding="approximate"))


def test_a_wider_output_projection_grid_costs_no_pbs(cache):
    """The head's output is the projection's accumulator, which no lookup reads: the simulated
    circuit computes the wider integers exactly, at the same PBS."""
    cfg = {"parameter_strategy": "mono", "rounding": "exact", "isolated_ops": False}
    base, wide = (run(head(6, 32), out_proj_bits=bits, **cfg)["total"] for bits in (None, 8))
    assert base["status"] == wide["status"] == "ok", wide.get("error")
    assert wide["pbs"] == base["pbs"] and wide["max_bit_width"] > base["max_bit_width"]
    assert wide["qclear_abs_error"] == 0


def test_client_projection_ends_the_circuit_at_the_heads_and_projects_them_in_float(cache):
    cfg = {"mode": "compile", "parameter_strategy": "mono", "rounding": "exact", "isolated_ops": False}
    server, client = (run(head(6, 32), client_projection=flag, **cfg) for flag in (False, True))
    assert client["total"]["status"] == "ok", client["total"].get("error")
    assert client["total"]["output_projection"] == "client" and server["total"]["output_projection"] == "server"
    assert client["total"]["pbs"] == server["total"]["pbs"] - server["out_proj"]["pbs"] > 0  # its re-quantization
    assert client["total"]["max_abs_error"] == client["out_proj"]["max_abs_error"] < 1  # projected on the client
    block = Cell({}, {"name": "block", "seq_len": 4, "d_model": 16, "n_heads": 2}, {}).make_workload()
    assert "attention_head" in ConcreteBackend(ConcreteConfig(client_projection=True)).why_not(block)


def test_the_demo_port_runs_only_the_demo_cell():
    backend = ConcreteBackend(ConcreteConfig(scheme="demo"))
    layernorm = Cell({}, {"name": "layernorm"}, {}).make_workload()
    assert "scheme=demo" in backend.why_not(layernorm)
    assert "scheme=demo" in backend.why_not(Cell({}, llama(), {}).make_workload())
    assert backend.why_not(Cell({}, head(), {}).make_workload()) is None


@pytest.mark.slow
def test_execution_matches_the_clear_model_and_the_cost_model(cache):
    """Real TFHE: keys, encryption, the run and decryption (about a minute)."""
    harness = asdict(HarnessConfig(warmup=1, repeats=2))
    backend = asdict(ConcreteConfig(mode="execute", rounding="exact", isolated_ops=False))
    rows = {r["op"]: r for r in run_cell(Cell(backend, head(2, 16), harness))}
    total = rows["total"]
    assert total["status"] == "ok", total.get("error")
    assert total["qclear_abs_error"] < 0.5  # p_error may flip a rare lookup; usually exactly 0
    assert not total["estimated"] and total["keygen_s"] > 0
    assert 0.5 < rows["circuit"]["latency_s"] / total["est_fhe_s"] < 2


def test_estimates_use_the_reference_machines_model_until_this_one_is_measured(tmp_path, monkeypatch):
    from backends.concrete import cost

    monkeypatch.setattr(cost, "CACHE", tmp_path / "tfhe-cost.json")
    cost.seconds_per_unit.cache_clear()
    try:
        model = cost.seconds_per_unit()  # nothing measured here: no calibration, the shipped model
        assert model["machine"].startswith("the reference machine (concrete-")
        assert cost.estimate(1e10) == pytest.approx(1e10 * model["seconds_per_unit"] + model["overhead_s"])
        assert not (tmp_path / "tfhe-cost.json").exists()
        mine = {"seconds_per_unit": 2e-10, "overhead_s": 0.5, "spread": 0.1}
        (tmp_path / "tfhe-cost.json").write_text(json.dumps({cost.machine_key(): mine}))
        cost.seconds_per_unit.cache_clear()
        assert cost.seconds_per_unit() == {**mine, "machine": "this machine"}
    finally:
        cost.seconds_per_unit.cache_clear()
