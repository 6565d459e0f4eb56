"""`Ops` on packed CKKS values: dispatch on operand kinds (ciphertext `Mat`, lazy `Transposed`,
server `Weight`, public float / tensor) to the packed products of `tensor` and `attention`, the
head ops of `heads` and the polynomial stand-ins of `approx`, tracking which slots outside a
matrix's footprint may hold junk."""

from __future__ import annotations

from dataclasses import replace

import torch

from backends.ckks import approx, attention, heads
from backends.ckks.tensor import Mat, Packer, Transposed, Weight
from workloads.ops import Ops


class CkksOps(Ops):
    """Ops on packed ciphertexts (`Mat`), server weights (`Weight`) and public values."""

    def __init__(self, packer: Packer, cfg, recip: tuple[float, float]):
        self.p, self.cfg, self.recip = packer, cfg, recip

    def linear(self, x, w, b=None):
        if not isinstance(w, Weight):
            raise NotImplementedError("ckks: linear takes server weights only")
        return self.p.linear(x, w, b)

    def matmul(self, a, b):
        if isinstance(a, Mat) and isinstance(b, Transposed):
            return attention.qk(self.p, a, b.mat)
        if isinstance(a, Mat) and a.kind == "diag" and isinstance(b, Mat):
            return attention.av(self.p, a, b)
        raise NotImplementedError("ckks: matmul supports q @ k^T and weights @ v only")

    def transpose(self, a):
        return a.mat if isinstance(a, Transposed) else Transposed(a)

    def add(self, a, b):
        return self._binary("add", a, b)

    def sub(self, a, b):
        return self._binary("sub", a, b)

    def mul(self, a, b):
        return self._binary("mul", a, b)

    def square(self, x):
        return self._binary("mul", x, x)

    def sum(self, x, dim=-1):
        if dim is None:
            raise NotImplementedError("ckks: sums over the last dim only")
        return self.p.rowsum(x)

    def exp(self, x):
        c = self.cfg
        return approx.exp(self, x, c.exp_lo, c.exp_hi, c.exp_degree, c.exp_squarings)

    def reciprocal(self, x):
        return approx.reciprocal(self, x, *self.recip, self.cfg.recip_bits)

    def rsqrt(self, x):
        c = self.cfg
        return approx.rsqrt(self, x, c.rsqrt_lo, c.rsqrt_hi, c.rsqrt_degree, c.rsqrt_newton)

    def relu(self, x):
        raise NotImplementedError("ckks: relu has no polynomial form here")

    def gelu(self, x):
        raise NotImplementedError("ckks: exact (erf) GELU has no polynomial form here; use gelu=poly")

    def gelu_grad(self, x):
        raise NotImplementedError("ckks: the exact GELU's derivative has no polynomial form here; use gelu=poly")

    def step(self, x):
        raise NotImplementedError("ckks: a step function has no polynomial form here")

    def silu(self, x):
        raise NotImplementedError("ckks: exact SiLU has no polynomial form here; use silu=poly")

    def softmax(self, x):
        e = self.exp(x)
        return self.mul(e, self.reciprocal(self.sum(e)))

    def poly(self, x, coeffs):
        return approx.poly(self, x, list(coeffs))

    def split_heads(self, x, n_heads):
        stride = x.width // n_heads if n_heads > 1 else x.stride
        return Mat(x.cts, "row", x.width // n_heads, n_heads, stride, True, x.width // n_heads, x.block, x.junk)

    def merge_heads(self, x):
        if x.groups > 1 or (x.heads > 1 and x.stride != x.width):  # compacted heads: back to one row each
            x = self.p.relayout(x, self.p.block, 1, x.width)
        width = x.width * x.heads
        return Mat(x.cts, "row", width, 1, x.block, False, width, x.block, x.junk)

    def rotary(self, x, cos, sin):
        return heads.rotary(self.p, x, cos.double().numpy(), sin.double().numpy())

    def repeat_heads(self, x, times):
        return heads.repeat(self.p, x, times)

    def _binary(self, op, a, b):
        if isinstance(a, Transposed):
            a = attention.columns_to_diag(self.p, a.mat)
        if isinstance(b, Transposed):
            b = attention.columns_to_diag(self.p, b.mat)
        if isinstance(a, Mat) and isinstance(b, Mat):
            return self._combine(op, a, b)
        if isinstance(a, Mat):
            return self._with_public(op, a, b)
        if op != "sub":
            return self._binary(op, b, a)
        raise NotImplementedError("ckks: public - ciphertext is not used by any workload")

    def _combine(self, op, a: Mat, b: Mat) -> Mat:
        if a.kind == "rep" and b.kind != "rep":
            if op == "sub":
                raise NotImplementedError("ckks: column - matrix is not used by any workload")
            a, b = b, a
        if (a.block, a.groups, a.stride) != (b.block, b.groups, b.stride):  # one was compacted: meet there
            to = min(a, b, key=lambda m: (m.block, -m.groups))
            a, b = (self.p.relayout(m, to.block, to.groups, to.stride) for m in (a, b))
        e = self.p.e
        if b.kind == "rep" and a.kind != "rep":
            b = self.p.widen(b, self.p.footprint(a))
        base = a if a.kind != "rep" or a.valid <= b.valid else b
        fw = self.p.footprint(base)

        def spill(m):
            return m.junk or (m.kind == "rep" and m.valid > fw)

        fn = {"mul": e.mul, "add": e.add, "sub": e.sub}[op]
        cts = tuple(fn(x, y) for x, y in zip(a.cts, b.cts, strict=True))
        junk = spill(a) and spill(b) if op == "mul" else spill(a) or spill(b)
        return replace(base, cts=cts, junk=junk)

    def _with_public(self, op, a: Mat, value) -> Mat:
        key = None
        if isinstance(value, Weight):
            key, value = value.key, value.value
        elif isinstance(value, torch.Tensor):
            value = value.double().numpy()
        if op == "mul":
            if a.kind == "rep":
                a = replace(a, valid=min(a.valid, a.width))
            if isinstance(value, float | int):
                key = ("scalar", float(value), a.kind, a.width, a.valid, a.heads, a.stride, a.block)
            return replace(a, cts=self.p.mul_public(a, self.p.place(a, value), key), junk=False)
        vecs = self.p.place(a, value)
        cts = tuple(self.p.e.add_plain(c, v if op == "add" else -v) for c, v in zip(a.cts, vecs, strict=True))
        return replace(a, cts=cts)
