"""`finetune`: one training step of a `block`: forward, loss, explicit backward, SGD update.

The forward is `block`'s (every softmax / norm / gelu / head_merge variant), keeping what the
backward reads. The loss is mean((out - y)^2) against a seeded private target `y`. The backward is
written op by op over `Ops` (names `grad.<part>`), so every backend runs and times it like any op;
the step returns the updated trainable weights (biases and LayerNorm scales as (1, d_model)).
`autograd_step` is the same step by torch autograd, which the tests hold the explicit one to.

Variants:
- `adapter`: `full` (every weight trains) or `lora` (rank-`lora_rank` adapters A, B on the q, k,
  v projections, base frozen, as the Encryption-friendly LLM paper, arXiv 2410.02486, does).
  With adapters the backward stops at the q, k, v projections: nothing below them trains.
- `base` (Marill, arXiv 2408.03561): `private` or `public`, the frozen base known to every party,
  so its products are with public weights (local in MPC). Needs `adapter=lora`.
The Newton iterates of the polynomial rsqrt are recomputed in the backward (checkpointing), and
so is the normalised input of each LayerNorm that trains its scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from workloads.attention import gaussian_scale, power
from workloads.base import ConfigError, Workload, run_op
from workloads.block import QUAD_GELU, Block, BlockConfig, block_forward, gelu_coeffs
from workloads.layernorm import rsqrt_coeffs
from workloads.ops import TorchOps

LORA_TARGETS = ("q", "k", "v")


@dataclass
class FinetuneConfig(BlockConfig):
    name: str = "finetune"
    adapter: str = "lora"
    base: str = "private"
    lora_alpha: float = 8.0
    lr: float = 0.1


def derivative(coeffs: list[float]) -> list[float]:
    """Coefficients of a polynomial's derivative (low degree first)."""
    return [i * c for i, c in enumerate(coeffs)][1:] or [0.0]


class Finetune(Workload):
    name = "finetune"
    Config = FinetuneConfig
    variants = {"adapter": ("lora", "full"), "base": ("private", "public"), **Block.variants}
    each_fixed = ("softmax", "norm", "gelu", "head_merge")  # `block` sweeps their forward; tests, their backward
    uses_heads = True

    @classmethod
    def validate(cls, cfg):
        Block.validate(cfg)
        super().validate(replace(cfg, head_merge=1))  # any divisor, as `block`
        if cfg.base == "public" and cfg.adapter != "lora":
            raise ConfigError("workload.base=public needs workload.adapter=lora (a fully trained base is private)")
        if cfg.lora_rank > cfg.d_model:
            raise ConfigError(f"workload.lora_rank={cfg.lora_rank} exceeds workload.d_model={cfg.d_model}")

    @property
    def lora(self) -> bool:
        return self.cfg.adapter == "lora"

    @property
    def scale(self) -> float:
        return self.cfg.lora_alpha / self.cfg.lora_rank

    def trainable(self) -> list[str]:
        return sorted(k for k in self.weights() if k.startswith("lora.") == self.lora)

    def public_weights(self) -> set[str]:
        return {k for k in self.weights() if not k.startswith("lora.")} if self.cfg.base == "public" else set()

    def inputs(self):
        gen, s, d = self.generator(0), self.cfg.seq_len, self.cfg.d_model
        return {"x": self.randn(gen, s, d), "y": self.randn(gen, s, d)}

    def weights(self):
        w = Block(self.cfg).weights()
        if self.lora:
            gen, d, r = self.generator(2), self.cfg.d_model, self.cfg.lora_rank
            for n in LORA_TARGETS:
                w[f"lora.a{n}"] = self.randn(gen, d, r, std=d**-0.5)
                w[f"lora.b{n}"] = self.randn(gen, r, d, std=0.1)
        return w

    # forward -----------------------------------------------------------------------------------

    def block_forward(self, ops, rec, x, w, saved: dict):
        """`block`'s forward (with the adapters), filling `saved` with what the backward reads."""

        def adapt(a_in):
            down = rec("attn.lora_down", lambda: ops.project(a_in, [w[f"lora.a{n}"] for n in LORA_TARGETS], [None] * 3))
            saved["down"] = dict(zip(LORA_TARGETS, down, strict=True))

            def project(x):
                base = ops.project(x, [w[f"attn.w{n}"] for n in "qkv"], [w[f"attn.b{n}"] for n in "qkv"])
                return tuple(
                    ops.add(p, ops.mul(ops.linear(saved["down"][n], w[f"lora.b{n}"]), self.scale))
                    for p, n in zip(base, LORA_TARGETS, strict=True)
                )

            return project

        return block_forward(ops, rec, self.cfg, x, w, saved, adapt if self.lora else None)

    def forward(self, ops, rec, x, w):
        saved: dict = {}
        out = self.block_forward(ops, rec, x["x"], w, saved)
        n = self.cfg.seq_len * self.cfg.d_model

        def loss():
            diff = ops.sub(out, x["y"])
            return ops.mul(diff, 2 / n), ops.mul(ops.sum(ops.square(diff), dim=None), 1 / n)

        d_out, _ = rec("loss", loss)  # the loss's gradient and the loss
        grads = self.backward(ops, rec, saved, d_out, w)
        lr = self.cfg.lr
        return rec("update", lambda: {k: ops.sub(w[k], ops.mul(g, lr)) for k, g in grads.items()})

    # backward ----------------------------------------------------------------------------------
    # Each `grad.*` op returns a dict: the gradients of the weights it reaches that train, and under
    # "input" the gradient flowing on. Returned, not stashed: a lazy backend materializes only an
    # op's outputs.

    def backward(self, ops, rec, s: dict, d_out, w) -> dict:
        """Gradients of the trainable weights, from d loss / d out."""
        full, g = not self.lora, {}

        def step(name, fn):
            out = rec(name, fn)
            g.update({k: v for k, v in out.items() if k != "input"})
            return out.get("input")

        def linear_back(prefix, x_in, dy, wname, bname):
            """x_in @ w + b: d input, and the weight's and bias's gradients when they train."""
            out = {"input": ops.linear(dy, ops.transpose(w[f"{prefix}.{wname}"]))}
            if full:
                out[f"{prefix}.{wname}"] = ops.matmul(ops.transpose(x_in), dy)
                out[f"{prefix}.{bname}"] = ops.sum(dy, dim=-2)
            return out

        d_act = step("grad.mlp.fc2", lambda: linear_back("mlp", s["act"], d_out, "w2", "b2"))
        d_hidden = step("grad.mlp.gelu", lambda: {"input": ops.mul(d_act, self.gelu_grad(ops, s["hidden"]))})
        d_m_in = step("grad.mlp.fc1", lambda: linear_back("mlp", s["m_in"], d_hidden, "w1", "b1"))

        def ln2():
            out = self.norm_back(ops, "ln2", s["ln2"], d_m_in, w)
            return out | {"input": ops.add(d_out, out["input"])}  # the residual's branch

        d_h = step("grad.ln2", ln2)
        a, heads = s["attn"], self.cfg.n_heads // self.cfg.head_merge
        head_dim = self.cfg.d_model // heads
        keep = torch.tril(torch.ones(self.cfg.seq_len, self.cfg.seq_len, dtype=torch.float64))

        def out_proj():
            out = linear_back("attn", ops.merge_heads(a["heads"]) if full else None, d_h, "wo", "bo")
            return out | {"input": ops.split_heads(out["input"], heads)}

        d_heads = step("grad.attn.out_proj", out_proj)
        d_probs, d_v = rec(
            "grad.attn.av_matmul",
            lambda: (ops.matmul(d_heads, ops.transpose(a["v"])), ops.matmul(ops.transpose(a["probs"]), d_heads)),
        )
        d_weights = rec("grad.attn.softmax", lambda: self.weights_back(ops, a, d_probs, keep))

        def qk_matmul():
            d_qk = ops.mul(d_weights["scores"], keep / math.sqrt(head_dim))
            d_q, d_k = ops.matmul(d_qk, a["k"]), ops.matmul(ops.transpose(d_qk), a["q"])
            if "q" in d_weights:
                d_q, d_k = ops.add(d_q, d_weights["q"]), ops.add(d_k, d_weights["k"])
            return d_q, d_k

        d_q, d_k = rec("grad.attn.qk_matmul", qk_matmul)
        d_proj = {n: ops.merge_heads(t) for n, t in zip("qkv", (d_q, d_k, d_v), strict=True)}
        if self.lora:
            step("grad.attn.qkv_proj", lambda: self.lora_back(ops, s, d_proj, w))
            return g

        def qkv_proj():
            out = self.weight_grads(ops, s["a_in"], {f"attn.w{n}": d_proj[n] for n in "qkv"})
            for n in "qkv":
                out[f"attn.b{n}"] = ops.sum(d_proj[n], dim=-2)
            d_in = [ops.linear(d_proj[n], ops.transpose(w[f"attn.w{n}"])) for n in "qkv"]
            return out | {"input": ops.add(ops.add(d_in[0], d_in[1]), d_in[2])}

        d_a_in = step("grad.attn.qkv_proj", qkv_proj)
        step("grad.ln1", lambda: self.norm_back(ops, "ln1", s["ln1"], d_a_in, w, need_input=False))
        return g

    def lora_back(self, ops, s: dict, d_proj: dict, w) -> dict:
        """The adapters' gradients from d q, d k, d v (seq, d_model)."""
        out, d_down = {}, {}
        for n in LORA_TARGETS:
            out[f"lora.b{n}"] = ops.mul(ops.matmul(ops.transpose(s["down"][n]), d_proj[n]), self.scale)
            d_down[f"lora.a{n}"] = ops.mul(ops.linear(d_proj[n], ops.transpose(w[f"lora.b{n}"])), self.scale)
        return out | self.weight_grads(ops, s["a_in"], d_down)

    def weight_grads(self, ops, x, dys: dict) -> dict:
        """x^T dy for each dy, as one product (x opened once, as `project` does in the forward)."""
        grads = ops.project(ops.transpose(x), list(dys.values()), [None] * len(dys))
        return dict(zip(dys, grads, strict=True))

    def gelu_grad(self, ops, x):
        cfg = self.cfg
        if cfg.gelu == "exact":
            return ops.gelu_grad(x)
        if cfg.gelu == "poly":
            return ops.poly(x, derivative(gelu_coeffs(cfg.gelu_range, cfg.gelu_degree)))
        if cfg.gelu == "quad":
            return ops.poly(x, derivative(list(QUAD_GELU)))
        return ops.step(x)

    def rsqrt_grad(self, ops, u, inv_std):
        """d(1/sqrt)/du at u = var + eps, by the `norm` variant (Newton iterates recomputed)."""
        cfg = self.cfg
        if cfg.norm == "exact":
            return ops.mul(ops.mul(ops.square(inv_std), inv_std), -0.5)
        coeffs = rsqrt_coeffs(cfg.rsqrt_lo, cfg.rsqrt_hi, cfg.rsqrt_degree)
        y, dy = ops.poly(u, coeffs), ops.poly(u, derivative(coeffs))
        for _ in range(cfg.newton_steps):  # y' = 1.5 y - 0.5 u y^3
            y2 = ops.square(y)
            dy = ops.sub(ops.mul(dy, ops.add(ops.mul(ops.mul(u, y2), -1.5), 1.5)), ops.mul(ops.mul(y2, y), 0.5))
            y = ops.mul(y, ops.add(ops.mul(ops.mul(u, y2), -0.5), 1.5))
        return dy

    def norm_back(self, ops, prefix: str, s: dict, dy, w, need_input: bool = True) -> dict:
        """LayerNorm's backward: its scale's and shift's gradients when they train, and d input."""
        d, centred, inv_std, out = self.cfg.d_model, s["centred"], s["inv_std"], {}
        if not self.lora:
            out[f"{prefix}.gamma"] = ops.sum(ops.mul(dy, ops.mul(centred, inv_std)), dim=-2)
            out[f"{prefix}.beta"] = ops.sum(dy, dim=-2)
        if need_input:
            d_normed = ops.mul(dy, w[f"{prefix}.gamma"])
            d_inv_std = ops.sum(ops.mul(d_normed, centred))
            d_var = ops.mul(d_inv_std, self.rsqrt_grad(ops, ops.add(s["var"], self.cfg.eps), inv_std))
            d_centred = ops.add(ops.mul(d_normed, inv_std), ops.mul(centred, ops.mul(d_var, 2 / d)))
            out["input"] = ops.sub(d_centred, ops.mul(ops.sum(d_centred), 1 / d))
        return out

    def weights_back(self, ops, a: dict, d_probs, keep):
        """d scores (the scaled, masked ones) from d probs, by the softmax variant; the Gaussian
        kernel also reads q and k directly: their extra gradients under "q" and "k"."""
        cfg, probs = self.cfg, a["probs"]
        row_dot = ops.sum(ops.mul(d_probs, probs))
        if cfg.softmax == "exact":
            return {"scores": ops.mul(probs, ops.sub(d_probs, row_dot))}
        if cfg.softmax == "gaussian":
            head_dim = cfg.d_model // (cfg.n_heads // cfg.head_merge)
            d_sq = ops.mul(ops.mul(d_probs, probs), gaussian_scale(cfg, head_dim))
            d_q = ops.mul(ops.mul(a["q"], ops.sum(d_sq)), 2.0)
            d_k = ops.mul(ops.mul(a["k"], ops.sum(ops.transpose(d_sq))), 2.0)
            return {"scores": ops.mul(d_sq, -2 * math.sqrt(head_dim)), "q": d_q, "k": d_k}
        d_e = ops.mul(ops.mul(ops.sub(d_probs, row_dot), a["r"]), keep)
        scores = a["scores"]
        if cfg.softmax == "power":
            slope = ops.mul(power(ops, scores, cfg.power_p - 1), float(cfg.power_p))
        elif cfg.softmax == "quad2":
            slope = ops.mul(ops.add(scores, cfg.quad_c), 2.0)
        else:  # relu
            slope = ops.step(scores)
        return {"scores": ops.mul(d_e, slope)}

    # reference by autograd ---------------------------------------------------------------------

    def autograd_step(self) -> dict[str, torch.Tensor]:
        """The step's updated weights by torch autograd through the same forward (float64)."""
        x, trainable = self.inputs(), self.trainable()
        w = {k: v.clone().requires_grad_(k in trainable) for k, v in self.weights().items()}
        out = self.block_forward(TorchOps(torch.float64), run_op, x["x"], w, {})
        torch.mean((out - x["y"]) ** 2).backward()
        with torch.no_grad():
            return {k: w[k] - self.cfg.lr * w[k].grad for k in trainable}
