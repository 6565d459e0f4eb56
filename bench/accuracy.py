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


def errors(got: Any, ref: Any) -> tuple[float, float]:
    """(max absolute error, max absolute error / max |reference|)."""
    g, r = flatten(got), flatten(ref)
    if g.shape != r.shape:
        raise ValueError(f"revealed output has {g.numel()} values, the reference {r.numel()}")
    abs_err = float((g - r).abs().max()) if r.numel() else 0.0
    scale = float(r.abs().max()) if r.numel() else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err
