"""`lora_update`: one SGD step of a rank-`lora_rank` LoRA adapter on a frozen linear layer.

h = x W + b + s (x A) B with s = lora_alpha / lora_rank; loss = mean((h - y)^2) over all entries;
gradients reach only A and B; the step returns the updated (A, B). B starts small and non-zero
(standard LoRA zeroes it, which would make the first gradient of A vanish and the step trivial).

Variant `base` (Marill, arXiv 2408.03561): `private` protects every weight; `public` makes the
frozen base layer (`w`, `b`) public, only the adapter (A, B) private, so x W + b becomes a
public-weight product. The arithmetic, and so the reference, is the same; `public_weights()` says
which weights a backend may keep in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass

from workloads.base import ConfigError, Workload, WorkloadConfig


@dataclass
class LoraConfig(WorkloadConfig):
    name: str = "lora_update"
    lora_alpha: float = 8.0
    lr: float = 0.1
    base: str = "private"


class LoraUpdate(Workload):
    name = "lora_update"
    Config = LoraConfig
    variants = {"base": ("private", "public")}

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        if cfg.lora_rank > cfg.d_model:
            raise ConfigError(
                f"workload.lora_rank={cfg.lora_rank} exceeds workload.d_model={cfg.d_model}; choose a rank <= d_model"
            )

    def public_weights(self) -> set[str]:
        return {"w", "b"} if self.cfg.base == "public" else set()

    @property
    def scale(self) -> float:
        return self.cfg.lora_alpha / self.cfg.lora_rank

    def inputs(self):
        gen, s, d = self.generator(0), self.cfg.seq_len, self.cfg.d_model
        return {"x": self.randn(gen, s, d), "y": self.randn(gen, s, d)}

    def weights(self):
        gen, d, r = self.generator(1), self.cfg.d_model, self.cfg.lora_rank
        return {
            "w": self.randn(gen, d, d, std=d**-0.5),
            "b": self.randn(gen, d, std=0.1),
            "lora_a": self.randn(gen, d, r, std=d**-0.5),
            "lora_b": self.randn(gen, r, d, std=0.1),
        }

    def forward(self, ops, rec, x, w):
        s, n = self.scale, self.cfg.seq_len * self.cfg.d_model
        x, y = x["x"], x["y"]

        def lora_forward():
            xa = ops.linear(x, w["lora_a"])
            return xa, ops.add(ops.linear(x, w["w"], w["b"]), ops.mul(ops.linear(xa, w["lora_b"]), s))

        xa, h = rec("lora_forward", lora_forward)

        def loss():
            diff = ops.sub(h, y)
            return diff, ops.mul(ops.sum(ops.square(diff), dim=None), 1 / n)

        diff, _ = rec("loss", loss)

        def lora_backward():
            dh = ops.mul(diff, 2 / n)
            grad_b = ops.mul(ops.matmul(ops.transpose(xa), dh), s)
            grad_a = ops.mul(ops.matmul(ops.transpose(x), ops.linear(dh, ops.transpose(w["lora_b"]))), s)
            return grad_a, grad_b

        grad_a, grad_b = rec("lora_backward", lora_backward)
        lr = self.cfg.lr
        return rec(
            "update",
            lambda: (ops.sub(w["lora_a"], ops.mul(grad_a, lr)), ops.sub(w["lora_b"], ops.mul(grad_b, lr))),
        )
