"""Circuit building blocks on raw integers: the same code runs on int64 arrays and Concrete tracers.

`quant` keeps the bookkeeping (scales, known entries); these functions only see integers and
say what each costs in programmable bootstraps (PBS).
"""

from __future__ import annotations

import warnings

import numpy as np


def concrete_fhe():
    """`concrete.fhe`, imported without the pkg_resources deprecation warning its __init__ prints
    (setuptools<81 is pinned so that the import works at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from concrete import fhe
    return fhe


def cols(x, start: int, stop: int):
    """`x[..., start:stop]` (Concrete's tracers take no Ellipsis)."""
    return x[(slice(None),) * (x.ndim - 1) + (slice(start, stop),)]


def swap_halves(x):
    """The two halves of the last dim swapped, by slicing and concatenation: no PBS."""
    half = x.shape[-1] // 2
    return np.concatenate((cols(x, half, x.shape[-1]), cols(x, 0, half)), axis=-1)


def on_free(free: np.ndarray, fn, *values):
    """`fn` on the entries marked `free` of `values` (same shape), zeros elsewhere: the free entries
    are gathered into one vector and scattered back by static indexing, other entries zeroed by a
    clear 0/1 product (no PBS), so `fn` pays for them alone. (Concrete 2.11 refuses to assign into
    or concatenate with zeros whose signedness differs from the results'.)"""
    if free.all():
        return fn(*values)
    index = np.flatnonzero(free)
    results = fn(*(np.reshape(v, -1)[index] for v in values))
    back = np.zeros(free.size, dtype=np.int64)  # known entries read result 0, then get zeroed
    back[index] = np.arange(len(index))
    return (results[back] * free.reshape(-1).astype(np.int64)).reshape(free.shape)


def row_maxima(values, free: np.ndarray):
    """The max of each row's `free` entries, shape (..., 1): one ReLU lookup per comparison,
    max(m, c) = m + relu(c - m), entry by entry (vectorizing over rows with a mask made Concrete
    2.11 fail to compile mixed-sign sums)."""
    relu = concrete_fhe().univariate(lambda d: np.maximum(d, 0))
    rows = free.reshape(-1, free.shape[-1])
    flat = np.reshape(values, rows.shape)
    maxima = []
    for r, cols in enumerate(rows):
        m = flat[r, int(np.flatnonzero(cols)[0])]
        for c in np.flatnonzero(cols)[1:]:
            m = m + relu(flat[r, int(c)] - m)
        maxima.append(np.reshape(m, 1))
    return np.concatenate(tuple(maxima)).reshape(free.shape[:-1] + (1,))


def elementwise_product(a, b):
    """a * b as floor((a + b)^2 / 4) - floor((a - b)^2 / 4), exact since both squares have the same
    residue mod 4: two lookups per entry, as Concrete's own multiplication, which in 2.11 gives wrong
    results when one operand is signed and the other unsigned (as centred x 1/std in a LayerNorm)."""
    quarter_square = concrete_fhe().univariate(lambda t: t * t // 4)
    return quarter_square(a + b) - quarter_square(a - b)


def matrix_product(av, bv, used: np.ndarray, need: np.ndarray):
    """2 (av @ bv) on the `need` entries (H, m, n; zeros elsewhere), from the terms `used` (H, m, k),
    as sum_t (a_t + b_t)^2 - sum_t a_t^2 - sum_t b_t^2: one square lookup per product term plus one
    per operand entry (each square is reused by every row or column it meets), against two per
    term for Concrete's own multiplication. Vectorized over heads and rows, so the circuit stays
    small and compiles fast."""
    heads, m, k = used.shape
    n = need.shape[-1]
    sq = concrete_fhe().univariate(np.square)
    terms = need[:, :, None, :] & used[:, :, :, None]  # (H, m, k, n): the products computed
    sums = np.reshape(av, (heads, m, k, 1)) + np.reshape(bv, (heads, 1, k, n))  # every a + b: no PBS
    pairs = np.sum(on_free(terms, sq, sums), axis=2)  # (H, m, n)
    a_norms = np.sum(on_free(used, sq, av), axis=2, keepdims=True)  # (H, m, 1)
    b_norms = used.astype(np.int64) @ sq(bv)  # (H, m, n): each row sums the b^2 of its own terms
    return pairs - (a_norms + b_norms) * need.astype(np.int64)  # entries not needed stay 0: no wider range
