"""`finetune`: the explicit backward against torch autograd, what trains, validation, and on
crypten the step's accuracy and the exact Beaver bytes a public base saves."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from backends.crypten import CryptenBackend, CryptenConfig
from bench.cells import Cell, measure_job
from bench.measure import HarnessConfig
from workloads.base import ConfigError
from workloads.block import Block
from workloads.finetune import LORA_TARGETS, Finetune

TOL = 1e-9  # float64 against float64: only rounding differs
MOVES = 1e-6  # a weight the step trains moves by more than this (measured >= 1.6e-3 at these sizes)
ELEMENT = 8  # bytes per CrypTen ring element
SIZES = {"seq_len": 4, "d_model": 16, "n_heads": 2, "d_ff": 32, "lora_rank": 2}

needs_crypten = pytest.mark.skipif(CryptenBackend.unavailable() is not None, reason="crypten is not installed")


def make(**cfg) -> Finetune:
    config = Finetune.Config(**{**SIZES, **cfg})
    Finetune.validate(config)
    return Finetune(config)


def variants() -> list:
    """Every (adapter, base) that validates, each with the default of the other switches and then
    each other value of one switch at a time."""
    defaults = Finetune.Config()
    others = [(s, v) for s, vals in Finetune.variants.items() if s not in ("adapter", "base") for v in vals]
    one_switch = [{}] + [{s: v} for s, v in others if v != getattr(defaults, s)]
    pairs = [("lora", "private"), ("lora", "public"), ("full", "private")]  # full + public is refused
    return [
        pytest.param({"adapter": a, "base": b, **sw}, id="-".join([a, b, *(f"{k}={v}" for k, v in sw.items())]))
        for a, b in pairs
        for sw in one_switch
    ]


def movement(new: dict, old: dict) -> dict[str, float]:
    return {k: (new[k].reshape(-1) - old[k].reshape(-1)).abs().max().item() for k in new}


# --- the explicit backward -------------------------------------------------------------------


@pytest.mark.parametrize("variant", variants())
def test_explicit_backward_equals_autograd_and_moves_every_trained_weight(variant):
    """The explicit step equals autograd's, weight by weight, and is a real step: every trained
    weight moves, except `attn.bk` under exact softmax with adapter=full. There the gradient is
    zero but for the additive causal mask: q . bk shifts every unmasked score of a row alike
    (softmax is shift-invariant) while the masked ones stay at `mask_value`, so what is left is of
    order exp(mask_value) = 1e-13 relative, in both computations."""
    wl = make(**variant)
    explicit, per_op = wl.reference()
    autograd, before = wl.autograd_step(), wl.weights()
    assert sorted(explicit) == sorted(autograd) == wl.trainable()
    for k in explicit:
        assert explicit[k].numel() == autograd[k].numel() == before[k].numel(), k
        diff = (explicit[k].reshape(-1) - autograd[k].reshape(-1)).abs().max().item()
        assert diff <= TOL, (k, diff)

    moved, moved_by_autograd = movement(explicit, before), movement(autograd, before)
    flat = {"attn.bk"} if wl.cfg.adapter == "full" and wl.cfg.softmax == "exact" else set()
    for k in explicit:
        if k in flat:
            assert moved[k] < 1e-12 and moved_by_autograd[k] < 1e-12, (k, moved[k], moved_by_autograd[k])
        else:
            assert moved[k] > MOVES and moved_by_autograd[k] > MOVES, (k, moved[k], moved_by_autograd[k])
    assert sum(moved.values()) > 0

    y, out = wl.inputs()["y"], per_op["mlp.residual"]
    assert torch.isclose(per_op["loss"][1], F.mse_loss(out, y), rtol=0, atol=TOL)
    if wl.cfg.adapter == "full":  # the forward is `block`'s
        assert torch.allclose(out, Block(wl.cfg).reference()[0], rtol=0, atol=TOL)


# --- what trains -----------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["private", "public"])
def test_lora_update_touches_only_the_adapters(base):
    wl = make(adapter="lora", base=base)
    out, _ = wl.reference()
    adapters = {f"lora.{m}{n}" for m in "ab" for n in LORA_TARGETS}
    assert set(out) == adapters == {k for k in wl.weights() if k.startswith("lora.")}
    block = Block(wl.cfg).weights()  # the frozen base is exactly `block`'s weights
    assert {k for k in wl.weights() if not k.startswith("lora.")} == set(block)
    assert all(torch.equal(wl.weights()[k], v) for k, v in block.items())
    assert wl.public_weights() == (set(block) if base == "public" else set())


def test_full_update_trains_every_block_weight_and_has_no_adapters():
    wl = make(adapter="full")
    out, _ = wl.reference()
    assert not any(k.startswith("lora.") for k in [*wl.weights(), *out])
    assert set(out) == set(wl.weights()) == set(Block(wl.cfg).weights())
    assert wl.public_weights() == set()


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"base": "public", "adapter": "full"}, "workload.base=public needs workload.adapter=lora"),
        ({"lora_rank": 32}, "workload.lora_rank=32 exceeds workload.d_model=16"),
        ({"adapter": "qlora"}, "workload.adapter=qlora is not a variant of finetune; allowed: lora, full"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(cfg, needle):
    with pytest.raises(ConfigError) as err:
        Finetune.validate(Finetune.Config(**{**SIZES, **cfg}))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_any_head_merge_that_block_accepts_is_accepted():
    cfg = Finetune.Config(**{**SIZES, "n_heads": 4, "head_merge": 4})
    Block.validate(cfg)
    Finetune.validate(cfg)
    wl = Finetune(cfg)
    out, _ = wl.reference()
    assert all(torch.allclose(out[k].reshape(-1), v.reshape(-1), atol=1e-9) for k, v in wl.autograd_step().items())


# --- crypten ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crypten_cell():
    """Rows (by op) of a crypten finetune cell at SIZES, each variant run once per module."""
    config, harness, done = CryptenConfig(), asdict(HarnessConfig(warmup=0, repeats=1)), {}

    def run(**variant) -> dict[str, dict]:
        key = tuple(sorted(variant.items()))
        if key not in done:
            cell = Cell(asdict(config), {"name": "finetune", **SIZES, **variant}, harness)
            rows = CryptenBackend.execute(config, functools.partial(measure_job, cell))
            done[key] = {row["op"]: row for row in rows}
        return done[key]

    return run


@needs_crypten
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_crypten_step_is_within_tolerance(crypten_cell, adapter):
    rows = crypten_cell(adapter=adapter)
    per_op = make(adapter=adapter).reference()[1]
    assert set(rows) == {"protect", *per_op, "reveal", "total"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert math.isfinite(row["max_abs_error"]) and row["max_abs_error"] <= row["tolerance"], row
    assert rows["total"]["accurate"] is True
    assert ("grad.ln1" in rows) == (adapter == "full")  # with adapters nothing below q, k, v trains


def beaver(*operands: int) -> int:
    """Elements each party opens for one Beaver product: eps = x - a and delta = y - b, each
    operand at its own size (a broadcast operand is not expanded)."""
    return sum(operands)


@needs_crypten
def test_crypten_public_base_saves_the_beaver_bytes_of_its_products(crypten_cell):
    """adapter=lora, base=public against base=private, everything else alike (2 parties, TFP).

    A private (m, k) @ (k, n) product opens eps (m k) and delta (k n): each party sends
    8 (m k + k n) bytes in one round; an elementwise product of x with a broadcast y opens x and y
    at their own sizes (CrypTen's Beaver triple has the operands' shapes): 8 (|x| + |y|). With a
    public right operand the product is local: 0 bytes, 0 rounds. With s = seq_len, d = d_model,
    f = d_ff, per party, the public base saves:
      ln1.scale_shift, ln2.scale_shift   normed (s, d) * gamma (d,)            8 (s d + d)
      attn.qkv_proj   a_in (s, d) @ [Wq Wk Wv] (d, 3d), one batched product     8 (s d + 3 d^2)
      attn.out_proj   heads (s, d) @ Wo (d, d)                                 8 (s d + d^2)
      mlp.fc1         m_in (s, d) @ W1 (d, f)                                  8 (s d + d f)
      mlp.fc2         act (s, f) @ W2 (f, d)                                   8 (s f + f d)
      grad.mlp.fc2    d_out (s, d) @ W2^T (d, f)                               8 (s d + d f)
      grad.mlp.fc1    d_hidden (s, f) @ W1^T (f, d)                            8 (s f + f d)
      grad.ln2        dy (s, d) * gamma (d,)                                   8 (s d + d)
      grad.attn.out_proj  d_h (s, d) @ Wo^T (d, d)                             8 (s d + d^2)
    and one round each (each was one Beaver round); both parties send alike, so `comm_bytes`
    saves twice that. Every other op saves nothing: the adapters' products (lora_down, the B
    products, grad.attn.qkv_proj) stay private x private, and with adapters there is no
    grad.ln1 (nothing below q, k, v trains)."""
    s, d, f = SIZES["seq_len"], SIZES["d_model"], SIZES["d_ff"]
    expected = {
        "ln1.scale_shift": beaver(s * d, d),
        "attn.qkv_proj": beaver(s * d, d * 3 * d),
        "attn.out_proj": beaver(s * d, d * d),
        "ln2.scale_shift": beaver(s * d, d),
        "mlp.fc1": beaver(s * d, d * f),
        "mlp.fc2": beaver(s * f, f * d),
        "grad.mlp.fc2": beaver(s * d, d * f),
        "grad.mlp.fc1": beaver(s * f, f * d),
        "grad.ln2": beaver(s * d, d),
        "grad.attn.out_proj": beaver(s * d, d * d),
    }
    private, public = crypten_cell(adapter="lora", base="private"), crypten_cell(adapter="lora", base="public")
    assert set(private) == set(public)
    for rows in (private, public):
        assert rows["total"]["status"] == "ok" and rows["total"]["accurate"], rows["total"]

    def saved(op, column):
        return private[op].get(column, 0) - public[op].get(column, 0)

    got = {op: (saved(op, "comm_bytes_p0"), saved(op, "comm_bytes"), saved(op, "rounds")) for op in private}
    want = {op: (ELEMENT * n, 2 * ELEMENT * n, 1) for op, n in expected.items()}
    want |= {op: (0, 0, 0) for op in private if op not in expected and op != "total"}
    total = sum(expected.values())
    want["total"] = (ELEMENT * total, 2 * ELEMENT * total, len(expected))
    assert got == want
    for op in ("attn.out_proj", "mlp.fc1", "mlp.fc2", "grad.mlp.fc2", "grad.mlp.fc1", "grad.attn.out_proj"):
        assert public[op]["comm_bytes"] == public[op]["rounds"] == 0, public[op]  # nothing private x private left
