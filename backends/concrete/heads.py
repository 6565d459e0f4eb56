"""Head layout on quantized values (`split_heads`, `merge_heads`, `rotary`, `repeat_heads`): static
indexing and products by clear integers, no PBS but the re-quantization of their input
(`rotary`, `repeat_heads`).

`HeadOps` is a part of `quant.QuantOps` (its `mode`, `qmax`, `_value`, `_narrow`, `_ints`).
"""

from __future__ import annotations

import numpy as np

from backends.concrete.blocks import swap_halves
from backends.concrete.values import Q


class HeadOps:
    def split_heads(self, x, n_heads):
        x = self._value(x)
        seq, width = x.shape

        def split(t):
            return np.transpose(t.reshape(seq, n_heads, width // n_heads), (1, 0, 2))

        return Q(split(x.v), x.scale, split(x.fixed), x.narrow)

    def merge_heads(self, x):
        x = self._value(x)
        n_heads, seq, head_dim = x.shape

        def merge(t):
            return np.transpose(t, (1, 0, 2)).reshape(seq, n_heads * head_dim)

        return Q(merge(x.v), x.scale, merge(x.fixed), x.narrow)

    def rotary(self, x, cos, sin):
        """x cos + swap_halves(x) sin', sin' = sin with its first half negated (rotate_half's sign),
        cos and sin' on one `n_bits` grid (step max |entry| / qmax): a product by clear integers per
        term and their sum, no PBS. `x` is re-quantized first (one lookup per entry unless narrow;
        q and k, projections, would pay it in their product anyway), which keeps the result
        log2(sqrt 2 qmax) bits over `n_bits` whatever the accumulator's width (Concrete gives
        connected integers one width: a wide one widens the whole circuit). The product reading
        the result re-quantizes it: one lookup per entry more than attention without rotary (with
        `rounding`, also one PBS per bit dropped to keep `rounding_bits`)."""
        x = self._narrow(self._value(x))
        half = x.shape[-1] // 2
        c, s = cos.numpy(), np.concatenate((-sin.numpy()[:, :half], sin.numpy()[:, half:]), axis=-1)
        step = max(np.abs(c).max(), np.abs(s).max()) / self.qmax
        mc, ms = np.round(c / step).astype(np.int64), np.round(s / step).astype(np.int64)
        known = np.nan_to_num(x.fixed)
        fixed = x.fixed * c + swap_halves(x.fixed) * s  # NaN where either term is input-dependent
        const = np.where(np.isnan(fixed), known * c + swap_halves(known) * s, 0.0)
        if self.mode == "calibrate":
            return Q(x.v * (mc * step) + swap_halves(x.v) * (ms * step) + const, 1.0, fixed)
        scale = x.scale * step
        return Q(x.v * mc + swap_halves(x.v) * ms + self._ints(const, scale), scale, fixed)

    def repeat_heads(self, x, times):
        """Static indexing of the head axis, no PBS. `x` is re-quantized first (one lookup per entry
        unless narrow already): the products reading the repeated heads then need none, `times`
        fewer lookups than re-quantizing after the repeat."""
        x = self._narrow(self._value(x))
        index = np.repeat(np.arange(x.shape[0]), times)
        return Q(x.v[index], x.scale, x.fixed[index], narrow=True)
