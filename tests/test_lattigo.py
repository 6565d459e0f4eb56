"""The lattigo (CKKS with bootstrapping) backend: conformance in counting mode, executed cells on
a small (insecure, allowed) ring against float64, the dry run's counts equal to the executed ones,
tiled packing of cells wider than one ciphertext, and the errors bad parameters give."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from test_backend_conformance import BackendConformance

import backends
from bench.cells import Cell, run_cell
from bench.measure import HarnessConfig
from workloads.base import ConfigError

if backends.get("lattigo").unavailable():
    pytest.skip(backends.get("lattigo").unavailable(), allow_module_level=True)

from backends.ckks.engine import DryEngine  # noqa: E402
from backends.ckks.ops import CkksOps  # noqa: E402
from backends.ckks.tensor import Packer  # noqa: E402
from backends.lattigo import LattigoConfig  # noqa: E402
from backends.lattigo import params as lp  # noqa: E402
from backends.lattigo.engine import LattigoEngine  # noqa: E402
from workloads.llama import rope_tables  # noqa: E402
from workloads.ops import TorchOps  # noqa: E402

QUICK = HarnessConfig(warmup=0, repeats=1)
SMALL = {"log_n": 13, "allow_insecure": True}  # 4,096 slots: bootstrapping keys in seconds, not minutes
HEAD = {"name": "attention_head", "seq_len": 4, "d_model": 16}
COUNTED = ("bootstraps", "depth", "rotations", "comm_bytes")


class TestLattigoCounting(BackendConformance):
    """Every workload and variant through the dry run (the numpy twin) and the cost model."""

    backend = "lattigo"
    config = {**SMALL, "mode": "count"}
    # one head's (seq, head_dim) operands must fit one ciphertext: 256 rows of 256 do not in 2^12 slots
    extra_workloads = [
        {"name": "attention_head", "seq_len": 256, "d_model": 16},
        # grouped-query attention: 2 K/V heads for 4 query heads
        {"name": "llama_block", "seq_len": 4, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "d_ff": 32, "silu": "poly"},
    ]


def run(workload: dict, **backend) -> list[dict]:
    """One cell as the sweep runs it: an exception becomes an `error` row."""
    return run_cell(Cell(asdict(LattigoConfig(**backend)), workload, asdict(QUICK)))


def by_op(rows):
    return {r["op"]: r for r in rows}


@pytest.fixture(scope="module")
def executed_head():
    return run({**HEAD, "softmax": "exact"}, **SMALL)


def test_executed_head_decrypts_within_tolerance_and_bootstraps(executed_head):
    total = executed_head[-1]
    assert total["status"] == "ok", total.get("error")
    assert total["max_abs_error"] < 5e-3
    assert total["bootstraps"] >= 1 and total["rounds"] == 1  # the server refreshes: one round trip
    assert total["insecure"] and total["security_bits"] == 0


@pytest.mark.parametrize(
    "workload",
    [
        {"name": "layernorm", "seq_len": 4, "d_model": 16},
        {"name": "block", "seq_len": 4, "d_model": 16, "n_heads": 2, "d_ff": 32, "softmax": "gaussian", "gelu": "poly"},
    ],
)
def test_executed_workloads_decrypt_within_tolerance(workload):
    total = run(workload, **SMALL)[-1]
    assert total["status"] == "ok", total.get("error")
    assert total["max_abs_error"] < 5e-3


def test_dry_run_predicts_the_executed_counts(executed_head):
    counted = by_op(run({**HEAD, "softmax": "exact"}, **SMALL, mode="count"))
    for op, row in by_op(executed_head).items():
        assert {c: row[c] for c in COUNTED} == {c: counted[op][c] for c in COUNTED}, op
    assert counted["total"]["estimated"] and not by_op(executed_head)["total"]["estimated"]


def test_cost_model_prices_every_op(executed_head):
    rows = by_op(executed_head)
    ops = [op for op in rows if op != "total"]
    assert all(rows[op]["est_he_s"] > 0 for op in ops)
    assert rows["total"]["est_he_s"] == pytest.approx(sum(rows[op]["est_he_s"] for op in ops))


def test_rotary_and_repeated_heads_execute_as_the_dry_run_counts():
    """Llama's head ops on the library (no bootstrapper: a fresh ciphertext has the levels) equal
    float64, with the dry twin's work, primitive by primitive. A whole executed llama_block takes
    as long as `block` above (~80 s here): the cells run in counting mode instead."""
    cfg = LattigoConfig(**SMALL)
    params = lp.make(cfg, 1 << (cfg.log_n - 1))
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cos, sin = rope_tables(4, 8, 10000.0)

    def heads(engine):
        packer = Packer(engine, 4, 128)
        ops = CkksOps(packer, cfg, (0.25, 32.0))
        k = ops.split_heads(packer.encrypt(x.numpy()), 4)
        return packer.decrypt(ops.repeat_heads(ops.rotary(k, cos, sin), 2)), engine.stats

    expected, planned = heads(DryEngine(params, bootstrap=True))
    got, executed = heads(LattigoEngine(params, set(planned.steps)))
    torch_ops = TorchOps()
    reference = torch_ops.repeat_heads(torch_ops.rotary(torch_ops.split_heads(x, 4), cos, sin), 2)
    assert np.allclose(expected, reference.numpy()) and np.abs(got - expected).max() < 1e-5
    assert (executed.rotations, executed.depth, executed.work) == (planned.rotations, planned.depth, planned.work)


@pytest.mark.parametrize("softmax", ["exact", "gaussian"])
def test_cells_wider_than_a_ciphertext_tile_and_match_float64(softmax):
    """seq 32 x block 128 needs 4,096 slots; 2^12 gives 2,048: x tiles over two ciphertexts, the
    head's q, k, v are compacted into one for the products, then tiled back for out_proj."""
    rows = by_op(run({**HEAD, "seq_len": 32, "d_model": 64, "softmax": softmax}, log_n=12, allow_insecure=True,
                     mode="count"))  # fmt: skip
    assert rows["total"]["status"] == "ok", rows["total"].get("error")
    assert rows["total"]["max_abs_error"] < 1e-3


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"log_n": 13}, "allow_insecure=true"),
        ({"log_q": [60, 40, 40], "allow_insecure": True}, "use >= 4 primes"),
        ({"log_n": 17}, "backend.log_n=17"),
        ({"exp_lo": -1000.0}, "raise backend.exp_degree"),
        ({"rsqrt_lo": 0.001, "rsqrt_hi": 100.0}, "raise backend.rsqrt_degree"),
        ({"mode": "simulate"}, "backend.mode=simulate"),
    ],
)
def test_bad_parameters_give_one_line_errors_naming_the_fix(override, needle):
    with pytest.raises(ConfigError) as err:
        backends.get("lattigo").validate(LattigoConfig(**override))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_memory_guard_refuses_before_keygen():
    total = run(HEAD, **SMALL, max_memory_gb=0.01)[-1]
    assert total["status"] == "error" and "backend.max_memory_gb" in total["error"]


@pytest.mark.slow
def test_default_parameters_bootstrap_and_the_cost_model_holds():
    """Lattigo's documented 128-bit set (keys: ~1.5 minutes): real bootstraps, a secure row, and
    the cost model (calibrated here at the first executed cell) within 25% of the executed cell."""
    rows = by_op(run({"name": "layernorm", "seq_len": 8, "d_model": 64}))
    total = rows["total"]
    assert total["status"] == "ok", total.get("error")
    assert total["security_bits"] == 128 and not total["insecure"] and total["bootstraps"] >= 1
    assert total["max_abs_error"] < 5e-3
    assert abs(total["est_he_s"] - total["latency_s"]) <= 0.25 * total["latency_s"]
