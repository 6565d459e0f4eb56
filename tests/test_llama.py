"""`llama_block`'s float64 reference against an independent Llama decoder layer written here:
Meta's rotary embedding on interleaved pairs (complex products), grouped-query attention by
repeating K/V heads, each variant by its formula."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import workloads
from workloads.base import ConfigError
from workloads.layernorm import rsqrt_coeffs
from workloads.llama import silu_coeffs

TOL = 1e-9


def make(**cfg):
    cls = workloads.get("llama_block")
    config = cls.Config(**cfg)
    cls.validate(config)
    return cls(config)


def interleaved(w, n_heads):
    """The columns of a q/k map in Meta's layout: within each head, rotate-half's dims i and
    i + hd/2 become the pair (2i, 2i + 1) that Meta's complex rotation turns."""
    d_in, width = w.shape
    hd = width // n_heads
    return w.reshape(d_in, n_heads, 2, hd // 2).transpose(2, 3).reshape(d_in, width)


def meta_rope(x, theta):
    """Meta's `apply_rotary_emb`: pairs as complex numbers times exp(i pos theta^(-2j/hd))."""
    heads, seq, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(seq, hd // 2, dtype=torch.float64), torch.outer(torch.arange(seq).double(), freqs))
    pairs = torch.view_as_complex(x.reshape(heads, seq, hd // 2, 2).contiguous())
    return torch.view_as_real(pairs * rot).reshape(heads, seq, hd)


def attention_weights(cfg, q, k):
    hd = q.shape[-1]
    s = torch.tril(q @ k.transpose(-2, -1) / math.sqrt(hd))
    keep = torch.tril(torch.ones_like(s))

    def normalised(e):
        e = e * keep
        return e / (e.sum(-1, keepdim=True) + cfg.norm_eps)

    return {
        "exact": lambda: torch.softmax(s + (1 - keep) * cfg.mask_value, -1),
        "power": lambda: normalised(s**cfg.power_p),
        "quad2": lambda: normalised((s + cfg.quad_c) ** 2),
        "relu": lambda: normalised(torch.relu(s)),
        "gaussian": lambda: keep * torch.exp(-(torch.cdist(q, k) ** 2) / (2 * cfg.gaussian_sigma**2 * math.sqrt(hd))),
    }[cfg.softmax]()


def inv_rms(cfg, ms):
    v = ms + cfg.eps
    if cfg.norm == "exact":
        return 1 / v.sqrt()
    y = torch.as_tensor(
        np.polynomial.polynomial.polyval(v.numpy(), rsqrt_coeffs(cfg.rsqrt_lo, cfg.rsqrt_hi, cfg.rsqrt_degree))
    )
    for _ in range(cfg.newton_steps):
        y = y * (3 - v * y * y) / 2
    return y


def gate(cfg, t):
    if cfg.silu == "exact":
        return F.silu(t)
    if cfg.silu == "relu":
        return torch.relu(t)
    if cfg.silu == "quad":  # MPCFormer's quad GELU at x / 1.702, times 1.702
        u = t / 1.702
        return 1.702 * (0.125 * u**2 + 0.25 * u + 0.5)
    return torch.as_tensor(np.polynomial.polynomial.polyval(t.numpy(), silu_coeffs(cfg.silu_range, cfg.silu_degree)))


def independent_layer(wl):
    cfg, x, w = wl.cfg, wl.inputs()["x"], wl.weights()
    (seq, d), n_kv = x.shape, wl.n_kv_heads

    def norm(h, name):
        return h * inv_rms(cfg, h.pow(2).mean(-1, keepdim=True)) * w[f"{name}.gamma"]

    def heads(h, w_map, n):
        return (h @ w_map).reshape(seq, n, -1).transpose(0, 1)

    a = norm(x, "rms1")
    q = meta_rope(heads(a, interleaved(w["attn.wq"], cfg.n_heads), cfg.n_heads), cfg.rope_theta)
    k = meta_rope(heads(a, interleaved(w["attn.wk"], n_kv), n_kv), cfg.rope_theta)
    v = heads(a, w["attn.wv"], n_kv)
    k, v = (t.repeat_interleave(cfg.n_heads // n_kv, dim=0) for t in (k, v))
    att = attention_weights(cfg, q, k) @ v  # Meta's layout permutes q and k alike: scores unchanged
    h = x + att.transpose(0, 1).reshape(seq, d) @ w["attn.wo"]
    m = norm(h, "rms2")
    return h + (gate(cfg, m @ w["mlp.w_gate"]) * (m @ w["mlp.w_up"])) @ w["mlp.w_down"]


SIZES = [(7, 32, 4, None), (6, 48, 4, 2), (9, 64, 8, 1), (5, 32, 2, 1)]


@pytest.mark.parametrize("seq_len,d_model,n_heads,n_kv_heads", SIZES)
def test_llama_block_matches_an_independent_llama_layer(seq_len, d_model, n_heads, n_kv_heads):
    wl = make(seq_len=seq_len, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads)
    out, per_op = wl.reference()
    assert out.shape == (seq_len, d_model)
    assert torch.allclose(out, independent_layer(wl), atol=TOL, rtol=0)
    assert ("attn.repeat_kv" in per_op) == (wl.n_kv_heads < n_heads)
    assert {"rms1.rsqrt", "attn.rope", "attn.softmax", "mlp.silu", "mlp.glu", "mlp.residual"} <= set(per_op)


VARIANTS = (
    [{"softmax": s} for s in workloads.get("llama_block").variants["softmax"][1:]]
    + [{"norm": "poly"}]
    + [{"silu": s} for s in ("poly", "quad", "relu")]
)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_every_variant_matches_its_formula_in_the_independent_layer(variant):
    wl = make(seq_len=6, d_model=32, n_heads=4, n_kv_heads=2, **variant)
    assert torch.allclose(wl.reference()[0], independent_layer(wl), atol=TOL, rtol=0)


@pytest.mark.parametrize(("silu", "bound"), [("poly", 0.02), ("quad", 1.2)])
def test_silu_stand_ins_approximate_silu_on_their_range(silu, bound):
    cfg = make(silu=silu).cfg
    t = torch.linspace(-cfg.silu_range, cfg.silu_range, 401, dtype=torch.float64)
    assert (gate(cfg, t) - F.silu(t)).abs().max() < bound


def test_default_d_ff_keeps_gpt2s_mlp_parameters():
    assert make(d_model=768, n_heads=12).d_ff == 2048  # 3 x 768 x 2048 = 2 x 768 x 3072
    assert make(d_model=64).d_ff == 176  # 8/3 * 64, up to a multiple of 16


@pytest.mark.parametrize(
    "cfg,needle",
    [
        (
            {"n_heads": 4, "n_kv_heads": 3},
            "workload.n_kv_heads=3 must divide workload.n_heads=4; choose among [1, 2, 4]",
        ),
        ({"d_model": 12, "n_heads": 4}, "head_dim"),
        ({"silu": "gelu"}, "workload.silu=gelu is not a variant of llama_block; allowed: exact, poly, quad, relu"),
        ({"rope_theta": 0.5}, "rope_theta > 1"),
    ],
)
def test_bad_llama_configs_are_refused_with_the_key_named(cfg, needle):
    cls = workloads.get("llama_block")
    with pytest.raises(ConfigError) as err:
        cls.validate(cls.Config(**cfg))
    assert needle in str(err.value) and "\n" not in str(err.value)
