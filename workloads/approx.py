"""Polynomial approximations that HE/MPC-friendly variants use, fitted once in float64."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.polynomial import Polynomial


def chebyshev_fit(fn: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, degree: int) -> list[float]:
    """Least-squares fit of `fn` on Chebyshev nodes of [lo, hi]; power-basis coefficients, low first."""
    n = 8 * (degree + 1)
    nodes = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    return [float(c) for c in Polynomial.fit(nodes, fn(nodes), degree).convert().coef]


def activation(ops: Any, form: str, x, exact: Callable, fitted: Callable[[], list[float]], quad: Sequence[float]):
    """An MLP activation in one of its forms (GELU's and SiLU's variants): `exact` (the backend's
    op), `poly` (the `fitted` coefficients), `quad` (these coefficients), `relu`."""
    if form == "exact":
        return exact(x)
    if form == "poly":
        return ops.poly(x, fitted())
    if form == "quad":
        return ops.poly(x, quad)
    return ops.relu(x)
