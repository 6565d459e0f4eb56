"""`block`: a GPT-2 (pre-LayerNorm) transformer block.

x + attn(ln1(x)) = h, then h + mlp(ln2(h)), with mlp = fc2(gelu(fc1(.))), width `d_ff`.
Op names carry their part: `ln1.*`, `attn.*`, `ln2.*`, `mlp.*`; the residual additions are
`attn.residual` and `mlp.residual`. Variant `gelu`: `exact` (erf), `poly` (degree `gelu_degree`
least-squares fit on [-gelu_range, gelu_range]; max error 0.04 with the defaults), `quad`
(MPCFormer: 0.125 x^2 + 0.25 x + 0.5), `relu`. `softmax` and `norm` are as in `attention_head`
and `layernorm`. Variant `head_merge` (Marill, arXiv 2408.03561): attention runs with
n_heads / head_merge heads, each head_merge times wider (same weights and width), so the softmax
covers head_merge times fewer (seq x seq) rows; 1 is the standard block. Any divisor of n_heads
is accepted; the sweep's `each` mode tries the values in `variants`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import erf

from workloads.approx import activation, chebyshev_fit
from workloads.attention import SOFTMAX_VARIANTS, AttentionConfig, attention, attention_weights_init, validate_attention
from workloads.base import ConfigError, Recorder, Workload, divisors, scoped
from workloads.layernorm import NORM_VARIANTS, LayerNormConfig, layer_norm, validate_norm
from workloads.ops import Ops

GELU_VARIANTS = ("exact", "poly", "quad", "relu")
QUAD_GELU = (0.5, 0.25, 0.125)


@dataclass
class BlockConfig(AttentionConfig, LayerNormConfig):
    name: str = "block"
    gelu: str = "exact"
    gelu_range: float = 4.0
    gelu_degree: int = 6
    head_merge: int = 1


@functools.cache
def gelu_coeffs(bound: float, degree: int) -> list[float]:
    return chebyshev_fit(lambda t: 0.5 * t * (1 + erf(t / np.sqrt(2))), -bound, bound, degree)


def gelu(ops: Ops, cfg: BlockConfig, x):
    return activation(ops, cfg.gelu, x, ops.gelu, lambda: gelu_coeffs(cfg.gelu_range, cfg.gelu_degree), QUAD_GELU)


class Block(Workload):
    name = "block"
    Config = BlockConfig
    variants = {"softmax": SOFTMAX_VARIANTS, "norm": NORM_VARIANTS, "gelu": GELU_VARIANTS, "head_merge": (1, 2)}
    each_fixed = ("softmax",)  # `attention_head` sweeps it
    uses_heads = True

    @classmethod
    def validate(cls, cfg):
        if not isinstance(cfg.head_merge, int) or cfg.head_merge < 1 or cfg.n_heads % cfg.head_merge:
            raise ConfigError(
                f"workload.head_merge={cfg.head_merge} must divide workload.n_heads={cfg.n_heads}; "
                f"choose among {divisors(cfg.n_heads)}"
            )
        super().validate(replace(cfg, head_merge=1))  # any divisor, not only the swept values
        validate_attention(cfg)
        validate_norm(cfg)
        if cfg.gelu_range <= 0 or cfg.gelu_degree < 1:
            raise ConfigError("workload.gelu_range must be positive and workload.gelu_degree >= 1")

    def inputs(self):
        return {"x": self.randn(self.generator(0), self.cfg.seq_len, self.cfg.d_model)}

    def weights(self):
        gen, d, f = self.generator(1), self.cfg.d_model, self.d_ff
        w = {f"attn.{k}": v for k, v in attention_weights_init(self, gen, d).items()}
        for ln in ("ln1", "ln2"):
            w[f"{ln}.gamma"] = 1 + self.randn(gen, d, std=0.1)
            w[f"{ln}.beta"] = self.randn(gen, d, std=0.1)
        w["mlp.w1"], w["mlp.b1"] = self.randn(gen, d, f, std=d**-0.5), self.randn(gen, f, std=0.1)
        w["mlp.w2"], w["mlp.b2"] = self.randn(gen, f, d, std=f**-0.5), self.randn(gen, d, std=0.1)
        return w

    def forward(self, ops, rec, x, w):
        return block_forward(ops, rec, self.cfg, x["x"], w)


def block_forward(ops: Ops, rec: Recorder, cfg: BlockConfig, x, w: dict, saved: dict | None = None, adapt=None):
    """The block on `x`. `saved` (if given) receives the ops' outputs a backward reads (`finetune`);
    `adapt(a_in)`, called after `ln1`, may record ops of its own and returns the q, k, v projection
    to use (LoRA's adapters)."""
    part = (lambda name: saved.setdefault(name, {})) if saved is not None else (lambda name: None)
    a_in = layer_norm(ops, scoped(rec, "ln1"), cfg, x, w["ln1.gamma"], w["ln1.beta"], part("ln1"))
    attn_w = {k.removeprefix("attn."): v for k, v in w.items() if k.startswith("attn.")}
    heads = cfg.n_heads // cfg.head_merge
    project = adapt(a_in) if adapt else None
    a_out = attention(ops, scoped(rec, "attn"), cfg, heads, a_in, attn_w, cfg.d_model // heads, part("attn"), project)
    h = rec("attn.residual", lambda: ops.add(x, a_out))
    m_in = layer_norm(ops, scoped(rec, "ln2"), cfg, h, w["ln2.gamma"], w["ln2.beta"], part("ln2"))
    hidden = rec("mlp.fc1", lambda: ops.linear(m_in, w["mlp.w1"], w["mlp.b1"]))
    act = rec("mlp.gelu", lambda: gelu(ops, cfg, hidden))
    m_out = rec("mlp.fc2", lambda: ops.linear(act, w["mlp.w2"], w["mlp.b2"]))
    if saved is not None:
        saved.update(a_in=a_in, m_in=m_in, hidden=hidden, act=act)
    return rec("mlp.residual", lambda: ops.add(h, m_out))
