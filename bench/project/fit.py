"""Per-op cost forms: each op's figure as a weighted sum of monomials of the block's shape.

s = seq_len, d = d_model, h = n_heads, f = d_ff (grouped-query attention's K/V width is d over a
fixed group size, so cells of one group size share these monomials). Each op class has the
monomials its work can have (a linear layer x[s, d] W[d, f]: operands s*d and d*f, products
s*d*f); rounds grow with the depth of reductions (log2 s, log2 d). A figure that is an exact formula of these (Beaver
bytes, PBS) is recovered exactly by least squares; noisy latency is fitted on relative residuals
with non-negative coefficients, so that no term extrapolates below zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

TERMS = {
    "1": lambda s, d, h, f: 1.0,
    "s": lambda s, d, h, f: s,
    "d": lambda s, d, h, f: d,
    "s*d": lambda s, d, h, f: s * d,
    "d^2": lambda s, d, h, f: d * d,
    "s*d^2": lambda s, d, h, f: s * d * d,
    "d*f": lambda s, d, h, f: d * f,
    "s*f": lambda s, d, h, f: s * f,
    "s*d*f": lambda s, d, h, f: s * d * f,
    "s*h": lambda s, d, h, f: s * h,
    "s^2*h": lambda s, d, h, f: s * s * h,
    "s^2*d": lambda s, d, h, f: s * s * d,
    "log2 s": lambda s, d, h, f: math.log2(s),
    "log2 d": lambda s, d, h, f: math.log2(d),
}

# op class: (how its name ends or begins, its monomials); the first match wins
CLASSES = (
    ("protect/reveal", ("protect", "reveal"), ("1", "s*d")),
    ("linear", ("qkv_proj", "out_proj"), ("1", "s*d", "d^2", "s*d^2")),
    ("linear", ("fc1", "fc2", "gate_up", "down", "lm_head"), ("1", "s*d", "d*f", "s*f", "s*d*f")),
    ("attention products", ("qk_matmul", "av_matmul"), ("1", "s*d", "s^2*h", "s^2*d")),
    ("softmax", ("softmax",), ("1", "s*h", "s^2*h")),
    ("norms", ("mean", "variance", "mean_square", "rsqrt", "scale_shift", "scale"), ("1", "s", "d", "s*d")),
    ("activation", ("gelu", "silu", "glu"), ("1", "s*f")),
    ("positions", ("rope", "repeat_kv"), ("1", "s*d")),
    ("residual", ("residual",), ("1", "s*d")),
    ("circuit", ("circuit",), ("1", "s*d", "d^2", "s*d^2", "s*d*f", "s^2*d")),
)
OTHER = ("other", (), ("1", "s*d", "d^2", "s*d^2", "s^2*d"))
ROUNDS = ("1", "log2 s", "log2 d")
CELL_TERMS = ("1", "s*d", "d^2")  # setup and key sizes: inputs and weights
EXACT = 1e-9  # relative residual below which a fit is taken as the exact formula


def op_class(op: str) -> tuple[str, tuple[str, ...]]:
    """(class, monomials) of an op name such as `attn.qk_matmul`."""
    leaf = op.rsplit(".", 1)[-1]
    return next(((name, terms) for name, ends, terms in CLASSES if leaf in ends), OTHER[0::2])


def time_figure(op: str) -> str:
    """The time-breakdown figure an op's time goes to: `time_<class>_s`."""
    return "time_" + op_class(op)[0].replace(" ", "_").replace("/", "_") + "_s"


def terms_for(op: str, figure: str) -> tuple[str, ...]:
    if figure == "rounds":
        return ROUNDS
    return CELL_TERMS if op == "total" else op_class(op)[1]


@dataclass
class Fit:
    """value(shape) = sum(coef * term(shape)); `residual`: largest |relative residual| over the
    cells fitted; `cells`: how many."""

    terms: tuple[str, ...]
    coef: tuple[float, ...]
    residual: float
    cells: int

    def __call__(self, shape: dict[str, int]) -> float:
        return float(np.dot(self.coef, row(self.terms, shape)))

    @property
    def form(self) -> str:
        used = [f"{c:.4g}*{t}" if t != "1" else f"{c:.4g}" for c, t in zip(self.coef, self.terms, strict=True) if c]
        return " + ".join(used) or "0"

    @property
    def exact(self) -> bool:
        return self.residual <= EXACT


def row(terms: tuple[str, ...], shape: dict[str, int]) -> np.ndarray:
    s, d, h, f = (shape[k] for k in ("seq_len", "d_model", "n_heads", "d_ff"))
    return np.array([TERMS[t](s, d, h, f) for t in terms], dtype=float)


def fit(terms: tuple[str, ...], shapes: list[dict[str, int]], values: list[float]) -> Fit:
    """The least-squares fit of `values` (one per shape) on `terms`: exact when the data allow,
    else non-negative on relative residuals. Fewer cells than terms keep the first terms only."""
    distinct = len({tuple(sorted(s.items())) for s in shapes})
    terms = terms[: max(1, min(len(terms), distinct))]
    x = np.array([row(terms, s) for s in shapes])
    y = np.array(values, dtype=float)
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    coef = np.linalg.lstsq(x / scale, y, rcond=None)[0] / scale
    if relative(x @ coef, y).max(initial=0.0) > EXACT:
        weight = 1.0 / np.maximum(np.abs(y), np.abs(y).max() * 1e-9 + 1e-300)[:, None]
        coef = nnls(x * weight / scale, y * weight[:, 0])[0] / scale
    return Fit(terms, tuple(float(c) for c in coef), float(relative(x @ coef, y).max(initial=0.0)), len(y))


def relative(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """|predicted - measured| / |measured|; 0 where both are 0, inf where only `measured` is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(predicted - measured) / np.abs(measured)
    err[(measured == 0) & (np.abs(predicted) <= 1e-12)] = 0.0
    err[(measured == 0) & (np.abs(predicted) > 1e-12)] = np.inf
    return err
