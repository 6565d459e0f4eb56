"""What a workload is: a declarative spec, seeded data, and one forward function over `Ops`.

The forward function names its operations by calling `rec(name, fn)`: the recorder runs `fn` and,
depending on who passed it, times it, collects counters, reveals its output, or opens a tag in a
traced circuit. The same function therefore serves eager backends, traced ones and lock-step MPC
parties, and the float64 reference is that function on `TorchOps`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from workloads.ops import Ops, TorchOps

T = TypeVar("T")


class ConfigError(ValueError):
    """A user error in the configuration; its message is one line naming the key and the fix."""


def require(checks: list[tuple[bool, str]]) -> None:
    """ConfigError with the message of the first check that fails."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


class Recorder(Protocol):
    def __call__(self, name: str, fn: Callable[[], T]) -> T: ...


def run_op(name: str, fn: Callable[[], T]) -> T:
    """The recorder that only runs the op."""
    return fn()


def scoped(rec: Recorder, prefix: str) -> Recorder:
    """A recorder that names ops `prefix.name`, for workloads built from other workloads' parts."""
    return lambda name, fn: rec(f"{prefix}.{name}", fn)


class Capture:
    """Recorder that keeps every op's output, converted by `reveal` (identity for torch values)."""

    def __init__(self, reveal: Callable[[Any], Any] = lambda v: v):
        self.reveal = reveal
        self.outputs: dict[str, Any] = {}

    def __call__(self, name, fn):
        out = fn()
        self.outputs[name] = self.reveal(out)
        return out


@dataclass
class WorkloadConfig:
    """Sizes, seed and tolerance shared by every workload; subclasses add their variant switches.

    `tolerance` bounds `max_abs_error` of every op's output against float64; None takes the
    backend's default for its number format.
    """

    name: str = "?"
    seq_len: int = 8
    d_model: int = 64
    n_heads: int = 4
    d_ff: int | None = None  # None: 4 * d_model, as in GPT-2
    lora_rank: int = 4
    seed: int = 0
    tolerance: float | None = None


class Workload(ABC):
    """A workload: `Config` (a dataclass), its variant switches, data, and `forward`."""

    name: ClassVar[str]
    Config: ClassVar[type[WorkloadConfig]]
    variants: ClassVar[dict[str, tuple[str, ...]]] = {}
    each_fixed: ClassVar[tuple[str, ...]] = ()  # switches the `each` sweep leaves at their default
    uses_heads: ClassVar[bool] = False

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg

    @classmethod
    def validate(cls, cfg: WorkloadConfig) -> None:
        """Raise ConfigError for impossible sizes or unknown variants."""
        for key in ("seq_len", "d_model", "n_heads", "lora_rank"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"workload.{key}={getattr(cfg, key)} must be a positive integer")
        if cfg.d_ff is not None and cfg.d_ff <= 0:
            raise ConfigError(f"workload.d_ff={cfg.d_ff} must be a positive integer or null")
        if cfg.tolerance is not None and not cfg.tolerance >= 0:  # a negative bound flags every cell; NaN none
            raise ConfigError(
                f"workload.tolerance={cfg.tolerance} must be >= 0 (a bound on max_abs_error) or null (the backend's)"
            )
        if cls.uses_heads and cfg.d_model % cfg.n_heads:
            raise ConfigError(
                f"workload.d_model={cfg.d_model} is not divisible by workload.n_heads="
                f"{cfg.n_heads}; choose n_heads among {divisors(cfg.d_model)}"
            )
        for switch, allowed in cls.variants.items():
            value = getattr(cfg, switch)
            if value not in allowed:
                raise ConfigError(
                    f"workload.{switch}={value} is not a variant of {cls.name}; allowed: {', '.join(allowed)}"
                )

    @property
    def variant(self) -> str:
        """The variant switches as `key=value,...` (empty when the workload has none)."""
        return ",".join(f"{k}={getattr(self.cfg, k)}" for k in self.variants)

    @property
    def d_ff(self) -> int:
        return self.cfg.d_ff or 4 * self.cfg.d_model

    @property
    def head_dim(self) -> int:
        return self.cfg.d_model // self.cfg.n_heads

    def generator(self, stream: int) -> torch.Generator:
        """Independent seeded streams for inputs (0) and weights (1)."""
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + stream)

    def randn(self, gen: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    @abstractmethod
    def inputs(self) -> dict[str, torch.Tensor]:
        """The client's private inputs (float64, seeded)."""

    @abstractmethod
    def weights(self) -> dict[str, torch.Tensor]:
        """The model's weights (float64, seeded)."""

    @abstractmethod
    def forward(self, ops: Ops, rec: Recorder, x: dict[str, Any], w: dict[str, Any]) -> Any:
        """The computation over `ops`, each named op run through `rec`; returns the output(s)."""

    def public_weights(self) -> set[str]:
        """Weights the threat model makes public (known to every party); backends that protect
        weights may keep these in the clear. Empty by default: every weight is private."""
        return set()

    def reference(self) -> tuple[Any, dict[str, Any]]:
        """Float64 output and every op's output, computed on `TorchOps`."""
        capture = Capture()
        out = self.forward(TorchOps(torch.float64), capture, self.inputs(), self.weights())
        return out, capture.outputs

    def describe(self) -> dict[str, Any]:
        """The config as plain data, with derived sizes resolved."""
        return {**asdict(self.cfg), "d_ff": self.d_ff}


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
