"""The op set on CrypTen values: MPCTensors (private), torch tensors (public weights, masks), floats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workloads.ops import Ops, TorchOps, reshape_merge_heads, reshape_split_heads, rotate_half

if TYPE_CHECKING:
    from backends.crypten.backend import CryptenConfig


@dataclass
class Repeated:
    """K/V heads (kv, ..) standing for `times` copies of each (grouped-query attention), not yet
    copied: a product with them runs per group, so each K/V entry is opened once."""

    value: Any
    times: int

    def expand(self):
        """The copies, made locally: (kv * times, ..)."""
        v = self.value
        return v.unsqueeze(1).expand(v.shape[0], self.times, *v.shape[1:]).reshape(-1, *v.shape[1:])


def grouped(x, times: int):
    """(kv * times, a, b) -> (kv, times * a, b): the query heads of each K/V head stacked as rows."""
    return x.reshape(x.shape[0] // times, times * x.shape[1], x.shape[2])


class CryptenOps(Ops):
    """Ops on MPCTensors (private), torch tensors (public weights, masks) and floats.

    Private x private products go through Beaver triples; each one checks that CrypTen counted
    communication for it, so a switched-off counter fails loudly instead of reporting zero.
    """

    def __init__(self, crypten: Any, cfg: CryptenConfig, comm: Any):
        self.crypten, self.cfg, self.comm = crypten, cfg, comm
        self.plain = TorchOps(torch.float64)

    def private(self, v: Any) -> bool:
        return isinstance(v, self.crypten.CrypTensor)

    def _counted(self, fn):
        before = self.comm.comm_rounds
        out = fn()
        if self.comm.get_world_size() > 1 and self.comm.comm_rounds == before:
            raise RuntimeError(
                "CrypTen counted no communication for a private x private product; "
                "crypten.cfg.communicator.verbose must be True in every party"
            )
        return out

    def linear(self, x, w, b=None):
        y = self.matmul(x, w)
        return y if b is None else self.add(y, b)

    def project(self, x, ws, bs):
        """Private weights: concatenating shares is local, so all maps cost one Beaver product
        (x opened once); splitting and the bias adds are local too."""
        if not (self.private(x) and all(self.private(w) for w in ws)):
            return super().project(x, ws, bs)
        y = self._counted(lambda: x.matmul(self.crypten.cat(list(ws), dim=-1)))
        parts = y.split([w.shape[-1] for w in ws], dim=-1)
        return tuple(p if b is None else self.add(p, b) for p, b in zip(parts, bs, strict=True))

    def matmul(self, a, b):
        if isinstance(b, Repeated):  # per K/V group: one Beaver product opening K/V once
            out = self.matmul(grouped(a, b.times), b.value)
            return out.reshape(a.shape[0], a.shape[1], out.shape[-1])
        if self.private(a) and self.private(b):
            return self._counted(lambda: a.matmul(b))
        if self.private(a):
            return a.matmul(b)
        if self.private(b):  # public @ private = (private^T @ public^T)^T
            return b.transpose(-2, -1).matmul(a.transpose(-2, -1)).transpose(-2, -1)
        return self.plain.matmul(a, b)

    def transpose(self, a):
        if isinstance(a, Repeated):
            return Repeated(a.value.transpose(-2, -1), a.times)
        return a.transpose(-2, -1)

    def add(self, a, b):
        a, b = expanded(a), expanded(b)
        if self.private(a):
            return a.add(b)
        return b.add(a) if self.private(b) else self.plain.add(a, b)

    def sub(self, a, b):
        a, b = expanded(a), expanded(b)
        if self.private(a):
            return a.sub(b)
        return b.neg().add(a) if self.private(b) else self.plain.sub(a, b)

    def mul(self, a, b):
        a, b = expanded(a), expanded(b)
        if self.private(a) and self.private(b):
            return self._counted(lambda: a.mul(b))
        if self.private(a):
            return a.mul(b)
        return b.mul(a) if self.private(b) else self.plain.mul(a, b)

    def square(self, x):
        if isinstance(x, Repeated):
            return Repeated(self.square(x.value), x.times)
        return self._counted(x.square) if self.private(x) else self.plain.square(x)

    def sum(self, x, dim=-1):
        if isinstance(x, Repeated) and dim is not None:
            return Repeated(self.sum(x.value, dim), x.times)
        x = expanded(x)
        return x.sum() if dim is None else x.sum(dim, keepdim=True)

    def exp(self, x):
        return x.exp()

    def reciprocal(self, x):
        """CrypTen's Newton reciprocal is accurate only on about [0.05, 20] at 16 bits: its initial
        guess 3 exp(1 - 2x) leaves exp's valid range for x > 2^(exp_iterations-1), and the
        fixed-point error of each step is about x^2 2^-precision_bits relative. The softmax
        variants' row sums reach hundreds, so the input is scaled by the public 1/B first."""
        scale = self.cfg.reciprocal_scale
        with self.crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):  # the op's domain: x > 0
            return x.div(scale).reciprocal().div(scale)

    def rsqrt(self, x):
        return x.inv_sqrt()

    def relu(self, x):
        return x.relu()

    def gelu(self, x):
        if self.cfg.gelu == "erf":
            return x.mul(0.5).mul(x.div(math.sqrt(2)).erf().add(1))
        inner = x.mul(x.square().mul(0.044715).add(1)).mul(math.sqrt(2 / math.pi))
        return x.mul(0.5).mul(inner.tanh().add(1))

    def gelu_grad(self, x):
        """The erf form's derivative (`backend.gelu=erf`; the tanh form's otherwise)."""
        if self.cfg.gelu == "erf":
            cdf = x.div(math.sqrt(2)).erf().add(1).mul(0.5)
            return cdf.add(self._counted(lambda: x.mul(x.square().mul(-0.5).exp())).div(math.sqrt(2 * math.pi)))
        c = math.sqrt(2 / math.pi)
        x2 = x.square()
        t = x.mul(x2.mul(0.044715).add(1)).mul(c).tanh()
        slope = x2.mul(3 * 0.044715).add(1).mul(c)  # d(inner)/dx
        return t.add(1).mul(0.5).add(self._counted(lambda: x.mul(t.square().neg().add(1)).mul(slope)).mul(0.5))

    def step(self, x):
        return x.gt(0)

    def silu(self, x):
        return self._counted(lambda: x.mul(x.sigmoid()))

    def softmax(self, x):
        return x.softmax(-1)

    def poly(self, x, coeffs):
        if len(coeffs) == 1:
            return self.mul(self.add(self.mul(x, 0.0), 1.0), float(coeffs[0]))
        return x.polynomial(torch.tensor(coeffs[1:], dtype=torch.float64)).add(float(coeffs[0]))

    def split_heads(self, x, n_heads):
        return reshape_split_heads(x, n_heads)

    def merge_heads(self, x):
        return reshape_merge_heads(x)

    def rotary(self, x, cos, sin):
        """Local: the permutation moves shares, the products are with public tables."""
        return x.mul(cos).add(rotate_half(x, self.crypten.cat).mul(sin))

    def repeat_heads(self, x, times):
        return Repeated(x, times)


def expanded(v):
    return v.expand() if isinstance(v, Repeated) else v
