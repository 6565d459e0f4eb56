"""`llama_block`: a Llama decoder layer (pre-RMSNorm, rotary positions, grouped-query attention,
SwiGLU MLP), no biases.

x + attn(rms1(x)) = h, then h + down(silu(gate(rms2(h))) * up(rms2(h))). Ops: `rms1.*` and
`rms2.*` (`mean_square`, `rsqrt`, `scale`: RMSNorm has no mean to remove), `attn.qkv_proj` (q to
n_heads heads, k and v to `n_kv_heads`), `attn.rope` (rotary embedding of q and k, base
`rope_theta`, as in the Llama papers), `attn.repeat_kv` (each K/V head serves n_heads / n_kv_heads
query heads; absent when they are equal), `attn.qk_matmul`, `attn.softmax`, `attn.av_matmul`,
`attn.out_proj`, `attn.residual`, `mlp.gate_up` (both maps, one product), `mlp.silu`, `mlp.glu` (the
private x private gate product), `mlp.down`, `mlp.residual`.

Variants: `softmax` as in `attention_head`; `norm` as in `layernorm` (exact rsqrt, or the
polynomial + Newton form); `silu`: `exact`, `poly` (degree `silu_degree` least-squares fit on
[-silu_range, silu_range]), `quad` (MPCFormer's quadratic GELU 0.125 x^2 + 0.25 x + 0.5 carried to
SiLU by silu(x) ~ 1.702 gelu(x / 1.702)), `relu` (ReLU in place of SiLU, Mirzadeh et al. 2023).
`d_ff` defaults to Llama's 8/3 d_model (rounded up to a multiple of 16): the SwiGLU MLP then has
the parameters of GPT-2's 4 d_model one (2048 at d_model 768).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from workloads.approx import activation, chebyshev_fit
from workloads.attention import SOFTMAX_VARIANTS, AttentionConfig, attend, validate_attention
from workloads.base import ConfigError, Recorder, Workload, divisors, scoped
from workloads.layernorm import NORM_VARIANTS, LayerNormConfig, inverse_sqrt, validate_norm
from workloads.ops import Ops

SILU_VARIANTS = ("exact", "poly", "quad", "relu")
GELU_SIGMOID = 1.702  # gelu(x) ~ x sigmoid(1.702 x)
QUAD_SILU = (0.5 * GELU_SIGMOID, 0.25, 0.125 / GELU_SIGMOID)  # 1.702 * MPCFormer's quad(x / 1.702)


@dataclass
class LlamaConfig(AttentionConfig, LayerNormConfig):
    name: str = "llama_block"
    n_kv_heads: int | None = None  # None: n_heads (multi-head attention)
    silu: str = "exact"
    silu_range: float = 4.0
    silu_degree: int = 6
    rope_theta: float = 10000.0


@functools.cache
def silu_coeffs(bound: float, degree: int) -> list[float]:
    return chebyshev_fit(lambda t: t / (1 + np.exp(-t)), -bound, bound, degree)


def silu(ops: Ops, cfg: LlamaConfig, x):
    return activation(ops, cfg.silu, x, ops.silu, lambda: silu_coeffs(cfg.silu_range, cfg.silu_degree), QUAD_SILU)


def rms_norm(ops: Ops, rec: Recorder, cfg: LlamaConfig, x, gamma):
    mean_square = rec("mean_square", lambda: ops.mul(ops.sum(ops.square(x)), 1 / cfg.d_model))
    inv_rms = rec("rsqrt", lambda: inverse_sqrt(ops, cfg, ops.add(mean_square, cfg.eps)))
    return rec("scale", lambda: ops.mul(ops.mul(x, inv_rms), gamma))


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (seq_len, head_dim) of the rotary embedding, halves repeated (Llama's layout)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class LlamaBlock(Workload):
    name = "llama_block"
    Config = LlamaConfig
    variants = {"softmax": SOFTMAX_VARIANTS, "norm": NORM_VARIANTS, "silu": SILU_VARIANTS}
    each_fixed = ("softmax", "norm")  # `attention_head`, `layernorm` and `block` sweep those
    uses_heads = True

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        validate_attention(cfg)
        validate_norm(cfg)
        kv = cfg.n_kv_heads or cfg.n_heads
        if kv <= 0 or cfg.n_heads % kv:
            raise ConfigError(
                f"workload.n_kv_heads={cfg.n_kv_heads} must divide workload.n_heads={cfg.n_heads}; "
                f"choose among {divisors(cfg.n_heads)}"
            )
        if (cfg.d_model // cfg.n_heads) % 2:
            raise ConfigError(
                f"workload.d_model / n_heads = {cfg.d_model // cfg.n_heads} is odd; rotary embeddings "
                "rotate pairs: choose an even head_dim"
            )
        if cfg.silu_range <= 0 or cfg.silu_degree < 1 or cfg.rope_theta <= 1:
            raise ConfigError("workload.silu_range must be positive, silu_degree >= 1 and rope_theta > 1")

    @property
    def d_ff(self) -> int:
        return self.cfg.d_ff or 16 * math.ceil(8 * self.cfg.d_model / 3 / 16)

    @property
    def n_kv_heads(self) -> int:
        return self.cfg.n_kv_heads or self.cfg.n_heads

    def describe(self):
        return {**super().describe(), "n_kv_heads": self.n_kv_heads}

    def inputs(self):
        return {"x": self.randn(self.generator(0), self.cfg.seq_len, self.cfg.d_model)}

    def weights(self):
        gen, d, f, kv_width = self.generator(1), self.cfg.d_model, self.d_ff, self.n_kv_heads * self.head_dim
        w = {}
        for n, width in (("wq", d), ("wk", kv_width), ("wv", kv_width)):
            w[f"attn.{n}"] = self.randn(gen, d, width, std=d**-0.5)
        w["attn.wo"] = self.randn(gen, d, d, std=d**-0.5)
        for norm in ("rms1", "rms2"):
            w[f"{norm}.gamma"] = 1 + self.randn(gen, d, std=0.1)
        w["mlp.w_gate"], w["mlp.w_up"] = (self.randn(gen, d, f, std=d**-0.5) for _ in range(2))
        w["mlp.w_down"] = self.randn(gen, f, d, std=f**-0.5)
        return w

    def forward(self, ops, rec, x, w):
        cfg, x = self.cfg, x["x"]
        a_in = rms_norm(ops, scoped(rec, "rms1"), cfg, x, w["rms1.gamma"])
        a_out = self.attention(ops, scoped(rec, "attn"), a_in, w)
        h = rec("attn.residual", lambda: ops.add(x, a_out))
        m_in = rms_norm(ops, scoped(rec, "rms2"), cfg, h, w["rms2.gamma"])
        gate, up = rec("mlp.gate_up", lambda: ops.project(m_in, [w["mlp.w_gate"], w["mlp.w_up"]], [None, None]))
        act = rec("mlp.silu", lambda: silu(ops, cfg, gate))
        glu = rec("mlp.glu", lambda: ops.mul(act, up))
        m_out = rec("mlp.down", lambda: ops.linear(glu, w["mlp.w_down"]))
        return rec("mlp.residual", lambda: ops.add(h, m_out))

    def attention(self, ops: Ops, rec: Recorder, x, w):
        cfg, kv, hd = self.cfg, self.n_kv_heads, self.head_dim

        def qkv():
            q, k, v = ops.project(x, [w["attn.wq"], w["attn.wk"], w["attn.wv"]], [None] * 3)
            return ops.split_heads(q, cfg.n_heads), ops.split_heads(k, kv), ops.split_heads(v, kv)

        q, k, v = rec("qkv_proj", qkv)
        cos, sin = rope_tables(cfg.seq_len, hd, cfg.rope_theta)
        q, k = rec("rope", lambda: (ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)))
        if kv < cfg.n_heads:
            times = cfg.n_heads // kv
            k, v = rec("repeat_kv", lambda: (ops.repeat_heads(k, times), ops.repeat_heads(v, times)))
        heads = attend(ops, rec, cfg, q, k, v, hd)
        return rec("out_proj", lambda: ops.linear(ops.merge_heads(heads), w["attn.wo"]))
