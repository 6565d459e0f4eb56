"""Error of revealed values against the float64 reference."""

from __future__ import annotations

from typing import Any

import torch


def flatten(value: Any) -> torch.Tensor:
    """All tensors of a (nested) tuple / list / dict, in order, as one float64 vector."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).to(torch.float64)
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value)]
    return torch.cat([flatten(v) for v in value])


class Reference:
    """A reference value, flattened once with its scale, so checking every repeat stays cheap."""

    def __init__(self, value: Any):
        self.flat = flatten(value)
        self.top1 = value.argmax(-1) if isinstance(value, torch.Tensor) and value.dim() >= 2 else None
        self.scale = float(self.flat.abs().max()) if self.flat.numel() else 0.0
        self._scratch = torch.empty_like(self.flat)

    def errors(self, got: Any) -> tuple[float, float]:
        """(max absolute error, max absolute error / max |reference|)."""
        g = flatten(got)
        if g.shape != self.flat.shape:
            raise ValueError(f"revealed output has {g.numel()} values, the reference {self.flat.numel()}")
        if not g.numel():
            return 0.0, 0.0
        abs_err = float(torch.sub(g, self.flat, out=self._scratch).abs_().max())
        return abs_err, abs_err / self.scale if self.scale > 0 else abs_err

    def top1_agreement(self, got: Any) -> float:
        """Share of the output's rows (vectors along the last dim) whose largest entry sits where the
        reference's does (a next-token proxy); NaN for outputs that are not one matrix."""
        if self.top1 is None or not isinstance(got, torch.Tensor):
            return float("nan")
        return float((got.argmax(-1) == self.top1).double().mean())


def errors(got: Any, ref: Any) -> tuple[float, float]:
    """Errors of `got` against a reference used once."""
    return Reference(ref).errors(got)
