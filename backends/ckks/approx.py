"""Polynomial stand-ins for exp, 1/x and 1/sqrt(x) under CKKS, on stated input ranges.

- exp on [lo, hi]: x is mapped to u in [-1, 1] (one level; in x itself the power-basis terms
  overflow the scale's headroom), a Chebyshev fit q(u) ~ exp(x / 2^r) of degree `exp_degree` is
  squared r times (exp(x) = exp(x / 2^r)^(2^r)): depth 1 + ceil(log2 degree) + 1 + r.
- 1/x on [lo, hi]: Goldschmidt. With t = x / hi in [lo/hi, 1] and e = 1 - t,
  1/t = (1 + e)(1 + e^2)(1 + e^4)...; k factors leave a relative error e^(2^k) <= (1 - lo/hi)^(2^k).
  k is the smallest giving 2^-`recip_bits`. Depth k + 1.
- 1/sqrt(x) on [lo, hi]: Chebyshev fit of degree `rsqrt_degree`, then `rsqrt_newton` Newton
  steps y <- y (3 - x y^2) / 2 (3 levels each).
Polynomials are evaluated in the power basis with powers by squaring: depth ceil(log2 degree) + 1.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import numpy as np

from workloads.approx import chebyshev_fit

TINY = 2.0**-40


class Arith(Protocol):
    def mul(self, a, b): ...
    def add(self, a, b): ...
    def square(self, a): ...


def poly(ar: Arith, x, coeffs) -> object:
    """sum c_i x^i in the power basis: x^i by squarings and one product per set bit."""
    degree = max((i for i, c in enumerate(coeffs) if c != 0), default=0)
    powers = {1: x}
    p = 1
    while 2 * p <= degree:
        powers[2 * p] = ar.square(powers[p])
        p *= 2
    acc = None
    for i in range(1, degree + 1):
        if abs(coeffs[i]) < TINY:  # would encode to a zero plaintext; its term is below the noise
            continue
        term = None
        for bit in (1 << b for b in range(i.bit_length())):
            if i & bit:
                term = powers[bit] if term is None else ar.mul(term, powers[bit])
        term = ar.mul(term, float(coeffs[i]))
        acc = term if acc is None else ar.add(acc, term)
    if acc is None:
        raise ValueError("a constant polynomial has no ciphertext to carry")
    return ar.add(acc, float(coeffs[0])) if coeffs[0] else acc


def on_range(ar: Arith, x, lo: float, hi: float):
    """u = (x - mid) / half in [-1, 1]: power-basis coefficients stay small there (one level)."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return ar.add(ar.mul(x, 1 / half), -mid / half)


@functools.cache
def exp_coeffs(lo: float, hi: float, degree: int, squarings: int) -> list[float]:
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return chebyshev_fit(lambda u: np.exp((mid + half * u) / 2**squarings), -1.0, 1.0, degree)


def exp(ar: Arith, x, lo: float, hi: float, degree: int, squarings: int):
    y = poly(ar, on_range(ar, x, lo, hi), exp_coeffs(lo, hi, degree, squarings))
    for _ in range(squarings):
        y = ar.square(y)
    return y


def goldschmidt_steps(lo: float, hi: float, bits: int) -> int:
    """Factors k with (1 - lo/hi)^(2^k) <= 2^-bits."""
    e0 = 1 - lo / hi
    if e0 <= 0:
        return 1
    return max(1, math.ceil(math.log2(bits * math.log(2) / -math.log(e0))))


def reciprocal(ar: Arith, x, lo: float, hi: float, bits: int):
    e = ar.add(ar.mul(x, -1 / hi), 1.0)
    y = ar.add(ar.mul(x, -1 / hi**2), 2 / hi)  # (1 + e) / hi
    for _ in range(goldschmidt_steps(lo, hi, bits) - 1):
        e = ar.square(e)
        y = ar.mul(y, ar.add(e, 1.0))
    return y


@functools.cache
def rsqrt_coeffs(lo: float, hi: float, degree: int) -> list[float]:
    return chebyshev_fit(lambda t: 1 / np.sqrt(t), lo, hi, degree)


def rsqrt(ar: Arith, x, lo: float, hi: float, degree: int, newton: int):
    y = poly(ar, x, rsqrt_coeffs(lo, hi, degree))
    half_x = ar.mul(x, -0.5)
    for _ in range(newton):
        y = ar.mul(y, ar.add(ar.mul(half_x, ar.square(y)), 1.5))
    return y


def exp_error(lo: float, hi: float, degree: int, squarings: int) -> float:
    """Largest error of the exp stand-in on [lo, hi], relative to exp(hi) (its largest value)."""
    x = np.linspace(lo, hi, 4001)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    y = np.polynomial.polynomial.polyval((x - mid) / half, exp_coeffs(lo, hi, degree, squarings)) ** (2**squarings)
    return float(np.max(np.abs(y - np.exp(x))) / np.exp(hi))


def rsqrt_error(lo: float, hi: float, degree: int, newton: int) -> float:
    """Largest relative error of the 1/sqrt stand-in on [lo, hi]."""
    t = np.linspace(lo, hi, 4001)
    y = np.polynomial.polynomial.polyval(t, rsqrt_coeffs(lo, hi, degree))
    for _ in range(newton):
        y = y * (1.5 - 0.5 * t * y * y)
    return float(np.max(np.abs(y * np.sqrt(t) - 1)))
