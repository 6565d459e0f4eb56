"""`attention_head`: one head of causal self-attention, and the attention part of `block`.

Softmax variants (the HE/MPC-friendly replacements studied in the literature):
- `exact`: softmax of the scaled scores, causal positions masked additively with `mask_value`
  (a moderate negative, since MPC/HE exponentials are only valid on a bounded range).
- `power`: x^p (p even) normalised by the row sum plus `norm_eps` (Power-Softmax).
- `gaussian`: exp(-||q - k||^2 / (2 sigma^2 sqrt(d))), no normalisation (Encryption-friendly LLM).
- `quad2`: (x + c)^2 normalised (MPCFormer's 2Quad).
- `relu`: relu(x) normalised.
Scores above the diagonal are zeroed with the 1/sqrt(head_dim) scaling (one public product), so a
backend may skip computing them; non-exact variants multiply by the 0/1 causal mask again after the
non-linearity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workloads.base import ConfigError, Recorder, Workload, WorkloadConfig
from workloads.ops import Ops

SOFTMAX_VARIANTS = ("exact", "power", "gaussian", "quad2", "relu")


@dataclass
class AttentionConfig(WorkloadConfig):
    name: str = "attention_head"
    softmax: str = "exact"
    power_p: int = 4
    quad_c: float = 5.0
    gaussian_sigma: float = 1.0
    mask_value: float = -30.0
    norm_eps: float = 1e-6


def validate_attention(cfg: AttentionConfig) -> None:
    if cfg.power_p <= 0 or cfg.power_p % 2:
        raise ConfigError(f"workload.power_p={cfg.power_p} must be a positive even integer")
    if cfg.gaussian_sigma <= 0:
        raise ConfigError(f"workload.gaussian_sigma={cfg.gaussian_sigma} must be positive")


def power(ops: Ops, x, p: int):
    """x**p by repeated squaring (p >= 1)."""
    result, base = None, x
    while p:
        if p & 1:
            result = base if result is None else ops.mul(result, base)
        p >>= 1
        if p:
            base = ops.square(base)
    return result


def gaussian_scale(cfg: AttentionConfig, head_dim: int) -> float:
    """The Gaussian kernel's exponent per unit of squared distance."""
    return -1 / (2 * cfg.gaussian_sigma**2 * math.sqrt(head_dim))


def attention_weights(ops: Ops, cfg: AttentionConfig, head_dim: int, scores, q, k, saved: dict | None = None):
    """Row weights from the scaled, causally masked scores (n_heads, seq, seq) by the variant;
    `saved` (if given) receives a normalised variant's row reciprocals `r`."""
    keep = torch.tril(torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.float64))
    if cfg.softmax == "exact":
        return ops.softmax(ops.add(scores, (1 - keep) * cfg.mask_value))
    if cfg.softmax == "gaussian":
        sq_dist = ops.add(
            ops.add(ops.sum(ops.square(q)), ops.transpose(ops.sum(ops.square(k)))),
            ops.mul(scores, -2 * math.sqrt(head_dim)),
        )
        return ops.mul(ops.exp(ops.mul(sq_dist, gaussian_scale(cfg, head_dim))), keep)
    if cfg.softmax == "power":
        e = power(ops, scores, cfg.power_p)
    elif cfg.softmax == "quad2":
        e = ops.square(ops.add(scores, cfg.quad_c))
    else:  # relu
        e = ops.relu(scores)
    e = ops.mul(e, keep)
    r = ops.reciprocal(ops.add(ops.sum(e), cfg.norm_eps))
    if saved is not None:
        saved["r"] = r
    return ops.mul(e, r)


def attention(
    ops: Ops,
    rec: Recorder,
    cfg: AttentionConfig,
    n_heads: int,
    x,
    w: dict,
    head_dim: int | None = None,
    saved: dict | None = None,
    project: Callable | None = None,
):
    """Causal multi-head attention of `x` (seq, d_model); `n_heads` heads of width `head_dim`
    (default d_model / cfg.n_heads). `project(x)` replaces the q, k, v projections (LoRA adds
    adapters); `saved` (if given) receives the ops' outputs the backward reads (`finetune`)."""
    head_dim = head_dim or cfg.d_model // cfg.n_heads
    project = project or (lambda x: ops.project(x, [w[f"w{n}"] for n in "qkv"], [w[f"b{n}"] for n in "qkv"]))
    q, k, v = rec("qkv_proj", lambda: tuple(ops.split_heads(p, n_heads) for p in project(x)))
    heads = attend(ops, rec, cfg, q, k, v, head_dim, saved)
    return rec("out_proj", lambda: ops.linear(ops.merge_heads(heads), w["wo"], w["bo"]))


def attend(ops: Ops, rec: Recorder, cfg: AttentionConfig, q, k, v, head_dim: int, saved: dict | None = None):
    """`qk_matmul`, `softmax` (the variant), `av_matmul` of split heads (n_heads, seq, head_dim)."""
    keep = torch.tril(torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.float64))
    # scaled and causally masked: scores above the diagonal are 0, so no backend needs to compute them
    scores = rec("qk_matmul", lambda: ops.mul(ops.matmul(q, ops.transpose(k)), keep / math.sqrt(head_dim)))
    if saved is None:
        probs = rec("softmax", lambda: attention_weights(ops, cfg, head_dim, scores, q, k))
    else:  # what the backward reads must be the op's outputs (a lazy backend materializes only those)

        def weights():
            inner = {}
            return {"probs": attention_weights(ops, cfg, head_dim, scores, q, k, inner), **inner}

        saved.update(rec("softmax", weights), q=q, k=k, v=v, scores=scores)
        probs = saved["probs"]
    heads = rec("av_matmul", lambda: ops.matmul(probs, v))
    if saved is not None:
        saved["heads"] = heads
    return heads


def attention_weights_init(wl: Workload, gen: torch.Generator, width: int) -> dict[str, torch.Tensor]:
    """Q/K/V projections d_model -> width, output projection width -> d_model."""
    d = wl.cfg.d_model
    w = {}
    for n in "qkv":
        w[f"w{n}"] = wl.randn(gen, d, width, std=d**-0.5)
        w[f"b{n}"] = wl.randn(gen, width, std=0.1)
    w["wo"] = wl.randn(gen, width, d, std=width**-0.5)
    w["bo"] = wl.randn(gen, d, std=0.1)
    return w


class AttentionHead(Workload):
    """One head (head_dim = d_model / n_heads) of causal self-attention on (seq_len, d_model)."""

    name = "attention_head"
    Config = AttentionConfig
    variants = {"softmax": SOFTMAX_VARIANTS}
    uses_heads = True

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        validate_attention(cfg)

    def inputs(self):
        return {"x": self.randn(self.generator(0), self.cfg.seq_len, self.cfg.d_model)}

    def weights(self):
        return attention_weights_init(self, self.generator(1), self.head_dim)

    def forward(self, ops, rec, x, w):
        return attention(ops, rec, self.cfg, 1, x["x"], w)
