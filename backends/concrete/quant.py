"""The op set on quantized integers: what a TFHE circuit computes, traced by Concrete or run in the clear.

A value is `Q(v, scale, fixed)`: integers `v` standing for `v * scale`, and `fixed`, a float array
that is NaN where an entry depends on the input and holds the entry's value where it does not (the
causal mask's zeros and constants), so that such entries cost no lookups and no products. `v` is 0
at known entries: their values live in `fixed` only, so a large constant (the mask's -30) never
widens the integers the circuit carries.

One forward over `QuantOps` runs in three modes:
- `calibrate`: `v` are float arrays and nothing is quantized; every lookup records the largest
  |input| and |output| it sees (maxed over the calibration inputs), in call order;
- `clear`: `v` are int64 arrays: the quantized-clear model, the circuit's integers without encryption;
- `trace`: `v` are Concrete tracers: the circuit (ops become `fhe.tag`s, set by the backend).

Where the PBS go (one programmable bootstrap per lookup per entry):
- weights are clear integers (`n_bits`, symmetric per tensor; the output projection's `out_proj_bits`):
  `linear` is a clear matmul, no PBS, and leaves a wide accumulator; it re-quantizes a wide input
  first (one lookup per entry) unless `fuse_linear_requant`, which multiplies the accumulator itself
  (wider integers, finer values);
- a lookup (exp, reciprocal, relu, requantization) reads a wide accumulator itself and maps it
  straight to its output grid: re-quantization is fused into the table (unless `fuse_requant` is
  off); with `rounding`, `round_bit_pattern` first drops the accumulator's low bits (an
  `AutoRounder` keeping `rounding_bits`, adjusted by Concrete from the inputset);
- private x private `matmul` by squares of sums (`blocks.matrix_product`): one lookup per
  product term plus one per operand entry, against two per term for Concrete's own
  multiplication. Output entries that a following `mul` by a public mask zeroes are never
  computed, and terms whose operand is a known zero are skipped: a causal head pays for the lower
  triangle only. Elementwise private products cost two lookups per entry;
- a sum of private values on different grids first maps one onto the other's grid (one lookup per
  entry, `_align`);
- head layout (`heads`): static indexing and clear products, no PBS but the re-quantization of the
  input of `rotary` and `repeat_heads`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from backends.concrete.blocks import concrete_fhe, elementwise_product, matrix_product, on_free, row_maxima
from backends.concrete.heads import HeadOps
from backends.concrete.values import Product, Q, QuantSettings, a_shape, dequantize, known_as_public
from workloads.ops import Ops

MODES = ("calibrate", "clear", "trace")


class QuantOps(HeadOps, Ops):
    """`Ops` on `Q` values in one of `MODES`; `ranges` come from the calibrate pass."""

    def __init__(self, settings: QuantSettings, mode: str, ranges: list[list[float]] | None = None, rounders=None):
        self.s, self.mode = settings, mode
        self.ranges = [] if ranges is None else ranges
        self.rounders = rounders  # one `fhe.AutoRounder` per lookup slot; Concrete adjusts them when compiling
        self.calls = 0
        self.qmax = 2 ** (settings.n_bits - 1) - 1

    # values in and out -------------------------------------------------------------------------

    def private(self, x: torch.Tensor) -> Q:
        """An input as the client encrypts it: `n_bits` over its calibrated range (a lookup slot)."""
        x = x.numpy()
        i = self._next()
        if self.mode == "calibrate":
            self._record(i, np.abs(x).max(), np.abs(x).max())
            return Q(x, 1.0, np.full(x.shape, np.nan), narrow=True)
        scale = self.ranges[i][1] / self.qmax
        v = np.clip(np.round(x / scale), -self.qmax, self.qmax).astype(np.int64)
        return Q(v, scale, np.full(x.shape, np.nan), narrow=True)

    def encrypted(self, q: Q, v) -> Q:
        """`q`'s scale and structure on the circuit's input tracer `v`."""
        return Q(v, q.scale, q.fixed, q.narrow)

    def weight(self, w: torch.Tensor, bits: int | None = None) -> Q:
        """A clear weight, `bits` (default `n_bits`) symmetric per tensor (the float itself when calibrating)."""
        w = w.numpy()
        if self.mode == "calibrate":
            return Q(w, 1.0, w)
        scale = max(np.abs(w).max(), 1e-12) / (2 ** ((bits or self.s.n_bits) - 1) - 1)
        return Q(np.round(w / scale).astype(np.int64), scale, w)

    def resolve(self, value):
        """`value` (or a tuple of values) with every pending product computed."""
        if isinstance(value, tuple):
            return tuple(self._value(v) for v in value)
        return self._value(value)

    def dequantize(self, q) -> torch.Tensor | tuple:
        if isinstance(q, tuple):
            return tuple(self.dequantize(v) for v in q)
        q = self._value(q)
        return dequantize(q, q.v)

    # the op set ---------------------------------------------------------------------------------

    def linear(self, x, w, b=None):
        x = self._value(x)
        x = x if self.s.fuse_linear_requant else self._narrow(x)
        const = np.nan_to_num(x.fixed) @ w.fixed + (0 if b is None else b.fixed)  # known inputs, bias
        shape = x.fixed.shape[:-1] + w.shape[-1:]
        if self.mode == "calibrate":
            return self._new(x.v @ w.v + const, 1.0, shape)
        scale = x.scale * w.scale
        return self._new(x.v @ w.v + self._ints(const, scale), scale, shape)

    def matmul(self, a, b):
        return Product(self._narrow(self._value(a)), self._narrow(self._value(b)))

    def transpose(self, a):
        a = self._value(a)
        axes = (*range(a.fixed.ndim - 2), a.fixed.ndim - 1, a.fixed.ndim - 2)
        return Q(np.transpose(a.v, axes), a.scale, np.transpose(a.fixed, axes), a.narrow)

    def add(self, a, b):
        return self._affine(a, b, 1)

    def sub(self, a, b):
        return self._affine(a, b, -1)

    def mul(self, a, b):
        a, b = known_as_public(a), known_as_public(b)
        if isinstance(b, (Q, Product)) and not isinstance(a, (Q, Product)):
            a, b = b, a
        if isinstance(b, (Q, Product)):
            return self._mul_private(self._value(a), self._value(b))
        b = np.broadcast_to(np.asarray(b.numpy() if isinstance(b, torch.Tensor) else b, dtype=np.float64), a_shape(a))
        if isinstance(a, Product):
            a = self._product(a, needed=b != 0)
        return self._mul_public(a, b)

    def square(self, x):
        return self.lookup(x, np.square, signed=False)

    def sum(self, x, dim=-1):
        x = self._value(x)
        if dim is None:  # everything: one row, summed, kept (1, 1) (Concrete 2.11 cannot reshape to a scalar)
            return self.sum(Q(x.v.reshape(1, -1), x.scale, x.fixed.reshape(1, -1), x.narrow))
        free = x.free().any(-1, keepdims=True)
        known = np.where(x.free(), 0.0, x.fixed).sum(-1, keepdims=True)
        const = self._ints(np.where(free, known, 0.0), x.scale)
        return Q(np.sum(x.v, axis=-1, keepdims=True) + const, x.scale, np.where(free, np.nan, known))

    def exp(self, x):
        return self.lookup(x, np.exp, signed=False)

    def reciprocal(self, x):
        return self.lookup(x, lambda a: 1 / np.maximum(a, 1e-9), signed=False, singular=True)

    def rsqrt(self, x):
        return self.lookup(x, lambda a: 1 / np.sqrt(np.maximum(a, 1e-9)), signed=False, singular=True)

    def relu(self, x):
        return self.lookup(x, lambda a: np.maximum(a, 0), signed=False)

    def gelu(self, x):
        return self.lookup(x, lambda a: torch.nn.functional.gelu(torch.as_tensor(a)).numpy())

    def gelu_grad(self, x):
        raise NotImplementedError("concrete: no training step (finetune is not supported)")

    def step(self, x):
        raise NotImplementedError("concrete: no training step (finetune is not supported)")

    def silu(self, x):
        return self.lookup(x, lambda a: torch.nn.functional.silu(torch.as_tensor(a)).numpy())

    def softmax(self, x):
        """exp(x - row max) as one lookup per entry, on the scores re-quantized (one lookup per entry)
        so that the row max (Concrete's maximum, ~1 lookup per comparison) is narrow; the row sum's
        reciprocal, one lookup per row; their product, Concrete's two lookups per entry. Known
        entries (the causal mask's -30) stay known: their exp is 0 on any `n_bits` grid."""
        x = self._narrow(self._value(x))
        if self.mode == "calibrate":
            row_max = np.where(x.free(), x.v, -np.inf).max(axis=-1, keepdims=True)
        else:
            row_max = row_maxima(x.v, x.free())
        shifted = Q(x.v - row_max, x.scale, x.fixed)  # only its free entries are looked up
        e = self.lookup(shifted, np.exp, signed=False)
        return self.mul(e, self.reciprocal(self.sum(e)))

    def poly(self, x, coeffs):
        return self.lookup(x, lambda a: np.polynomial.polynomial.polyval(a, coeffs))

    # lookups ------------------------------------------------------------------------------------

    def lookup(self, x, f, signed: bool = True, singular: bool = False, grid: float | None = None) -> Q:
        """`f` elementwise as one table lookup per input-dependent entry, its output on an `n_bits`
        grid (unsigned outputs use the sign bit too) over the calibrated output range, or on the
        given `grid` (a scale: the output is then as wide as that grid needs). For an `f` that blows
        up at 0 (`singular`), the range leaves out inputs below the accumulator's rounding step,
        which the table clips to its largest value. Unless `fuse_requant`, a wide accumulator is
        first re-quantized to `n_bits` by a lookup of its own, as in the public demo."""
        x = self._value(x)
        if not self.s.fuse_requant and f is not identity:
            x = self._narrow(x)
        i = self._next()
        known = ~x.free()
        fixed = np.where(known, f(np.where(known, x.fixed, 0.0)), np.nan)
        if self.mode == "calibrate":
            out = f(x.v)
            free = x.free()
            in_max = np.abs(x.v[free]).max(initial=0)
            ranged = free & (np.abs(x.v) >= in_max * 2.0**-self.s.rounding_bits) if singular else free
            self._record(i, in_max, np.abs(out[ranged]).max(initial=0))
            fixed[np.abs(fixed) < 1e-6 * self.ranges[i][1]] = 0.0  # below any grid: a known zero
            return Q(np.where(free, out, 0.0), 1.0, fixed, narrow=grid is None)
        out_max = self.ranges[i][1]
        if grid is None:
            top = 2 * self.qmax + 1 if not signed else self.qmax
            scale = max(out_max, 1e-12) / top
        else:
            scale, top = grid, max(math.ceil(out_max / grid), 1)
        fixed = np.round(fixed / scale) * scale  # known entries on the output grid
        lo = 0 if not signed else -top

        def table(a, s_in=x.scale):
            return np.clip(np.round(f(a * s_in) / scale), lo, top).astype(np.int64)

        fhe = concrete_fhe()

        def apply(t):  # rounding feeds the lookup directly, as Concrete requires
            if self.s.rounding != "none":
                # overflow protection off: in Concrete 2.11, when rounding narrows the value by a bit
                # (int8 -> int7), the protected path feeds the table twice the value (simulation and
                # the clear model then disagree); `qclear_abs_error` would show a wrapped top value
                t = fhe.round_bit_pattern(t, lsbs_to_remove=self.rounders[i], overflow_protection=False)
            return fhe.univariate(table)(t)

        out = on_free(x.free(), apply, x.v)
        return Q(out, scale, fixed, narrow=grid is None)

    # products -----------------------------------------------------------------------------------

    def _product(self, p: Product, needed: np.ndarray) -> Q:
        """`a @ b` on the `needed` output entries (zeros elsewhere), by squares of sums, one matrix
        (head) at a time."""
        a, b = p.a, p.b
        shape = a_shape(p)
        needed = np.broadcast_to(needed, shape)
        fixed = np.where(needed, np.nan, 0.0)
        if self.mode == "calibrate":
            return Q(np.where(needed, a.v @ b.v, 0.0), 1.0, fixed)
        if (np.nan_to_num(a.fixed) != 0).any() or (np.nan_to_num(b.fixed) != 0).any():
            raise NotImplementedError("concrete: a product with known non-zero entries")
        if a.shape[:-2] != b.shape[:-2]:
            raise NotImplementedError("concrete: a batched product needs operands of the same batch shape")
        m, k, n = shape[-2], a.shape[-1], shape[-1]
        heads = math.prod(shape[:-2])
        av, bv = a.v.reshape(heads, m, k), b.v.reshape(heads, k, n)
        used = np.isnan(a.fixed).reshape(heads, m, k)  # terms with a known-zero a are skipped
        need = needed.reshape(heads, m, n)
        return Q(matrix_product(av, bv, used, need).reshape(shape), a.scale * b.scale / 2, fixed)

    def _mul_private(self, a: Q, b: Q) -> Q:
        """Elementwise product of two private values (`elementwise_product`: 2 PBS per entry) on the
        entries that neither operand fixes to zero."""
        a, b = self._narrow(a), self._narrow(b)
        shape = np.broadcast_shapes(a.shape, b.shape)
        fa, fb = np.broadcast_to(a.fixed, shape), np.broadcast_to(b.fixed, shape)
        zero = (fa == 0) | (fb == 0)
        if ((~np.isnan(fa) | ~np.isnan(fb)) & ~zero).any():
            raise NotImplementedError("concrete: a product with known non-zero entries")
        fixed = np.where(zero, 0.0, np.nan)
        if self.mode == "calibrate":
            return Q(np.where(zero, 0.0, a.v * b.v), 1.0, fixed)
        va, vb = a.v + np.zeros(shape, dtype=np.int64), b.v + np.zeros(shape, dtype=np.int64)
        return Q(on_free(~zero, elementwise_product, va, vb), a.scale * b.scale, fixed)

    def _mul_public(self, a: Q, b: np.ndarray) -> Q:
        """A public multiplier: a uniform one (besides zeros) folds into the scale; others are
        quantized to `n_bits` and multiply the integers, no PBS either way."""
        nonzero = b[b != 0]
        fixed = np.where(b == 0, 0.0, a.fixed * b)
        if not nonzero.size:
            return Q(a.v * 0, 1.0, fixed)
        uniform = bool(np.all(nonzero == nonzero[0]))
        if uniform:
            mult, scale = (b != 0).astype(np.int64), a.scale * float(nonzero[0])
        else:
            step = np.abs(b).max() / self.qmax
            mult, scale = np.round(b / step).astype(np.int64), a.scale * step
        if self.mode == "calibrate":
            return Q(a.v * mult * (scale / a.scale), 1.0, fixed, a.narrow and uniform)
        zeroed = bool(np.all(a.fixed[b == 0] == 0))  # the mask's zeros are known zeros already
        v = a.v if uniform and zeroed else a.v * mult
        return Q(v, scale, fixed, a.narrow and uniform)

    def _affine(self, a, b, sign: int) -> Q:
        """`a + sign * b`: `b` public (a value with no input-dependent entry counts as public), or
        private on the same grid as `a`, or aligned to it first (`_align`)."""
        a = self._value(a)
        if isinstance(b, (Q, Product)):
            b = known_as_public(self._value(b))
            if isinstance(b, Q) and not a.free().any():  # a known a: -(b - a) or b + a
                return (
                    self._negated(self._affine(b, torch.as_tensor(a.fixed), -1)) if sign < 0 else self._affine(b, a, 1)
                )
        if isinstance(b, Q):
            a, b = self._align(a, b)
            fixed = a.fixed + sign * b.fixed
            free = np.isnan(fixed)  # a known entry meeting a free one joins the integers
            const = np.where(free, np.nan_to_num(a.fixed) + sign * np.nan_to_num(b.fixed), 0.0)
            return Q(a.v + sign * b.v + self._ints(const, a.scale), a.scale, fixed)
        b = np.broadcast_to(np.asarray(b.numpy() if isinstance(b, torch.Tensor) else b, dtype=np.float64), a.shape)
        const = np.where(a.free(), sign * b, 0.0)
        return Q(a.v + self._ints(const, a.scale), a.scale, a.fixed + sign * b)

    def _align(self, a: Q, b: Q) -> tuple[Q, Q]:
        """`a` and `b` on one grid, for a sum: a narrow operand (an input or a lookup's output) is
        mapped onto the other's grid by a lookup, one PBS per entry, keeping the finer resolution;
        with both or neither narrow, `b` goes onto `a`'s. The choice is structural (the same in
        every mode: calibration does not know the scales yet, so even equal grids pay the lookup)."""
        if a.narrow and not b.narrow:
            return self.lookup(a, identity, grid=b.scale), b
        return a, self.lookup(b, identity, grid=a.scale)

    def _negated(self, q: Q) -> Q:
        return Q(-q.v, q.scale, -q.fixed, q.narrow)

    # helpers ------------------------------------------------------------------------------------

    def _value(self, x) -> Q:
        return self._product(x, needed=np.ones(1, dtype=bool)) if isinstance(x, Product) else x

    def _narrow(self, x: Q) -> Q:
        """`x` on the `n_bits` grid: an identity lookup (re-quantization) unless it is already there."""
        return x if x.narrow else self.lookup(x, identity)

    def _ints(self, values: np.ndarray, scale: float):
        """Public values on a value's grid: integers, or the floats themselves when calibrating."""
        return values if self.mode == "calibrate" else np.round(values / scale).astype(np.int64)

    def _new(self, v, scale, shape) -> Q:
        return Q(v, scale, np.full(shape, np.nan))

    def _next(self) -> int:
        self.calls += 1
        return self.calls - 1

    def _record(self, i: int, in_max: float, out_max: float, top: float = -np.inf):
        """Slot `i`: largest |input|, largest |output|, largest signed input (softmax's shift)."""
        while len(self.ranges) <= i:
            self.ranges.append([0.0, 0.0, -np.inf])
        r = self.ranges[i]
        r[0], r[1], r[2] = max(r[0], float(in_max)), max(r[1], float(out_max)), max(r[2], top)


def identity(t):
    return t
