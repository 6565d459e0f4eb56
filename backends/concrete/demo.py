"""The public GPT-2 FHE demo's single head, ported: the baseline the `fused` scheme is measured against.

Zama's demo (zama-ai/concrete-ml, `use_case_examples/llm/`: `quant_framework.py`, `qgpt2_class.py`)
encrypts one head of GPT-2's first layer. Ported here step for step, on this suite's head weights:
- one `n_bits` for the input, the weights (symmetric, one scale per tensor: Q, K and V weights
  together, as the demo slices them from one `c_attn`) and every re-quantized activation;
- an integer accumulator is dequantized with a scale fitted from its float path, (f_max - f_min) /
  (i_max - i_min), and re-quantized (`np.rint(x / scale)`, no clipping); Concrete fuses each
  dequantize -> float -> quantize chain into one lookup;
- the Q/K/V projection adds its bias with a re-quantization, then q, k and v are re-quantized again;
- q @ k^T and probs @ v are Concrete's encrypted x encrypted matmuls (two lookups per product term),
  over every entry: the causal mask is applied after, with the calibrated minimum score as mask value;
- softmax: the row max as a chain of ReLU lookups, exp(x - max) quantized twice (for the sum and for
  the product), the row sum's reciprocal, their product by Concrete's multiplication; the weights
  are re-quantized before probs @ v;
- the circuit returns probs @ v; the client dequantizes it and applies the output projection in the
  clear, in float (the demo's `c_proj` runs outside FHE).
Scales are calibrated on the stacked calibration inputs in one pass (the demo freezes each scale at
the first input it sees), so both schemes calibrate on the same data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from backends.concrete.blocks import cols, concrete_fhe
from workloads.base import Capture, Workload, run_op


def quant_scale(f: np.ndarray, n_bits: int) -> float:
    top = float(np.abs(f).max())
    return top / (2 ** (n_bits - 1) - 1) if top else 1.0


def last_two_swapped(x):
    return np.transpose(x, (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2))


def dequant_scale(f: np.ndarray, i: np.ndarray) -> float:
    span = float(np.max(i) - np.min(i))
    return float(np.max(f) - np.min(f)) / span if span else 1.0


class DemoScheme:
    """The demo's quantized head; the interface `circuit.Scheme` documents."""

    inputs = ("x",)

    def __init__(self, n_bits: int, workload: Workload, weights: dict[str, torch.Tensor]):
        self.n_bits, self.head_dim = n_bits, workload.head_dim
        w = {k: v.numpy() for k, v in weights.items()}
        self.w_float = np.concatenate([w["wq"], w["wk"], w["wv"]], axis=1)
        self.b_float = np.concatenate([w["bq"], w["bk"], w["bv"]])
        self.w_scale, self.b_scale = quant_scale(self.w_float, n_bits), quant_scale(self.b_float, n_bits)
        self.w_int = np.rint(self.w_float / self.w_scale).astype(np.int64)
        self.b_int = np.rint(self.b_float / self.b_scale).astype(np.int64)
        self.wo, self.bo = w["wo"], w["bo"]
        self.scales: dict[str, float] = {}
        self.mask_value = 0.0
        self.calibrating = False

    # the demo's quantizer: a scale per key, computed the first time the key is seen --------------

    def quant(self, key: str, x, f: np.ndarray | None = None):
        if key not in self.scales:
            self.scales[key] = quant_scale(x if f is None else f, self.n_bits)
        return np.rint(x / self.scales[key]).astype(np.int64)

    def dequant(self, key: str, i, f: np.ndarray | None):
        if key not in self.scales:
            self.scales[key] = dequant_scale(f, i)
        return i * self.scales[key]

    def calibrate(self, samples: list[dict[str, torch.Tensor]]) -> None:
        x = np.stack([s["x"].numpy() for s in samples])
        self.calibrating = True
        self.forward(self.quant("input", x), run_op, x)
        self.calibrating = False

    def encode(self, inputs: dict[str, torch.Tensor]) -> tuple[np.ndarray]:
        return (self.quant("input", inputs["x"].numpy()),)

    def circuit(self, x, tag=run_op):
        return self.forward(x, tag)

    def clear(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x, run_op)

    def decode(self, out_int: np.ndarray) -> torch.Tensor:
        """The client's side: dequantize the head's output, then the output projection in float."""
        heads = out_int * self.scales["y"]
        return torch.as_tensor(heads @ self.wo + self.bo)

    # the circuit --------------------------------------------------------------------------------

    def forward(self, x, rec, x_float: np.ndarray | None = None):
        """The head on the client's quantized input `x` (ints or a tracer); `x_float`, only when
        calibrating, is the float path every dequantization scale is fitted from."""
        fhe = concrete_fhe()
        hd, cal = self.head_dim, self.calibrating
        f = {}  # float paths, calibration only

        def qkv_proj():
            acc = x @ self.w_int
            if cal:
                f["acc"] = x_float @ self.w_float
                f["qkv"] = f["acc"] + self.b_float
            acc_f = self.dequant("linear", acc, f.get("acc"))
            bias_f = self.b_int * self.b_scale
            both = np.concatenate([f["acc"].reshape(-1), self.b_float]) if cal else None
            qkv = self.quant("linear_add", acc_f, both) + self.quant("linear_add", bias_f)
            parts = []
            for n, c in enumerate("qkv"):
                part = cols(qkv, n * hd, (n + 1) * hd)
                pf = cols(f["qkv"], n * hd, (n + 1) * hd) if cal else None
                f[c] = pf
                parts.append(self.quant(f"q_{c}", self.dequant(f"dequant_{c}", part, pf), pf))
            return tuple(parts)

        q, k, v = rec("qkv_proj", qkv_proj)

        def qk_matmul():
            scores = q @ last_two_swapped(k)
            sf = f["q"] @ last_two_swapped(f["k"]) if cal else None
            scaled = self.dequant("qk", scores, sf) / math.sqrt(hd)
            causal = np.tril(np.ones(scaled.shape[-2:], dtype=bool))
            if cal:
                self.mask_value = float(scaled.min())
            return np.where(causal, scaled, self.mask_value)

        masked = rec("qk_matmul", qk_matmul)

        def softmax():
            relu = fhe.univariate(lambda d: np.maximum(d, 0))
            m = self.quant("max", masked)
            row_max = cols(m, 0, 1)
            for c in range(1, m.shape[-1]):
                row_max = row_max + relu(cols(m, c, c + 1) - row_max)
            shifted = self.quant("sub_max", masked) - row_max
            e = np.exp(self.dequant("exp", shifted, masked - masked.max(-1, keepdims=True) if cal else None))
            total = np.sum(self.quant("sum", e), axis=-1, keepdims=True)
            inverse = 1 / self.dequant("rtruediv", total, e.sum(-1, keepdims=True) if cal else None)
            probs = self.quant("mul_self", e) * self.quant("mul_other", inverse)
            pf = e / e.sum(-1, keepdims=True) if cal else None
            f["p"] = pf
            return self.quant("attn_requant", self.dequant("attn_dequant", probs, pf), pf)

        probs = rec("softmax", softmax)

        def av_matmul():
            out = probs @ v
            if cal:
                self.dequant("y", out, f["p"] @ f["v"])
            return out

        return rec("av_matmul", av_matmul)

    def decode_inputs(self, ints) -> dict[str, torch.Tensor]:
        return {"x": torch.as_tensor(ints[0] * self.scales["input"])}

    def op_outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Every op's output in the clear, dequantized, shaped as the workload's (one head first)."""
        capture = Capture()
        out = self.forward(*self.encode(inputs), capture)
        found = capture.outputs
        causal = np.tril(np.ones(found["qk_matmul"].shape[-2:]))
        qkv = zip(found["qkv_proj"], "qkv", strict=True)
        return {
            "qkv_proj": tuple(torch.as_tensor(t[None] * self.scales[f"q_{c}"]) for t, c in qkv),
            "qk_matmul": torch.as_tensor(found["qk_matmul"][None] * causal),  # the workload zeroes above the diagonal
            "softmax": torch.as_tensor(found["softmax"][None] * self.scales["attn_requant"]),
            "av_matmul": torch.as_tensor(out[None] * self.scales["y"]),
            "out_proj": self.decode(out),
        }
