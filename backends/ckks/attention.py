"""The attention products on packed matrices: q @ k^T and weights @ v, per head group.

- `qk` (ciphertext x ciphertext): n shifted products q * k[(i+s) mod n], each summed over its head
  window (log2 hd rotations) and masked into position s: scores are stored in a *diagonal* layout,
  row i slot s = score(i, (i+s) mod n). 2 levels, n (log2 hd + 2) + 1 rotations. Keys are doubled
  (rows n..2n-1 repeat 0..n-1) so that a row shift is one rotation, no mask; when seq * B fills the
  slots exactly, rotations are cyclic over rows already.
- `av`: the same shifts in reverse: diagonal s of the weights broadcast over the head window
  (log2 hd rotations) times v shifted by s rows. 2 levels, n (log2 hd + 2) + 1 rotations.
The n shifts take ~2 sqrt(n) distinct rotation steps (baby and giant steps): keys are tens of MB.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from backends.ckks.engine import Ct
from backends.ckks.tensor import Mat, Packer, pow2


def doubled(p: Packer, ct: Ct, block: int) -> Ct:
    """Rows n..2n-1 repeat rows 0..n-1, so a cyclic row shift is one rotation (nothing to do
    when the rows fill every slot: rotations are cyclic already)."""
    if p.n * block == p.e.slots:
        return ct
    if 2 * p.n * block > p.e.slots:
        raise ValueError(f"shifting {p.n} rows of {block} slots needs {2 * p.n * block} slots")
    return p.e.add(ct, p.e.rotate(ct, -p.n * block))


def window_start(p: Packer, m: Mat) -> np.ndarray:
    return p.mask(Mat(m.cts, "rep", 1, m.heads, m.stride, m.split, 1, m.block))[0]


def giant(p: Packer) -> int:
    return pow2(int(np.ceil(np.sqrt(p.n))))


def shifts(p: Packer, ct: Ct, unit: int):
    """rot(ct, s * unit) for s < n, from ~2 sqrt(n) distinct steps (baby b < g, giant a * g):
    rotation keys are tens of MB each, so steps are kept few."""
    g = giant(p)
    baby = [p.e.rotate(ct, b * unit) for b in range(min(g, p.n))]
    for s in range(p.n):
        a, b = divmod(s, g)
        yield baby[b] if a == 0 else p.e.rotate(baby[b], a * g * unit)


def gather(p: Packer, terms, unit: int) -> Ct:
    """sum over s < n of rot(terms[s], -s * unit), with the steps of `shifts`."""
    g, acc, inner = giant(p), None, None
    for s, x in enumerate(terms):
        a, b = divmod(s, g)
        moved = p.e.rotate(x, -b * unit)
        inner = moved if b == 0 else p.e.add(inner, moved)
        if b == g - 1 or s == p.n - 1:
            outer = p.e.rotate(inner, -a * g * unit)
            acc = outer if acc is None else p.e.add(acc, outer)
    return acc


def qk(p: Packer, q: Mat, k: Mat) -> Mat:
    """q @ k^T for every head: scores in the diagonal layout, per head group."""
    q, k = p.compact(q), p.compact(k)
    if q.kind != "row" or k.kind != "row" or (q.block, q.groups, q.stride) != (k.block, k.groups, k.stride):
        raise ValueError("qk needs (seq, hd) matrices laid out alike")
    if q.heads > 1:  # one head's junk (a tall linear's fold) lies past its span, which the sums skip
        q, k = p.clean(q), p.clean(k)
    span, start, key = pow2(q.width), window_start(p, q), ("start", q.heads_per_ct, q.stride, q.block)
    cts = []
    for qc, kc in zip(q.cts, k.cts, strict=True):
        qc, kc = p.e.ensure(qc, 2), p.e.ensure(kc, 2)
        terms = (
            p.e.mul_plain(p.rotsum(p.e.mul(qc, shifted), span, 1), start, key=key)
            for shifted in shifts(p, doubled(p, kc, q.block), q.block)
        )
        cts.append(gather(p, terms, 1))
    return replace(q, cts=tuple(cts), kind="diag", width=p.n, valid=p.n, junk=False)


def av(p: Packer, w: Mat, v: Mat) -> Mat:
    """weights `w` (diagonal layout) @ v for every head, per head group."""
    v = p.compact(v)
    if w.kind != "diag" or v.kind != "row" or (w.block, w.groups, w.stride) != (v.block, v.groups, v.stride):
        raise ValueError("av needs diagonal-layout weights and a (seq, hd) matrix laid out alike")
    if v.heads > 1:  # as in `qk`: one head's junk is never summed
        v = p.clean(v)
    span, start, key = pow2(v.width), window_start(p, v), ("start", v.heads_per_ct, v.stride, v.block)
    cts = []
    for wc, vc in zip(w.cts, v.cts, strict=True):
        wc, vc, acc = p.e.ensure(wc, 2), p.e.ensure(vc, 1), None
        pairs = zip(shifts(p, wc, 1), shifts(p, doubled(p, vc, v.block), v.block), strict=True)
        for diagonal, shifted in pairs:
            column = p.rotsum(p.e.mul_plain(diagonal, start, key=key), span, -1)
            term = p.e.mul(column, shifted)
            acc = term if acc is None else p.e.add(acc, term)
        cts.append(acc)
    return replace(v, cts=tuple(cts), junk=False)


def columns_to_diag(p: Packer, m: Mat) -> Mat:
    """The transpose of a (seq, 1) column, broadcast down the rows, in the diagonal layout."""
    m = p.widen(p.compact(m), p.n)
    diag = replace(m, kind="diag", width=p.n, valid=p.n)
    cts = []
    for ct in m.cts:
        acc = None
        for s, rotated in enumerate(shifts(p, doubled(p, p.e.ensure(ct, 1), m.block), m.block)):
            one = np.zeros((p.n, p.n))
            one[np.arange(p.n), (np.arange(p.n) + s) % p.n] = 1.0
            key = ("coldiag", m.heads_per_ct, m.stride, m.block, s)
            term = p.e.mul_plain(rotated, p.place(diag, one)[0], key=key)
            acc = term if acc is None else p.e.add(acc, term)
        cts.append(acc)
    return replace(diag, cts=tuple(cts), junk=False)
