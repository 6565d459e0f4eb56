"""Llama's head ops on packed split heads (column windows, `tensor`): rotary embeddings and the
copies of grouped-query attention's K/V heads. Costs per ciphertext (row tile or head group):

- `rotary`: x * cos + rotate_half(x) * sin. rotate_half within every window is two rotations of the
  whole ciphertext, by +hd/2 (read the second half, used in the first) and -hd/2 (the reverse),
  whose products with plaintexts folding the sign, the half-window mask and sin go into one dot
  product with x * cos: 2 rotations, 1 level. The plaintexts are zero outside the windows, so the
  result has no junk whatever the input had.
- `repeat`: output window j * times + g takes input window j. The input windows are rotated to
  the first of their group (window j moves by j (times - 1) hd) and masked there, all in one dot
  product (kv - 1 rotations, 1 level); the gap windows are then zero, so the `times` copies are
  rotate-and-adds by multiples of hd (log2 times rotations for a power of two, at most
  2 log2 times, no level). One K/V head (multi-query attention) needs no mask unless it carries
  junk: log2 times rotations, 0 levels. Heads compacted for the attention products (not the case
  in `llama_block`, which repeats them right after the projection) are laid back out by rows first.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from backends.ckks.engine import Ct
from backends.ckks.tensor import Mat, Packer


def digest(table: np.ndarray) -> str:
    """A public table's name in plaintext-cache keys."""
    return hashlib.sha1(np.ascontiguousarray(table, dtype=np.float64).tobytes()).hexdigest()[:16]


def rotary(p: Packer, m: Mat, cos: np.ndarray, sin: np.ndarray) -> Mat:
    """Rotary embedding of split heads (all heads share the (seq, hd) tables)."""
    if m.kind != "row" or not m.split or m.width % 2:
        raise ValueError("rotary takes split heads (h, seq, head_dim) with an even head_dim")
    half = m.width // 2
    first = np.arange(m.width) < half
    parts = ((0, cos), (half, np.where(first, -sin, 0.0)), (-half, np.where(first, 0.0, sin)))
    layout = ("rotary", m.width, m.heads, m.stride, m.block, m.groups)
    vectors = [p.place(m, table) for _, table in parts]
    keys = [(*layout, digest(table)) for _, table in parts]
    cts = []
    for t, ct in enumerate(m.cts):
        ct = p.e.ensure(ct, 1)  # refreshed once, not once per rotated copy
        rotated = [p.e.rotate(ct, step) for step, _ in parts]
        cts.append(p.e.dot_plain(rotated, [v[t] for v in vectors], [(*k, t) for k in keys]))
    return replace(m, cts=tuple(cts), junk=False)


def replicate(p: Packer, ct: Ct, times: int, unit: int) -> Ct:
    """Slot s copied to s + g * unit for g < times (those slots zero): doubling, then one
    rotate-and-add per set bit of `times` past the first."""
    acc, done, power, span = None, 0, ct, 1
    while span <= times:
        if times & span:
            moved = p.e.rotate(power, -done * unit)
            acc = moved if acc is None else p.e.add(acc, moved)
            done += span
        if 2 * span <= times:
            power = p.e.add(power, p.e.rotate(power, -span * unit))
        span *= 2
    return acc


def repeat(p: Packer, m: Mat, times: int) -> Mat:
    """(kv, seq, hd) split heads -> (kv * times, seq, hd), head j repeated as heads
    j * times .. (j + 1) * times - 1, windows of stride hd at the cell's block."""
    if m.kind != "row" or not m.split:
        raise ValueError("repeat_heads takes split heads (h, seq, head_dim)")
    if (m.block, m.groups) != (p.block, 1):  # compacted for the attention products: back to rows
        m = p.relayout(m, p.block, 1, m.width)
    kv, width = m.heads, m.width
    out = replace(m, heads=kv * times, stride=width, junk=False)
    if kv * times * width > m.block:
        raise ValueError(f"{kv * times} heads of {width} slots do not fit a {m.block}-slot block")
    masks = [p.place(out, (np.arange(kv * times) == j * times)[:, None, None]) for j in range(kv)]
    key = ("repeat", kv, times, width, m.stride, m.block)
    cts = []
    for t, ct in enumerate(m.cts):
        if kv > 1 or m.junk:
            ct = p.e.ensure(ct, 1)
            moved = [p.e.rotate(ct, j * (m.stride - times * width)) for j in range(kv)]
            ct = p.e.dot_plain(moved, [mask[t] for mask in masks], [(*key, j, t) for j in range(kv)])
        cts.append(replicate(p, ct, times, width))
    return replace(out, cts=tuple(cts))
