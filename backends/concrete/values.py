"""Quantized values: integers on a scale, with the entries known whatever the input (see `quant`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Q:
    """A quantized value; see the module docstring."""

    v: Any
    scale: float
    fixed: np.ndarray  # NaN: input-dependent
    narrow: bool = False  # on the `n_bits` grid (an input or a lookup's output), not an accumulator

    @property
    def shape(self):
        return self.fixed.shape

    def free(self) -> np.ndarray:
        return np.isnan(self.fixed)


@dataclass
class Product:
    """A private x private matmul not yet computed: the next op decides which entries it needs."""

    a: Q
    b: Q


@dataclass
class QuantSettings:
    n_bits: int  # activations and weights
    rounding: str  # none | exact (Concrete's round_bit_pattern, exact)
    rounding_bits: int  # bits kept of a wide accumulator before a lookup
    fuse_requant: bool = True  # a lookup reads a wide accumulator itself; False: re-quantized first (+1 PBS)
    fuse_linear_requant: bool = False  # a linear op multiplies a wide input itself; False: re-quantized first
    out_proj_bits: int | None = None  # bits of the output projection's weights (`wo`); None: n_bits
    client_projection: bool = False  # the circuit returns the heads; the client projects them in float


def dequantize(q: Q, ints) -> torch.Tensor:
    """`ints` (the integers of `q`, or a circuit's output standing for them) on `q`'s scale, with
    `q`'s known entries."""
    return torch.as_tensor(np.where(q.free(), np.asarray(ints, dtype=np.float64) * q.scale, q.fixed))


def known_as_public(value):
    """A `Q` with no input-dependent entry (a weight) as the public tensor of its values."""
    return torch.as_tensor(value.fixed) if isinstance(value, Q) and not value.free().any() else value


def a_shape(a) -> tuple:
    if isinstance(a, Product):
        return np.broadcast_shapes(a.a.shape[:-2], a.b.shape[:-2]) + (a.a.shape[-2], a.b.shape[-1])
    return a.shape
