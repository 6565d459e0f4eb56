"""Packed CKKS matrices: rows in slot blocks, heads in column windows, rows tiled over ciphertexts.

Layout: row i of a (seq, width) matrix is at slots [r*B, r*B + width) of tile i // R, r = i % R
(B: the matrix's block, a power of two; R = rows per ciphertext: all of them when seq * B fits the
slots, else slots / B). The heads of a split (h, seq, hd) matrix are column windows of stride hd,
so splitting and merging heads is free and every op serves all heads at once. Slots outside a
matrix's footprint are zero unless `junk` says otherwise; ops that need zeros there (sums, products
with rotations) clean them with a 0/1 mask, which costs one level.

Blocks: a cell whose widest matrix fits one ciphertext at the cell's block (`Packer.block`, room
for a row replicated for the widest product) keeps every matrix there. A wider cell (GPT-2's
d_model at seq 128) tiles its wide matrices over ciphertexts at that block; the attention
products, which shift rows, take their (seq, head_dim) operands compacted into one ciphertext at
the smallest block that holds them (`compact`), and a linear map takes its input back at the
cell's block (`reblock`: one masked product and one rotation per row, one level).

Why this packing (rotations per op, per tile; P_in, P_out = next powers of two of d_in, d_out;
n = seq):
- `linear` (ciphertext x plaintext), d_out >= d_in: diagonal method with baby-step giant-step over
  the P_in generalized diagonals of W, after replicating each row with period P_in across its
  block: log2(B/P_in) + (g - 1) + (P_in/g - 1) rotations with g ~ sqrt(P_in), one level.
  d_out < d_in: the P_out diagonals of the (P_in, P_out) matrix, then log2(P_in/P_out)
  rotate-and-adds fold the partial sums: P_out products instead of P_in. Row-per-ciphertext
  (TenSEAL's `matmul`) costs seq * d_in rotations instead.
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

from backends.ckks.engine import Ct, Engine


def pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclass(frozen=True)
class Weight:
    """A server-held plaintext tensor; `key` names it for the encoded-plaintext cache."""

    key: str
    value: np.ndarray


@dataclass
class Mat:
    """A packed matrix over `cts` (row tiles) at `block` slots per row. kind: `row` (seq, width),
    `diag` (seq, seq) in diagonal layout, or `rep` (seq, 1), its value replicated over slots
    [0, valid) of each window."""

    cts: tuple[Ct, ...]
    kind: str
    width: int
    heads: int
    stride: int
    split: bool
    valid: int
    block: int
    junk: bool = False


@dataclass(frozen=True)
class Transposed:
    """A lazy transpose: only consumed by `matmul` (keys) or broadcasting adds (gaussian)."""

    mat: Mat


class Packer:
    """Ops on packed matrices of one cell: `n` rows, the cell's block `block`, one engine."""

    def __init__(self, engine: Engine, rows: int, block: int):
        self.e, self.n, self.block = engine, rows, block
        self._diags: dict[tuple, np.ndarray] = {}

    # placement
    def rows_per_ct(self, block: int) -> int:
        return min(self.n, self.e.slots // block)

    def footprint(self, m: Mat) -> int:
        return {"row": m.width, "diag": self.n, "rep": m.valid}[m.kind]

    def _tiles(self, blocks: np.ndarray) -> list[np.ndarray]:
        """(n, B) per-row values -> one slot vector per tile."""
        rows = self.rows_per_ct(blocks.shape[1])
        out = []
        for start in range(0, self.n, rows):
            vec = np.zeros(self.e.slots)
            part = blocks[start : start + rows].reshape(-1)
            vec[: part.size] = part
            out.append(vec)
        return out

    def place(self, m: Mat, value) -> list[np.ndarray]:
        """A public value broadcast to `m`'s logical shape, in `m`'s slots (zeros elsewhere), per tile."""
        h, n, fw = m.heads, self.n, self.footprint(m)
        logical = (n, 1) if m.kind == "rep" else (n, n) if m.kind == "diag" else (n, m.width)
        v = np.asarray(value, dtype=np.float64)
        if m.split:
            v = np.broadcast_to(v, (h, *logical))
        else:
            v = np.broadcast_to(v, (n, logical[1] * h)).reshape(n, h, logical[1]).transpose(1, 0, 2)
        blocks = np.zeros((n, m.block))
        for t in range(h):
            cols = slice(t * m.stride, t * m.stride + fw)
            if m.kind == "row":
                blocks[:, cols] = v[t]
            elif m.kind == "rep":
                blocks[:, cols] = v[t][:, :1]
            else:  # diag: slot s of row i holds (i, (i + s) mod n)
                idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
                blocks[:, cols] = np.take_along_axis(v[t], idx, axis=1)
        return self._tiles(blocks)

    def mask(self, m: Mat) -> list[np.ndarray]:
        return self.place(m, 1.0)

    def encrypt(self, x: np.ndarray) -> Mat:
        n, width = x.shape
        blocks = np.zeros((n, self.block))
        blocks[:, :width] = x
        cts = tuple(self.e.encrypt(v) for v in self._tiles(blocks))
        return Mat(cts, "row", width, 1, self.block, False, width, self.block)

    def decrypt(self, m: Mat) -> np.ndarray:
        rows = self.rows_per_ct(m.block)
        slots = np.concatenate([self.e.decrypt(ct)[: rows * m.block].reshape(rows, m.block) for ct in m.cts])
        slots = slots[: self.n]
        fw = 1 if m.kind == "rep" else self.footprint(m)
        out = np.stack([slots[:, t * m.stride : t * m.stride + fw] for t in range(m.heads)])
        if m.kind == "diag":
            idx = (np.arange(self.n)[:, None] + np.arange(self.n)[None, :]) % self.n
            back = np.empty_like(out)
            for t in range(m.heads):
                np.put_along_axis(back[t], idx, out[t], axis=1)
            out = back
        return out if m.split else out.transpose(1, 0, 2).reshape(self.n, -1)

    def mul_public(self, m: Mat, vectors: list[np.ndarray], key: tuple | None) -> tuple[Ct, ...]:
        """Each tile times its public vector (`key` + the tile's index names cacheable ones)."""
        return tuple(
            self.e.mul_plain(ct, v, key=None if key is None else (*key, t))
            for t, (ct, v) in enumerate(zip(m.cts, vectors, strict=True))
        )

    # level-consuming helpers
    def clean(self, m: Mat) -> Mat:
        if not m.junk:
            return m
        key = ("mask", m.kind, m.width, m.valid, m.heads, m.stride, m.block)
        return replace(m, cts=self.mul_public(m, self.mask(m), key), junk=False)

    def _rotsum(self, ct: Ct, span: int, sign: int, step: int = 1) -> Ct:
        """ct + rot(ct, sign * step) + ... doubling the step up to `span` (a power of two)."""
        while step < span:
            ct = self.e.add(ct, self.e.rotate(ct, sign * step))
            step *= 2
        return ct

    def rowsum(self, m: Mat) -> Mat:
        """Sum over the last dim, replicated over the window: a `rep` value, no level."""
        m = self.clean(m)
        fw = self.footprint(m)
        span, room = pow2(fw), m.stride
        cts, filled = [], span
        for ct in m.cts:
            filled = span
            while 2 * filled <= room:
                ct = self.e.add(ct, self.e.rotate(ct, -filled))
                filled *= 2
            cts.append(self._rotsum(ct, span, 1))
        return replace(m, cts=tuple(cts), kind="rep", width=fw, valid=filled - span + 1, junk=True)

    def widen(self, m: Mat, need: int) -> Mat:
        """A `rep` valid over at least `need` slots: keep the window's first slot, re-replicate."""
        if m.valid >= need:
            return m
        span = pow2(need)
        if span > m.stride:
            raise ValueError(f"a column of width {need} does not fit a head window of {m.stride} slots")
        first = replace(m, valid=1)
        cts = self.mul_public(m, self.mask(first), ("first", m.heads, m.stride, m.block))
        return replace(m, cts=tuple(self._rotsum(ct, span, -1) for ct in cts), valid=span, junk=False)

    # layouts
    def reblock(self, m: Mat, block: int) -> Mat:
        """`m` at another block (and so other tiles): each row masked out of its tile (one level)
        and rotated into place. A run of rows that stays in one source and one destination tile
        moves by j * (B - block) within the run, then by one step for the run: ~R + runs distinct
        steps (R: rows per ciphertext), not one per row."""
        if m.block == block:
            return m
        if m.kind == "rep":  # a column's copies: as many as the new window holds
            m = replace(m, valid=min(m.valid, block if m.heads == 1 else m.stride))
        span = m.stride * (m.heads - 1) + self.footprint(m) if m.split else self.footprint(m)
        if span > block:
            raise ValueError(f"a {span}-slot row does not fit a {block}-slot block")
        src_rows, dst_rows = self.rows_per_ct(m.block), self.rows_per_ct(block)
        out: list[Ct | None] = [None] * -(-self.n // dst_rows)
        # refresh where there are fewer ciphertexts: after the mask, one level is left for the consumer
        cts = [self.e.ensure(ct, 2 if len(m.cts) <= len(out) else 1) for ct in m.cts]
        i = 0
        while i < self.n:
            (s_tile, s0), (d_tile, d0) = divmod(i, src_rows), divmod(i, dst_rows)
            run = min(src_rows - s0, dst_rows - d0, self.n - i)
            inner = None
            for j in range(run):
                one = np.zeros(self.e.slots)
                one[(s0 + j) * m.block : (s0 + j) * m.block + span] = 1.0
                picked = self.e.mul_plain(cts[s_tile], one, key=("row", s0 + j, span, m.block))
                moved = self.e.rotate(picked, j * (m.block - block))
                inner = moved if inner is None else self.e.add(inner, moved)
            moved = self.e.rotate(inner, s0 * m.block - d0 * block)
            out[d_tile] = moved if out[d_tile] is None else self.e.add(out[d_tile], moved)
            i += run
        stride = block if m.heads == 1 else m.stride
        return replace(m, cts=tuple(out), block=block, stride=stride, junk=False)

    def compact(self, m: Mat) -> Mat:
        """`m` in one ciphertext, at the smallest block holding its row and the n-slot score
        windows of the attention products; unchanged if it is in one already."""
        if len(m.cts) == 1:
            return m
        window = max(pow2(1 if m.kind == "rep" else self.footprint(m)), pow2(self.n))
        block = window if m.heads == 1 else pow2(m.heads * m.stride)
        if m.heads > 1 and m.stride < self.n:
            raise ValueError(f"head windows of {m.stride} slots cannot hold {self.n} scores")
        if self.n * block > self.e.slots:
            raise ValueError(f"a {self.n} x {block}-slot matrix does not fit one ciphertext of {self.e.slots} slots")
        return self.reblock(m, block)

    # products
    def _diag(self, key: str, w: np.ndarray, r: int, shift: int, block: int, tall: bool) -> np.ndarray:
        """Generalized diagonal r of W (in, out), padded to powers of two, rolled right by `shift`,
        repeated over one tile's rows. Wide (d_out >= d_in): W[(c + r) mod P_in, c] for c < d_out;
        tall: W[(c + r) mod P_in, c mod P_out] for c < P_in."""
        cached = self._diags.get((key, r, block))
        if cached is None:
            p_in, p_out = pow2(w.shape[0]), pow2(w.shape[1])
            padded = np.zeros((p_in, p_out))
            padded[: w.shape[0], : w.shape[1]] = w
            cols = np.arange(p_in if tall else w.shape[1])
            row = np.zeros(block)
            row[shift : shift + cols.size] = padded[(cols + r) % p_in, cols % p_out]
            cached = np.zeros(self.e.slots)
            rows = self.rows_per_ct(block)  # the last tile's rows past n multiply zeros
            cached[: rows * block] = np.tile(row, rows)
            self._diags[(key, r, block)] = cached
        return cached

    def linear(self, x: Mat, w: Weight, b: Weight | None) -> Mat:
        if x.split or x.kind != "row":
            raise ValueError("linear takes a (seq, d_in) matrix")
        d_in, d_out = w.value.shape
        p_in, p_out = pow2(d_in), pow2(d_out)
        tall = p_out < p_in
        if self.block < p_in + (p_out if tall else d_out) - 1:
            raise ValueError(f"block {self.block} too small for a {d_in}x{d_out} product")
        x = self.clean(self.reblock(x, self.block))
        count = p_out if tall else p_in  # diagonals
        g = pow2(int(np.ceil(np.sqrt(count))))
        cts = []
        for ct in x.cts:
            ct, filled = self.e.ensure(ct, 1), p_in
            while filled < self.block:
                ct = self.e.add(ct, self.e.rotate(ct, -filled))
                filled *= 2
            baby = [self.e.rotate(ct, b) for b in range(g)]
            acc = None
            for k in range(count // g):
                terms = [
                    (baby[b], self._diag(w.key, w.value, k * g + b, k * g, self.block, tall), (w.key, k * g + b))
                    for b in range(g)
                ]
                terms = [t for t in terms if t[1].any()]
                if not terms:
                    continue
                z = self.e.rotate(self.e.dot_plain(*map(list, zip(*terms, strict=True))), k * g)
                acc = z if acc is None else self.e.add(acc, z)
            cts.append(self._rotsum(acc, p_in, 1, step=p_out) if tall else acc)
        y = Mat(tuple(cts), "row", d_out, 1, self.block, False, d_out, self.block, junk=tall)
        if b is None:
            return y
        return replace(y, cts=tuple(self.e.add_plain(c, v) for c, v in zip(y.cts, self.place(y, b.value), strict=True)))

    def _doubled(self, ct: Ct, block: int) -> Ct:
        """Rows n..2n-1 repeat rows 0..n-1, so a cyclic row shift is one rotation (nothing to do
        when the rows fill every slot: rotations are cyclic already)."""
        if self.n * block == self.e.slots:
            return ct
        if 2 * self.n * block > self.e.slots:
            raise ValueError(f"shifting {self.n} rows of {block} slots needs {2 * self.n * block} slots")
        return self.e.add(ct, self.e.rotate(ct, -self.n * block))

    def _window_start(self, m: Mat) -> np.ndarray:
        return self.mask(Mat(m.cts, "rep", 1, m.heads, m.stride, m.split, 1, m.block))[0]

    def _giant(self) -> int:
        return pow2(int(np.ceil(np.sqrt(self.n))))

    def _shifts(self, ct: Ct, unit: int):
        """rot(ct, s * unit) for s < n, from ~2 sqrt(n) distinct steps (baby b < g, giant a * g):
        rotation keys are tens of MB each, so steps are kept few."""
        g = self._giant()
        baby = [self.e.rotate(ct, b * unit) for b in range(min(g, self.n))]
        for s in range(self.n):
            a, b = divmod(s, g)
            yield baby[b] if a == 0 else self.e.rotate(baby[b], a * g * unit)

    def _gather(self, terms, unit: int) -> Ct:
        """sum over s < n of rot(terms[s], -s * unit), with the steps of `_shifts`."""
        g, acc, inner = self._giant(), None, None
        for s, x in enumerate(terms):
            a, b = divmod(s, g)
            moved = self.e.rotate(x, -b * unit)
            inner = moved if b == 0 else self.e.add(inner, moved)
            if b == g - 1 or s == self.n - 1:
                outer = self.e.rotate(inner, -a * g * unit)
                acc = outer if acc is None else self.e.add(acc, outer)
        return acc

    def qk(self, q: Mat, k: Mat) -> Mat:
        """q @ k^T for every head: scores in the diagonal layout."""
        q, k = self.compact(q), self.compact(k)
        if q.kind != "row" or k.kind != "row" or self.n > q.stride or q.block != k.block:
            raise ValueError("qk needs (seq, hd) matrices with seq <= head window, at one block")
        if q.heads > 1:  # one head's junk (a tall linear's fold) lies past its span, which the sums skip
            q, k = self.clean(q), self.clean(k)
        qc, kc = self.e.ensure(q.cts[0], 2), self.e.ensure(k.cts[0], 2)
        k2, span, start = self._doubled(kc, q.block), pow2(q.width), self._window_start(q)
        key = ("start", q.heads, q.stride, q.block)
        terms = (
            self.e.mul_plain(self._rotsum(self.e.mul(qc, shifted), span, 1), start, key=key)
            for shifted in self._shifts(k2, q.block)
        )
        return replace(q, cts=(self._gather(terms, 1),), kind="diag", width=self.n, valid=self.n, junk=False)

    def av(self, p: Mat, v: Mat) -> Mat:
        """weights (diagonal layout) @ v for every head."""
        v = self.compact(v)
        if p.kind != "diag" or v.kind != "row" or p.block != v.block:
            raise ValueError("av needs diagonal-layout weights and a (seq, hd) matrix at one block")
        if v.heads > 1:  # as in `qk`: one head's junk is never summed
            v = self.clean(v)
        pc, vc = self.e.ensure(p.cts[0], 2), self.e.ensure(v.cts[0], 1)
        v2, span, start = self._doubled(vc, v.block), pow2(v.width), self._window_start(v)
        key, acc = ("start", v.heads, v.stride, v.block), None
        for diagonal, shifted in zip(self._shifts(pc, 1), self._shifts(v2, v.block), strict=True):
            column = self._rotsum(self.e.mul_plain(diagonal, start, key=key), span, -1)
            term = self.e.mul(column, shifted)
            acc = term if acc is None else self.e.add(acc, term)
        return replace(v, cts=(acc,), junk=False)

    def columns_to_diag(self, m: Mat) -> Mat:
        """The transpose of a (seq, 1) column, broadcast down the rows, in the diagonal layout."""
        m = self.widen(self.compact(m), self.n)
        shifted = self._doubled(self.e.ensure(m.cts[0], 1), m.block)
        diag = replace(m, kind="diag", width=self.n, valid=self.n)
        acc = None
        for s, rotated in enumerate(self._shifts(shifted, m.block)):
            one = np.zeros((self.n, self.n))
            one[np.arange(self.n), (np.arange(self.n) + s) % self.n] = 1.0
            term = self.e.mul_plain(rotated, self.place(diag, one)[0], key=("coldiag", m.heads, m.stride, m.block, s))
            acc = term if acc is None else self.e.add(acc, term)
        return replace(diag, cts=(acc,), junk=False)
