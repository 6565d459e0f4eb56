"""The concrete (TFHE) backend: the quantized-clear model against float64, the products it counts,
PBS per op against the counting formula, the circuit cache, and the over-wide circuit message."""

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

pytest.importorskip("concrete.fhe")

from backends._tfhe_quant import QuantOps, QuantSettings  # noqa: E402
from backends.concrete import ConcreteBackend, ConcreteConfig  # noqa: E402

QUICK = HarnessConfig(warmup=0, repeats=1)


class TestConcrete(BackendConformance):
    backend = "concrete"
    config = {"parameter_strategy": "mono", "n_bits": 6, "rounding": "exact"}  # mono: multi's counts, compiles fast
    round_trip_workload = "attention_head"


def run(workload: dict, **backend) -> list[dict]:
    return run_cell(Cell(asdict(ConcreteConfig(**backend)), workload, asdict(QUICK)))


def head(seq: int = 4, d: int = 16, **kw) -> dict:
    return {"name": "attention_head", "seq_len": seq, "d_model": d, "n_heads": 1, **kw}


def clear_error(n_bits: int) -> float:
    """Max abs error of the quantized-clear head against float64 (no Concrete compilation)."""
    wl = workloads.REGISTRY["attention_head"](AttentionConfig(seq_len=6, d_model=32, n_heads=1))
    backend = ConcreteBackend(ConcreteConfig(n_bits=n_bits, rounding="none"))
    backend.workload, backend.weights = wl, wl.weights()
    calib = QuantOps(backend.settings, "calibrate")
    backend._forward(calib, wl.inputs(), wl.weights())
    clear = QuantOps(backend.settings, "clear", calib.ranges)
    out = clear.dequantize(backend._forward(clear, wl.inputs(), wl.weights()))
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


def test_pbs_per_op_follow_the_counting_formula():
    seq, hd = 4, 16
    rows = {r["op"]: r for r in run(head(seq, hd), mode="compile", parameter_strategy="mono")}
    assert rows["total"]["status"] == "ok", rows["total"].get("error")
    pairs = seq * (seq + 1) // 2  # causal: the lower triangle only
    # qk: re-quantize q and k, square every entry of each, one square per needed (i, j, t)
    assert rows["qk_matmul"]["pbs"] == 4 * seq * hd + pairs * hd
    # av: re-quantize the weights and v, square them, one square per (i, j <= i, t)
    assert rows["av_matmul"]["pbs"] == 2 * pairs + 2 * seq * hd + pairs * hd
    assert rows["out_proj"]["pbs"] == seq * hd  # re-quantize the heads before the clear projection
    assert rows["total"]["pbs"] == rows["total"]["pbs_total"]
    assert rows["total"]["security_bits"] == 128 and rows["total"]["key_bytes"] > 0 and rows["total"]["ct_bytes"] > 0


def test_a_cached_cell_is_not_recompiled():
    wl = Cell({}, head(seed=11), {}).make_workload()  # a seed no other test compiles in this process
    cfg = {"mode": "compile", "parameter_strategy": "mono", "rounding": "exact"}
    first, second = (ConcreteBackend(ConcreteConfig(**cfg)) for _ in range(2))
    first.setup(wl, wl.weights())
    second.setup(wl, wl.weights())
    assert not first.metrics()["cache_hit"] and second.metrics()["cache_hit"]
    assert second.circuit is first.circuit and second.metrics()["compile_s"] < first.metrics()["compile_s"] / 10
    other = ConcreteBackend(ConcreteConfig(**cfg, n_bits=5))
    other.setup(wl, wl.weights())
    assert not other.metrics()["cache_hit"]


def test_an_over_wide_circuit_names_the_op_and_the_fix():
    total = run(head(4, 256), n_bits=8, rounding="none", mode="compile")[-1]
    assert total["status"] == "error"
    assert "bit lookup" in total["error"] and "backend.rounding" in total["error"]


@pytest.mark.parametrize(("key", "value"), [("n_bits", 9), ("mode", "fast"), ("rounding_bits", 2)])
def test_bad_configs_are_refused_with_the_key_named(key, value):
    with pytest.raises(ConfigError, match=f"backend.{key}"):
        ConcreteBackend.validate(ConcreteConfig(**{key: value}))
