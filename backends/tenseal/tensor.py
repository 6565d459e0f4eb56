"""Packed CKKS matrices: one ciphertext per matrix, rows in slot blocks, heads in column windows.

Layout: row i of a (seq, width) matrix is at slots [i*B, i*B + width) (B: a power of two, the
block); the heads of a split (h, seq, hd) matrix are column windows of stride hd, so splitting and
merging heads is free and every op serves all heads at once. Slots outside a matrix's footprint
are zero unless `junk` says otherwise; ops that need zeros there (sums, products with rotations)
clean them with a 0/1 mask, which costs one level.

Why this packing (rotations per op; P = next power of two of the input width, n = seq):
- `linear` (ciphertext x plaintext): diagonal method with baby-step giant-step over the P
  generalized diagonals of W, after replicating each row with period P across its block:
  log2(B/P) + (g - 1) + (P/g - 1) rotations with g ~ sqrt(P), independent of seq and of d_out,
  and one level. Row-per-ciphertext (TenSEAL's `matmul`) costs seq * d_in rotations instead.
- `qk_matmul` (ciphertext x ciphertext): n shifted products q * k[(i+s) mod n], each summed over
  its head window (log2 hd rotations) and masked into position s: scores are stored in a
  *diagonal* layout, row i slot s = score(i, (i+s) mod n). 2 levels, n (log2 hd + 2) + 1 rotations.
  Keys are doubled (rows n..2n-1 repeat 0..n-1) so that a row shift is one rotation, no mask;
  when seq * B fills the slots exactly, rotations are cyclic over rows already.
- `av_matmul`: the same shifts in reverse: diagonal s of the weights broadcast over the head
  window (log2 hd rotations) times v shifted by s rows. 2 levels, n (log2 hd + 2) + 1 rotations.
- row sums (softmax / LayerNorm): replicate within the window, then log2 P rotate-and-adds: the
  sum lands in every slot of the window (a broadcastable column), 0 levels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from backends.tenseal.engine import Ct, Engine


def pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclass(frozen=True)
class Weight:
    """A server-held plaintext tensor; `key` names it for the encoded-plaintext cache."""

    key: str
    value: np.ndarray


@dataclass
class Mat:
    """A packed matrix. kind: `row` (seq, width), `diag` (seq, seq) in diagonal layout, or `rep`
    (seq, 1), its value replicated over slots [0, valid) of each window."""

    ct: Ct
    kind: str
    width: int
    heads: int
    stride: int
    split: bool
    valid: int
    junk: bool = False


@dataclass(frozen=True)
class Transposed:
    """A lazy transpose: only consumed by `matmul` (keys) or broadcasting adds (gaussian)."""

    mat: Mat


class Packer:
    """Ops on packed matrices of one cell: `n` rows, block `B`, one engine."""

    def __init__(self, engine: Engine, rows: int, block: int):
        self.e, self.n, self.B = engine, rows, block
        self._diags: dict[tuple, np.ndarray] = {}

    # placement
    def footprint(self, m: Mat) -> int:
        return {"row": m.width, "diag": self.n, "rep": m.valid}[m.kind]

    def _slots(self, blocks: np.ndarray) -> np.ndarray:
        """(n, B) per-block values -> the slot vector."""
        out = np.zeros(self.e.slots)
        out[: self.n * self.B] = blocks.reshape(-1)
        return out

    def place(self, m: Mat, value) -> np.ndarray:
        """A public value broadcast to `m`'s logical shape, in `m`'s slots (zeros elsewhere)."""
        h, n, fw = m.heads, self.n, self.footprint(m)
        logical = (n, 1) if m.kind == "rep" else (n, n) if m.kind == "diag" else (n, m.width)
        v = np.asarray(value, dtype=np.float64)
        if m.split:
            v = np.broadcast_to(v, (h, *logical))
        else:
            v = np.broadcast_to(v, (n, logical[1] * h)).reshape(n, h, logical[1]).transpose(1, 0, 2)
        blocks = np.zeros((n, self.B))
        for t in range(h):
            cols = slice(t * m.stride, t * m.stride + fw)
            if m.kind == "row":
                blocks[:, cols] = v[t]
            elif m.kind == "rep":
                blocks[:, cols] = v[t][:, :1]
            else:  # diag: slot s of row i holds (i, (i + s) mod n)
                idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
                blocks[:, cols] = np.take_along_axis(v[t], idx, axis=1)
        return self._slots(blocks)

    def mask(self, m: Mat) -> np.ndarray:
        return self.place(m, 1.0)

    def encrypt(self, x: np.ndarray) -> Mat:
        n, width = x.shape
        blocks = np.zeros((n, self.B))
        blocks[:, :width] = x
        return Mat(self.e.encrypt(self._slots(blocks)), "row", width, 1, self.B, False, width)

    def decrypt(self, m: Mat) -> np.ndarray:
        slots = self.e.decrypt(m.ct)[: self.n * self.B].reshape(self.n, self.B)
        fw = 1 if m.kind == "rep" else self.footprint(m)
        out = np.stack([slots[:, t * m.stride : t * m.stride + fw] for t in range(m.heads)])
        if m.kind == "diag":
            idx = (np.arange(self.n)[:, None] + np.arange(self.n)[None, :]) % self.n
            back = np.empty_like(out)
            for t in range(m.heads):
                np.put_along_axis(back[t], idx, out[t], axis=1)
            out = back
        return out if m.split else out.transpose(1, 0, 2).reshape(self.n, -1)

    # level-consuming helpers
    def clean(self, m: Mat) -> Mat:
        if not m.junk:
            return m
        return replace(
            m,
            ct=self.e.mul_plain(m.ct, self.mask(m), key=("mask", m.kind, m.width, m.valid, m.heads, m.stride)),
            junk=False,
        )

    def _rotsum(self, ct: Ct, span: int, sign: int) -> Ct:
        """ct + rot(ct, sign) + ... doubling up to `span` (a power of two)."""
        step = 1
        while step < span:
            ct = self.e.add(ct, self.e.rotate(ct, sign * step))
            step *= 2
        return ct

    def rowsum(self, m: Mat) -> Mat:
        """Sum over the last dim, replicated over the window: a `rep` value, no level."""
        m = self.clean(m)
        fw = self.footprint(m)
        span, room = pow2(fw), m.stride
        ct, filled = m.ct, span
        while 2 * filled <= room:
            ct = self.e.add(ct, self.e.rotate(ct, -filled))
            filled *= 2
        ct = self._rotsum(ct, span, 1)
        return Mat(ct, "rep", fw, m.heads, m.stride, m.split, filled - span + 1, junk=True)

    def widen(self, m: Mat, need: int) -> Mat:
        """A `rep` valid over at least `need` slots: keep the window's first slot, re-replicate."""
        if m.valid >= need:
            return m
        first = replace(m, valid=1)
        ct = self.e.mul_plain(m.ct, self.mask(first), key=("first", m.heads, m.stride))
        span = pow2(need)
        if span > m.stride:
            raise ValueError(f"a column of width {need} does not fit a head window of {m.stride} slots")
        return replace(m, ct=self._rotsum(ct, span, -1), valid=span, junk=False)

    # products
    def _diag(self, key: str, w: np.ndarray, r: int, shift: int) -> np.ndarray:
        """Generalized diagonal r of W (in, out), padded to P rows, rolled right by `shift`."""
        cached = self._diags.get((key, r))
        if cached is None:
            p, out = pow2(w.shape[0]), w.shape[1]
            padded = np.zeros((p, out))
            padded[: w.shape[0]] = w
            block = np.zeros(self.B)
            block[shift : shift + out] = padded[(np.arange(out) + r) % p, np.arange(out)]
            cached = self._diags[(key, r)] = self._slots(np.tile(block, (self.n, 1)))
        return cached

    def linear(self, x: Mat, w: Weight, b: Weight | None) -> Mat:
        if x.split or x.kind != "row":
            raise ValueError("linear takes a (seq, d_in) matrix")
        d_in, d_out = w.value.shape
        p = pow2(d_in)
        if self.B < p + d_out - 1:
            raise ValueError(f"block {self.B} too small for a {d_in}x{d_out} product")
        x = self.clean(x)
        ct, filled = self.e.ensure(x.ct, 1), p
        while filled < self.B:
            ct = self.e.add(ct, self.e.rotate(ct, -filled))
            filled *= 2
        g = pow2(int(np.ceil(np.sqrt(p))))
        baby = [self.e.rotate(ct, b) for b in range(g)]
        acc = None
        for k in range(p // g):
            terms = [(baby[b], self._diag(w.key, w.value, k * g + b, k * g), (w.key, k * g + b)) for b in range(g)]
            terms = [t for t in terms if t[1].any()]
            if not terms:
                continue
            z = self.e.dot_plain(*map(list, zip(*terms, strict=True)))
            z = self.e.rotate(z, k * g)
            acc = z if acc is None else self.e.add(acc, z)
        y = Mat(acc, "row", d_out, 1, self.B, False, d_out)
        return y if b is None else replace(y, ct=self.e.add_plain(y.ct, self.place(y, b.value)))

    def _doubled(self, ct: Ct) -> Ct:
        """Rows n..2n-1 repeat rows 0..n-1, so a cyclic row shift is one rotation (nothing to do
        when the rows fill every slot: rotations are cyclic already)."""
        if self.n * self.B == self.e.slots:
            return ct
        return self.e.add(ct, self.e.rotate(ct, -self.n * self.B))

    def _window_start(self, m: Mat) -> np.ndarray:
        return self.mask(Mat(m.ct, "rep", 1, m.heads, m.stride, m.split, 1))

    def qk(self, q: Mat, k: Mat) -> Mat:
        """q @ k^T for every head: scores in the diagonal layout."""
        if q.kind != "row" or k.kind != "row" or self.n > q.stride:
            raise ValueError("qk needs (seq, hd) matrices with seq <= head window")
        q, k = self.clean(q), self.clean(k)
        q, k = replace(q, ct=self.e.ensure(q.ct, 2)), replace(k, ct=self.e.ensure(k.ct, 2))
        k2, span, start = self._doubled(k.ct), pow2(q.width), self._window_start(q)
        acc = None
        for s in range(self.n):
            prod = self._rotsum(self.e.mul(q.ct, self.e.rotate(k2, s * self.B)), span, 1)
            placed = self.e.rotate(self.e.mul_plain(prod, start, key=("start", q.heads, q.stride)), -s)
            acc = placed if acc is None else self.e.add(acc, placed)
        return Mat(acc, "diag", self.n, q.heads, q.stride, q.split, self.n)

    def av(self, p: Mat, v: Mat) -> Mat:
        """weights (diagonal layout) @ v for every head."""
        if p.kind != "diag" or v.kind != "row":
            raise ValueError("av needs diagonal-layout weights and a (seq, hd) matrix")
        v, p = self.clean(v), replace(p, ct=self.e.ensure(p.ct, 2))
        v = replace(v, ct=self.e.ensure(v.ct, 1))
        v2, span, start = self._doubled(v.ct), pow2(v.width), self._window_start(v)
        acc = None
        for s in range(self.n):
            column = self.e.mul_plain(self.e.rotate(p.ct, s), start, key=("start", v.heads, v.stride))
            term = self.e.mul(self._rotsum(column, span, -1), self.e.rotate(v2, s * self.B))
            acc = term if acc is None else self.e.add(acc, term)
        return replace(v, ct=acc, junk=False)

    def columns_to_diag(self, m: Mat) -> Mat:
        """The transpose of a (seq, 1) column, broadcast down the rows, in the diagonal layout."""
        m = self.widen(m, self.n)
        shifted = self._doubled(self.e.ensure(m.ct, 1))
        diag = Mat(m.ct, "diag", self.n, m.heads, m.stride, m.split, self.n)
        cts, masks, keys = [], [], []
        for s in range(self.n):
            one = np.zeros((self.n, self.n))
            one[np.arange(self.n), (np.arange(self.n) + s) % self.n] = 1.0
            cts.append(self.e.rotate(shifted, s * self.B))
            masks.append(self.place(diag, one))
            keys.append(("coldiag", m.heads, m.stride, s))
        return replace(diag, ct=self.e.dot_plain(cts, masks, keys))
