"""The op set every workload is written against, and its float64 torch meaning.

A workload is one function over `Ops`; a backend supplies an `Ops` whose values are its own
(ciphertexts, secret shares, tracers). `TorchOps` defines what each op means: it is the reference
the harness compares every backend with, and the plaintext backend's implementation.

Operands are *private* values (results of `Backend.protect` or of earlier ops), *weights* (results of
`Backend.setup`) or public Python floats / torch tensors (masks, constants). A backend
dispatches on the operand kinds, since a private x private product costs far more than a private x
weight one in every technology.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

Value = Any


class Ops(ABC):
    """Primitive operations; shapes follow torch broadcasting, matrices are the last two dims."""

    @abstractmethod
    def linear(self, x: Value, w: Value, b: Value | None = None) -> Value:
        """`x @ w + b` with `w` (in, out) and `b` (out,) usually weights."""

    def project(self, x: Value, ws: Sequence[Value], bs: Sequence[Value | None]) -> tuple[Value, ...]:
        """`linear(x, w, b)` for each pair (attention's q, k, v). One product of `x` with the
        concatenated weights lets a backend open `x` once instead of once per map."""
        return tuple(self.linear(x, w, b) for w, b in zip(ws, bs, strict=True))

    @abstractmethod
    def matmul(self, a: Value, b: Value) -> Value:
        """`a @ b`, batched over leading dims; typically private x private."""

    @abstractmethod
    def transpose(self, a: Value) -> Value:
        """Swap the last two dims."""

    @abstractmethod
    def add(self, a: Value, b: Value) -> Value:
        """Elementwise sum; `b` may be private, a weight, a float or a public tensor."""

    @abstractmethod
    def sub(self, a: Value, b: Value) -> Value:
        """Elementwise difference, operands as for `add`."""

    @abstractmethod
    def mul(self, a: Value, b: Value) -> Value:
        """Elementwise product, operands as for `add`."""

    @abstractmethod
    def square(self, x: Value) -> Value:
        """`x * x`."""

    @abstractmethod
    def sum(self, x: Value, dim: int | None = -1) -> Value:
        """Sum over `dim` keeping it as size 1, or over everything (a scalar) when `dim` is None."""

    @abstractmethod
    def exp(self, x: Value) -> Value:
        """Elementwise exponential (backends approximate it on a bounded range)."""

    @abstractmethod
    def reciprocal(self, x: Value) -> Value:
        """Elementwise `1 / x` for positive `x`."""

    @abstractmethod
    def rsqrt(self, x: Value) -> Value:
        """Elementwise `1 / sqrt(x)` for positive `x`."""

    @abstractmethod
    def relu(self, x: Value) -> Value:
        """Elementwise `max(x, 0)`."""

    @abstractmethod
    def gelu(self, x: Value) -> Value:
        """Exact (erf) GELU."""

    @abstractmethod
    def gelu_grad(self, x: Value) -> Value:
        """The exact GELU's derivative, Phi(x) + x phi(x) (`finetune`'s backward)."""

    @abstractmethod
    def step(self, x: Value) -> Value:
        """Elementwise 1 where x > 0, else 0: relu's derivative (`finetune`'s backward)."""

    @abstractmethod
    def silu(self, x: Value) -> Value:
        """Exact SiLU, `x * sigmoid(x)` (Llama's gate)."""

    @abstractmethod
    def softmax(self, x: Value) -> Value:
        """Softmax over the last dim."""

    @abstractmethod
    def poly(self, x: Value, coeffs: Sequence[float]) -> Value:
        """`sum(c_i * x**i)`, coefficients in increasing degree."""

    @abstractmethod
    def split_heads(self, x: Value, n_heads: int) -> Value:
        """(seq, n_heads * head_dim) -> (n_heads, seq, head_dim)."""

    @abstractmethod
    def merge_heads(self, x: Value) -> Value:
        """(n_heads, seq, head_dim) -> (seq, n_heads * head_dim)."""

    @abstractmethod
    def rotary(self, x: Value, cos: torch.Tensor, sin: torch.Tensor) -> Value:
        """Rotary position embedding of split heads (n_heads, seq, head_dim):
        `x * cos + rotate_half(x) * sin`, rotate_half(x) = (-x[..., hd/2:], x[..., :hd/2]);
        `cos`, `sin` public (seq, head_dim). A public permutation and two public products."""

    @abstractmethod
    def repeat_heads(self, x: Value, times: int) -> Value:
        """(n_heads, seq, head_dim) -> (n_heads * times, seq, head_dim), head i repeated as heads
        i * times .. (i + 1) * times - 1 (grouped-query attention's shared K/V heads)."""


class TorchOps(Ops):
    """Reference semantics on torch tensors of one dtype (float64 for the reference)."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        self.dtype = dtype

    def linear(self, x, w, b=None):
        y = x @ w
        return y if b is None else y + b

    def matmul(self, a, b):
        return a @ b

    def transpose(self, a):
        return a.transpose(-2, -1)

    def _same_dtype(self, b):
        """Public tensors (masks) are built in float64; compute in this backend's dtype."""
        return b.to(self.dtype) if isinstance(b, torch.Tensor) else b

    def add(self, a, b):
        return a + self._same_dtype(b)

    def sub(self, a, b):
        return a - self._same_dtype(b)

    def mul(self, a, b):
        return a * self._same_dtype(b)

    def square(self, x):
        return x * x

    def sum(self, x, dim=-1):
        return x.sum() if dim is None else x.sum(dim=dim, keepdim=True)

    def exp(self, x):
        return torch.exp(x)

    def reciprocal(self, x):
        return torch.reciprocal(x)

    def rsqrt(self, x):
        return torch.rsqrt(x)

    def relu(self, x):
        return torch.relu(x)

    def gelu(self, x):
        return torch.nn.functional.gelu(x)

    def gelu_grad(self, x):
        return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def step(self, x):
        return (x > 0).to(x.dtype)

    def silu(self, x):
        return torch.nn.functional.silu(x)

    def softmax(self, x):
        return torch.softmax(x, dim=-1)

    def poly(self, x, coeffs):
        acc = torch.full_like(x, float(coeffs[-1]))
        for c in reversed(coeffs[:-1]):  # Horner
            acc = acc * x + c
        return acc

    def split_heads(self, x, n_heads):
        return reshape_split_heads(x, n_heads)

    def merge_heads(self, x):
        return reshape_merge_heads(x)

    def rotary(self, x, cos, sin):
        return x * self._same_dtype(cos) + rotate_half(x) * self._same_dtype(sin)

    def repeat_heads(self, x, times):
        return x.repeat_interleave(times, dim=0)


def rotate_half(x, cat=torch.cat):
    """(-x[..., hd/2:], x[..., :hd/2]) for any value with torch's indexing, given its `cat`."""
    half = x.shape[-1] // 2
    return cat([-x[..., half:], x[..., :half]], dim=-1)


def reshape_split_heads(x, n_heads: int):
    """`split_heads` for any value with torch's reshape / transpose (tensors, CrypTensors)."""
    seq, width = x.shape
    return x.reshape(seq, n_heads, width // n_heads).transpose(0, 1)


def reshape_merge_heads(x):
    """`merge_heads` for any value with torch's reshape / transpose."""
    n_heads, seq, head_dim = x.shape
    return x.transpose(0, 1).reshape(seq, n_heads * head_dim)
