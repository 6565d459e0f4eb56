"""The op set as jax functions: what every SPU program is traced from.

SPU compiles a jax function to its IR and runs it on shares; its fixed-point kernels approximate
the non-linearities (exp by Taylor, or PUMA's `exp_prime`; reciprocal and rsqrt by Newton). The
`puma` forms are PUMA's (Dong et al. 2023, arXiv 2307.12533), as SPU's own GPT-2 and LLaMA
examples write them (`examples/python/ml/flax_llama7b`: `hack_gelu`, `hack_softmax`):
- GELU: 0 below -4, a cubic on [-4, -1.95), a degree-6 polynomial on [-1.95, 3], x above 3;
- softmax: x - max, then exp with inputs below -14 set to 0 (exp_prime's range), normalised;
- SiLU (`hack_silu`): 0 below -8, a quadratic on [-8, -4), an even sextic plus x/2 on [-4, 4], x above 4.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from workloads.ops import Ops, rotate_half

GELU_CUBIC = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
GELU_SEXTIC = (0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0, 0.0018067462606141187)
SILU_QUADRATIC = (-0.3067541139982155, -0.0819767021525476, -0.0055465625580307)  # 1, x, x^2
SILU_SEXTIC = (0.0085064025895951, 0.5, 0.2281430841728270, -0.011113046708173, 0.0002743776353465)  # x^0,1,2,4,6
PUMA_EXP_FLOOR = -14.0


def horner(x, coeffs):
    acc = jnp.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def erf_gelu(x):
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def erf_gelu_grad(x):
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0))) + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def puma_gelu(x):
    """PUMA's piecewise GELU (max error ~1e-3 against erf GELU)."""
    cubic = (x >= -4.0) & (x < -1.95)
    sextic = (x >= -1.95) & (x <= 3.0)
    return (
        jnp.where(x > 3.0, x, 0.0)
        + jnp.where(cubic, horner(x, GELU_CUBIC), 0.0)
        + jnp.where(sextic, horner(x, GELU_SEXTIC), 0.0)
    )


def puma_silu(x):
    """PUMA's piecewise SiLU, with the example's three products (x^2, x^4, x^6)."""
    x2 = x * x
    x4 = x2 * x2
    a, b = SILU_QUADRATIC, SILU_SEXTIC
    quadratic = a[0] + a[1] * x + a[2] * x2
    sextic = b[0] + b[1] * x + b[2] * x2 + b[3] * x4 + b[4] * (x2 * x4)
    return (
        jnp.where(x > 4.0, x, 0.0)
        + jnp.where((x >= -8.0) & (x < -4.0), quadratic, 0.0)
        + jnp.where((x >= -4.0) & (x <= 4.0), sextic, 0.0)
    )


def puma_softmax(x):
    """PUMA's softmax: exponentials below e^-14 dropped (SPU's exp_prime covers [-14, 0])."""
    x = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x) * (x > PUMA_EXP_FLOOR)
    return e / jnp.sum(e, axis=-1, keepdims=True)


class JaxOps(Ops):
    """Ops on jax arrays (float32 at trace time; SPU computes them in fixed point).

    `forms`: `spu` (SPU's own kernels: jax.nn.softmax, erf GELU, x sigmoid(x)) or `puma` (all three).
    `block` (0: off): products with larger outputs run in column blocks of at most that many output
    elements, non-linearities in blocks of rows of at most that many elements."""

    def __init__(self, forms: str = "spu", block: int = 0):
        self.forms, self.block = forms, block

    def linear(self, x, w, b=None):
        y = self.matmul(x, w)
        return y if b is None else y + b

    def project(self, x, ws, bs):
        """One product with the maps side by side: x is opened (or masked) once for all."""
        y = self.matmul(x, jnp.concatenate(ws, axis=-1))
        ends = list(np.cumsum([w.shape[-1] for w in ws]))
        parts = jnp.split(y, ends[:-1], axis=-1)
        return tuple(p if b is None else p + b for p, b in zip(parts, bs, strict=True))

    def matmul(self, a, b):
        """`a @ b`, in column blocks of `b` whose outputs hold at most `block` elements each."""
        out = math.prod(a.shape[:-1]) * b.shape[-1]
        if not self.block or out <= self.block:
            return a @ b
        width = max(1, self.block * b.shape[-1] // out)
        return jnp.concatenate([a @ b[..., i : i + width] for i in range(0, b.shape[-1], width)], axis=-1)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def square(self, x):
        return x * x

    def sum(self, x, dim=-1):
        return jnp.sum(x) if dim is None else jnp.sum(x, axis=dim, keepdims=True)

    def exp(self, x):
        return self._in_rows(jnp.exp, x)

    def reciprocal(self, x):
        return self._in_rows(lambda a: 1.0 / a, x)

    def rsqrt(self, x):
        return self._in_rows(jax.lax.rsqrt, x)

    def relu(self, x):
        return self._in_rows(lambda a: jnp.maximum(a, 0.0), x)

    def gelu(self, x):
        return self._in_rows(puma_gelu if self.forms == "puma" else erf_gelu, x)

    def gelu_grad(self, x):
        return self._in_rows(erf_gelu_grad, x)

    def step(self, x):
        return self._in_rows(lambda a: (a > 0).astype(a.dtype), x)

    def silu(self, x):
        return self._in_rows(puma_silu if self.forms == "puma" else jax.nn.silu, x)

    def softmax(self, x):
        return self._in_rows(puma_softmax if self.forms == "puma" else functools.partial(jax.nn.softmax, axis=-1), x)

    def _in_rows(self, f, x):
        """`f` (elementwise, or along the last axis) on blocks of rows of at most `block` elements."""
        if not self.block or x.size <= self.block:
            return f(x)
        rows, step = x.reshape(-1, x.shape[-1]), max(1, self.block // x.shape[-1])
        return jnp.concatenate([f(rows[i : i + step]) for i in range(0, len(rows), step)]).reshape(x.shape)

    def poly(self, x, coeffs):
        return horner(x, [float(c) for c in coeffs])

    def split_heads(self, x, n_heads):
        seq, width = x.shape
        return jnp.swapaxes(x.reshape(seq, n_heads, width // n_heads), 0, 1)

    def merge_heads(self, x):
        n_heads, seq, head_dim = x.shape
        return jnp.swapaxes(x, 0, 1).reshape(seq, n_heads * head_dim)

    def rotary(self, x, cos, sin):
        return x * cos + rotate_half(x, lambda parts, dim: jnp.concatenate(parts, axis=dim)) * sin

    def repeat_heads(self, x, times):
        return jnp.repeat(x, times, axis=0)
