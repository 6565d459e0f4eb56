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
cell's block (`relayout`: one masked product and one rotation per row, one level). Multi-head
operands are compacted into head groups (as many heads per ciphertext as fit), their windows
widened to n slots where head_dim < seq.

Why this packing (rotations per op, per tile; P_in, P_out = next powers of two of d_in, d_out;
n = seq):
- `linear` (ciphertext x plaintext), d_out >= d_in: diagonal method with baby-step giant-step over
  the P_in generalized diagonals of W, after replicating each row with period P_in across its
  block: log2(B/P_in) + (g - 1) + (P_in/g - 1) rotations with g ~ sqrt(P_in), one level.
  d_out < d_in: the P_out diagonals of the (P_in, P_out) matrix, then log2(P_in/P_out)
  rotate-and-adds fold the partial sums: P_out products instead of P_in. Row-per-ciphertext
  (TenSEAL's `matmul`) costs seq * d_in rotations instead.
- `qk_matmul` / `av_matmul` (ciphertext x ciphertext): n shifted products, scores in a diagonal
  layout (`attention`).
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
    """A packed matrix over `cts` (row tiles, or head groups) at `block` slots per row. kind: `row`
    (seq, width), `diag` (seq, seq) in diagonal layout, or `rep` (seq, 1), its value replicated over
    slots [0, valid) of each window."""

    cts: tuple[Ct, ...]
    kind: str
    width: int
    heads: int
    stride: int
    split: bool
    valid: int
    block: int
    junk: bool = False
    groups: int = 1  # > 1: ciphertext c holds heads [c h/groups, (c+1) h/groups) of every row

    @property
    def heads_per_ct(self) -> int:
        return self.heads // self.groups


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
        vectors = []
        for group in range(m.groups):
            blocks = np.zeros((n, m.block))
            for t in range(m.heads_per_ct):
                head = v[group * m.heads_per_ct + t]
                cols = slice(t * m.stride, t * m.stride + fw)
                if m.kind == "row":
                    blocks[:, cols] = head
                elif m.kind == "rep":
                    blocks[:, cols] = head[:, :1]
                else:  # diag: slot s of row i holds (i, (i + s) mod n)
                    idx = (np.arange(n)[:, None] + np.arange(n)[None, :]) % n
                    blocks[:, cols] = np.take_along_axis(head, idx, axis=1)
            vectors += self._tiles(blocks)
        return vectors

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
        slots = [self.e.decrypt(ct)[: rows * m.block].reshape(rows, m.block) for ct in m.cts]
        fw = 1 if m.kind == "rep" else self.footprint(m)
        if m.groups == 1:
            rows_all = np.concatenate(slots)[: self.n]
            out = np.stack([rows_all[:, t * m.stride : t * m.stride + fw] for t in range(m.heads)])
        else:
            out = np.stack([part[:, t * m.stride : t * m.stride + fw] for part in slots for t in range(m.heads_per_ct)])
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

    def rotsum(self, ct: Ct, span: int, sign: int, step: int = 1) -> Ct:
        """ct + rot(ct, sign * step) + ... doubling the step up to `span` (a power of two)."""
        while step < span:
            ct = self.e.add(ct, self.e.rotate(ct, sign * step))
            step *= 2
        return ct

    def rowsum(self, m: Mat) -> Mat:
        """Sum over the last dim, replicated over the window: a `rep` value, no level (one to
        space heads packed closer than a power of two, whose sums would run into the next head)."""
        if m.heads > 1 and pow2(self.footprint(m)) > m.stride:
            m = self.relayout(m, m.block, m.groups, pow2(m.stride))
        m = self.clean(m)
        fw = self.footprint(m)
        span, room = pow2(fw), m.stride
        cts, filled = [], span
        for ct in m.cts:
            filled = span
            while 2 * filled <= room:
                ct = self.e.add(ct, self.e.rotate(ct, -filled))
                filled *= 2
            cts.append(self.rotsum(ct, span, 1))
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
        return replace(m, cts=tuple(self.rotsum(ct, span, -1) for ct in cts), valid=span, junk=False)

    # layouts
    def relayout(self, m: Mat, block: int, groups: int = 1, stride: int | None = None) -> Mat:
        """`m` at another block, head grouping or head stride: each row's chunk of heads (those
        together in both layouts) masked out of its ciphertext (one level) and rotated into place.
        Consecutive rows between the same two ciphertexts move by j * (B - block) within the run,
        then by one step for the run: ~R + runs distinct steps (R: rows per ciphertext), not one
        per row."""
        stride = stride or (block if m.heads == 1 else m.stride)
        if (m.block, m.groups, m.stride) == (block, groups, stride):
            return m
        if m.kind == "rep":  # a column's copies: as many as the new window holds
            m = replace(m, valid=min(m.valid, stride))
        fw, per_src, per_dst = self.footprint(m), m.heads_per_ct, m.heads // groups
        if (per_dst - 1) * stride + fw > block:
            raise ValueError(f"{per_dst} heads of {fw} slots at stride {stride} do not fit a {block}-slot block")
        chunks: list[list] = []  # [(source group, destination group), first head, heads]
        for h in range(m.heads):
            pair = (h // per_src, h // per_dst)
            if chunks and chunks[-1][0] == pair and stride == m.stride:
                chunks[-1][2] += 1
            else:
                chunks.append([pair, h, 1])
        src_rows, dst_rows = self.rows_per_ct(m.block), self.rows_per_ct(block)
        out: list[Ct | None] = [None] * (groups if groups > 1 else -(-self.n // dst_rows))
        # refresh where there are fewer ciphertexts: after the mask, one level is left for the consumer
        cts = [self.e.ensure(ct, 2 if len(m.cts) <= len(out) else 1) for ct in m.cts]
        for (g_src, g_dst), h0, count in chunks:
            span, s_in, d_in = (count - 1) * m.stride + fw, (h0 % per_src) * m.stride, (h0 % per_dst) * stride
            i = 0
            while i < self.n:
                s_ct, s0 = (g_src, i) if m.groups > 1 else divmod(i, src_rows)
                d_ct, d0 = (g_dst, i) if groups > 1 else divmod(i, dst_rows)
                run = min(src_rows - s0, dst_rows - d0, self.n - i)
                inner = None
                for j in range(run):
                    one = np.zeros(self.e.slots)
                    start = (s0 + j) * m.block + s_in
                    one[start : start + span] = 1.0
                    picked = self.e.mul_plain(cts[s_ct], one, key=("chunk", start, span))
                    moved = self.e.rotate(picked, j * (m.block - block))
                    inner = moved if inner is None else self.e.add(inner, moved)
                moved = self.e.rotate(inner, s0 * m.block + s_in - d0 * block - d_in)
                out[d_ct] = moved if out[d_ct] is None else self.e.add(out[d_ct], moved)
                i += run
        return replace(m, cts=tuple(out), block=block, stride=stride, groups=groups, junk=False)

    def _shiftable(self, block: int) -> bool:
        """n rows of `block` slots fit one ciphertext with room to shift rows (doubled, or filling it)."""
        return self.n * block == self.e.slots or 2 * self.n * block <= self.e.slots

    def compact(self, m: Mat) -> Mat:
        """`m` laid out for the attention products: all rows of a head in one ciphertext, each head
        window holding n scores (stride >= n), as many heads per ciphertext as fit; unchanged if it
        is so already."""
        if m.heads == 1:
            if len(m.cts) == 1:
                return m
            block = max(pow2(1 if m.kind == "rep" else self.footprint(m)), pow2(self.n))
            if not self._shiftable(block):
                raise ValueError(f"{self.n} rows of {block} slots do not fit one ciphertext of {self.e.slots} slots")
            return self.relayout(m, block)
        stride = pow2(max(m.stride, self.n))
        if len(m.cts) == 1 and stride == m.stride and m.groups == 1:
            return m
        per = m.heads
        while per and (m.heads % per or not self._shiftable(pow2(per * stride))):
            per -= 1
        if not per:
            raise ValueError(
                f"{self.n} rows of a {stride}-slot head window do not fit one ciphertext of {self.e.slots}"
            )
        return self.relayout(m, pow2(per * stride), m.heads // per, stride)

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
        x = self.clean(self.relayout(x, self.block))
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
            cts.append(self.rotsum(acc, p_in, 1, step=p_out) if tall else acc)
        y = Mat(tuple(cts), "row", d_out, 1, self.block, False, d_out, self.block, junk=tall)
        if b is None:
            return y
        return replace(y, cts=tuple(self.e.add_plain(c, v) for c, v in zip(y.cts, self.place(y, b.value), strict=True)))
