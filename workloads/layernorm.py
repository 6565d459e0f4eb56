"""`layernorm`: LayerNorm over the last dim, as `mean`, `variance`, `rsqrt`, `scale_shift`.

Variant `norm`: `exact` uses the backend's inverse square root; `poly` a degree-`rsqrt_degree`
polynomial fitted to 1/sqrt on [`rsqrt_lo`, `rsqrt_hi`] (the stated input range of the variance
plus eps), refined by `newton_steps` Newton steps y <- y (3 - v y^2) / 2. With the defaults
([0.25, 4], degree 3, 2 steps) the relative error of 1/sqrt inside the range is 2.3e-4.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workloads.approx import chebyshev_fit
from workloads.base import ConfigError, Recorder, Workload, WorkloadConfig
from workloads.ops import Ops

NORM_VARIANTS = ("exact", "poly")


@dataclass
class LayerNormConfig(WorkloadConfig):
    name: str = "layernorm"
    norm: str = "exact"
    eps: float = 1e-5
    rsqrt_lo: float = 0.25
    rsqrt_hi: float = 4.0
    rsqrt_degree: int = 3
    newton_steps: int = 2


def validate_norm(cfg: LayerNormConfig) -> None:
    if not 0 < cfg.rsqrt_lo < cfg.rsqrt_hi:
        raise ConfigError(f"workload.rsqrt_lo={cfg.rsqrt_lo}, rsqrt_hi={cfg.rsqrt_hi}: need 0 < rsqrt_lo < rsqrt_hi")
    if cfg.rsqrt_degree < 1 or cfg.newton_steps < 0:
        raise ConfigError("workload.rsqrt_degree must be >= 1 and workload.newton_steps >= 0")


def inverse_sqrt(ops: Ops, cfg: LayerNormConfig, v):
    if cfg.norm == "exact":
        return ops.rsqrt(v)
    y = ops.poly(v, rsqrt_coeffs(cfg.rsqrt_lo, cfg.rsqrt_hi, cfg.rsqrt_degree))
    for _ in range(cfg.newton_steps):
        y = ops.mul(y, ops.add(ops.mul(ops.mul(v, ops.square(y)), -0.5), 1.5))
    return y


@functools.cache
def rsqrt_coeffs(lo: float, hi: float, degree: int) -> list[float]:
    return chebyshev_fit(lambda t: 1 / np.sqrt(t), lo, hi, degree)


def layer_norm(ops: Ops, rec: Recorder, cfg: LayerNormConfig, x, gamma, beta, saved: dict | None = None):
    """LayerNorm of `x`; `saved` (if given) receives the ops' outputs its backward reads (`finetune`)."""
    d = cfg.d_model
    mean = rec("mean", lambda: ops.mul(ops.sum(x), 1 / d))

    def variance():
        centred = ops.sub(x, mean)
        return centred, ops.mul(ops.sum(ops.square(centred)), 1 / d)

    centred, var = rec("variance", variance)
    inv_std = rec("rsqrt", lambda: inverse_sqrt(ops, cfg, ops.add(var, cfg.eps)))
    if saved is not None:
        saved.update(centred=centred, var=var, inv_std=inv_std)
    return rec("scale_shift", lambda: ops.add(ops.mul(ops.mul(centred, inv_std), gamma), beta))


class LayerNorm(Workload):
    name = "layernorm"
    Config = LayerNormConfig
    variants = {"norm": NORM_VARIANTS}

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        validate_norm(cfg)

    def inputs(self):
        return {"x": self.randn(self.generator(0), self.cfg.seq_len, self.cfg.d_model)}

    def weights(self):
        gen, d = self.generator(1), self.cfg.d_model
        return {"gamma": 1 + self.randn(gen, d, std=0.1), "beta": self.randn(gen, d, std=0.1)}

    def forward(self, ops, rec, x, w):
        return layer_norm(ops, rec, self.cfg, x["x"], w["gamma"], w["beta"])
