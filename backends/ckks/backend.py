"""What a packed-CKKS backend does whatever library computes: configuration of the
approximations, the dry run, protect / run / reveal on packed matrices, the output's precision.

A subclass supplies `setup` (parameters, keys, its engine bound with `_bind`), `_errors` (its
library's failures turned into fixes), `counters` and `metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from backends.base import MEMORY_SHARE, Backend, BackendConfig, Column, machine_memory, map_values
from backends.ckks import approx
from backends.ckks.engine import DryEngine
from backends.ckks.ops import CkksOps
from backends.ckks.tensor import Packer, Weight, pow2
from workloads.base import ConfigError, Workload, run_op

SOFTMAX = ("exact", "power", "gaussian", "quad2")
FINETUNE_WHY = "its backward multiplies transposed private activations (X^T dY): the packing lacks them"
# 1/x input range (the softmax row sums) per variant, for seq_len <= 8; the upper end scales with
# seq_len / 8. Row sums seen in the seeded workloads (seq 4-32, d_model 16-256): exact 0.45-72,
# power 1e-12-627 (a row whose only score is near 0: below any usable range), quad2 17-916.
# Below `lo` the result loses accuracy; above 2 * hi Goldschmidt diverges.
RECIP_RANGES = {"exact": (0.25, 32.0), "power": (0.1, 512.0), "quad2": (8.0, 512.0), "gaussian": (0.25, 32.0)}
# fmt: off
COLUMNS = (
    Column("rotations", "count", "op", "Galois rotations", True),
    Column("levels", "levels", "cell", "rescales a fresh ciphertext allows before a refresh", True, "parameter"),
    Column("cell_depth", "levels", "cell", "multiplicative depth of the whole cell (dry run)", True, "parameter"),
    Column("slot_block", "count", "cell", "slots per matrix row in the packing", True, "parameter"),
    Column("output_precision_bits", "bits", "cell", "observed precision of the output: log2(max |reference| / "
           "max error)", kind="accuracy"),
)
# fmt: on


APPROX_LIMIT = 2.0**-10  # a stand-in worse than this on its stated range is refused


@dataclass
class CkksConfig(BackendConfig):
    """The approximations' ranges and degrees (recorded per row in `approx`) and the security gate."""

    scale_bits: int = 40
    allow_insecure: bool = False
    exp_lo: float = -40.0  # exp input range: scores + the -30 causal mask, gaussian exponents
    exp_hi: float = 4.0
    exp_degree: int = 7
    exp_squarings: int = 5
    recip_lo: float | None = None  # None: per softmax variant (RECIP_RANGES)
    recip_hi: float | None = None
    recip_bits: int = 12  # Goldschmidt factors for 2^-recip_bits relative error at the range ends
    rsqrt_lo: float = 0.25  # LayerNorm norm=exact: variance + eps range
    rsqrt_hi: float = 4.0
    rsqrt_degree: int = 3
    rsqrt_newton: int = 2
    max_memory_gb: float | None = None  # keys and encoded weights beyond this are refused; None: 85% of RAM


def validate_approx(cfg: CkksConfig) -> None:
    if not cfg.exp_lo < cfg.exp_hi or min(cfg.exp_degree, cfg.rsqrt_degree, cfg.recip_bits) < 1:
        raise ConfigError("backend.exp_lo < exp_hi and exp_degree, rsqrt_degree, recip_bits >= 1 are required")
    if (cfg.recip_lo is None) != (cfg.recip_hi is None) or (
        cfg.recip_lo is not None and not 0 < cfg.recip_lo < cfg.recip_hi
    ):
        raise ConfigError("backend.recip_lo / recip_hi: set both (0 < lo < hi) or neither")
    if not 0 < cfg.rsqrt_lo < cfg.rsqrt_hi:
        raise ConfigError("backend.rsqrt_lo / rsqrt_hi: need 0 < lo < hi")
    if cfg.max_memory_gb is not None and cfg.max_memory_gb <= 0:
        raise ConfigError("backend.max_memory_gb must be positive (or unset: 85% of this machine's memory)")
    stand_ins = (
        ("exp", approx.exp_error(cfg.exp_lo, cfg.exp_hi, cfg.exp_degree, cfg.exp_squarings), "exp", "squarings"),
        (
            "1/sqrt",
            approx.rsqrt_error(cfg.rsqrt_lo, cfg.rsqrt_hi, cfg.rsqrt_degree, cfg.rsqrt_newton),
            "rsqrt",
            "newton",
        ),
    )
    for what, err, name, steps in stand_ins:
        if err > APPROX_LIMIT:
            lo, hi, degree, count = (getattr(cfg, f"{name}_{k}") for k in ("lo", "hi", "degree", steps))
            raise ConfigError(
                f"{what} on [{lo:g}, {hi:g}] with degree {degree} and {name}_{steps}={count} is off by {err:.2g} "
                f"(limit {APPROX_LIMIT:.2g}): raise backend.{name}_degree or {name}_{steps}, or narrow the range"
            )


def flatten(value) -> torch.Tensor:
    """A revealed value (tensor, tuple or dict of them) as one float64 vector."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).double()
    parts = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value)
    return torch.cat([flatten(v) for v in parts])


MLP_WORKLOADS = ("block", "llama_block")  # `Workload.d_ff` exists on all (4 d_model by default): it cannot tell


def attention_window(workload) -> int | None:
    """Slots of one head's window in the attention products (n scores, head_dim values, `block`'s
    heads head_merge times wider); None for workloads without heads."""
    if not workload.uses_heads:
        return None
    head_dim = workload.head_dim * getattr(workload.cfg, "head_merge", 1)
    return pow2(max(head_dim, workload.cfg.seq_len))


def cell_shape(workload: Workload) -> tuple[int, int, int]:
    """(rows, block B, slots needed): B holds a row replicated for the widest product; the slots
    hold every matrix in one ciphertext, and a head's window doubled for the row shifts."""
    cfg = workload.cfg
    dims = [cfg.d_model, cfg.seq_len] + ([workload.d_ff] if workload.name in MLP_WORKLOADS else [])
    block = pow2(2 * max(pow2(d) for d in dims))
    window = attention_window(workload)
    doubled = 2 if window and cfg.seq_len != pow2(cfg.seq_len) else 1
    return cfg.seq_len, block, max(doubled * cfg.seq_len * block, 2 * cfg.seq_len * (window or 0))


def packing_why_not(workload, slots: int) -> str | None:
    """Why the packing cannot hold this cell in ciphertexts of `slots` slots, or None. Wide
    matrices tile over ciphertexts; the attention products need one head's rows in one ciphertext,
    with room to shift them."""
    n, block, _ = cell_shape(workload)
    if block > slots:
        return f"a row's block of {block} slots exceeds the {slots} a ciphertext holds"
    window = attention_window(workload)
    if window and not (n * window == slots or 2 * n * window <= slots):
        return (
            f"the attention products need {n} rows of a {window}-slot head window, doubled, in one "
            f"ciphertext of {slots} slots: shrink seq_len or use a larger ring"
        )
    return None


class PackedCkks(Backend):
    """Shared by the CKKS backends; `self.engine` computes, `self.ops` dispatches the workload's ops."""

    too_large_hint = ""  # what else to do with a cell too large for memory
    refresh_counter = "refreshes"  # the `Stats` field counting this backend's refreshes

    def __init__(self, cfg: CkksConfig):
        self.cfg = cfg
        self.engine = None
        self.last = {"up": 0, "down": 0}
        self.rounds = 0
        self.info: dict[str, Any] = {}
        self.out, self.reference = None, None

    def max_slots(self) -> int:
        """Slots of the largest ciphertext this backend's configuration allows."""
        raise NotImplementedError

    def why_not(self, workload):
        return super().why_not(workload) or packing_why_not(workload, self.max_slots())

    def recip_range(self, workload) -> tuple[float, float]:
        if self.cfg.recip_lo is not None:
            return self.cfg.recip_lo, self.cfg.recip_hi
        lo, hi = RECIP_RANGES[getattr(workload.cfg, "softmax", "exact")]
        return lo, hi * max(workload.cfg.seq_len, 8) / 8

    def approx_text(self, workload) -> str:
        c = self.cfg
        lo, hi = self.recip_range(workload)
        steps = approx.goldschmidt_steps(lo, hi, c.recip_bits)
        return (
            f"exp=[{c.exp_lo:g},{c.exp_hi:g}]/deg{c.exp_degree}/sq{c.exp_squarings},"
            f"recip=[{lo:g},{hi:g}]/goldschmidt{steps},"
            f"rsqrt=[{c.rsqrt_lo:g},{c.rsqrt_hi:g}]/deg{c.rsqrt_degree}/newton{c.rsqrt_newton}"
        )

    def dry(self, params, workload, weights) -> DryEngine:
        """The cell on the numpy twin: its depth, rotation steps, refreshes and plaintexts."""
        engine = DryEngine(params)
        self._bind(engine, workload)
        x = self.protect(workload.inputs())
        self.reveal(workload.forward(self.ops, run_op, x, self._weights(weights)))
        return engine

    def _bind(self, engine, workload) -> None:
        rows, block, _ = cell_shape(workload)
        self.engine, self.packer = engine, Packer(engine, rows, block)
        self.ops = CkksOps(self.packer, self.cfg, self.recip_range(workload))

    def _start(self, engine, workload) -> None:
        """Bind the real engine for the online runs."""
        self._bind(engine, workload)
        self.rounds, self.last, self.out = 0, {"up": 0, "down": 0}, None
        self.reference = flatten(workload.reference()[0])
        self.info["output_precision_bits"] = math.nan

    def memory_limit(self) -> int:
        """Bytes the cell's keys and plaintexts may take: `max_memory_gb`, or `MEMORY_SHARE` of this
        machine's (key generation's transient peak comes on top of what the keys keep)."""
        if self.cfg.max_memory_gb is not None:
            return int(self.cfg.max_memory_gb * 2**30)
        return int(MEMORY_SHARE * machine_memory())

    def check_memory(self, need: int) -> None:
        """Refuse, before keygen, a cell whose keys and encoded plaintexts (`need` bytes) do not fit."""
        if need > self.memory_limit():
            raise ConfigError(
                f"{self.name}: this cell's keys and encoded weights need ~{need / 2**30:.1f} GB > "
                f"{self.memory_limit() / 2**30:.1f} GB (backend.max_memory_gb); shrink the cell or the modulus chain, "
                f"or raise the limit if the machine has the memory{self.too_large_hint}"
            )

    def _weights(self, weights):
        return {k: Weight(k, v.double().numpy()) for k, v in weights.items()}

    @staticmethod
    def _errors(exc: Exception) -> Exception:
        """The library's failure as an error naming the fix (the exception itself by default)."""
        return exc

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except (ValueError, RuntimeError) as exc:
            raise self._errors(exc) from exc

    def protect(self, inputs):
        self.engine.new_run()
        before = self.engine.stats.bytes_up
        out = {k: self._guard(self.packer.encrypt, v.double().numpy()) for k, v in inputs.items()}
        self.last["up"] = self.engine.stats.bytes_up - before
        return out

    def run(self, workload, rec, x, w):
        self.out = self._guard(workload.forward, self.ops, rec, x, w)
        return self.out

    def reveal(self, value):
        before = self.engine.stats.bytes_down
        out = map_values(lambda mat: torch.from_numpy(self._guard(self.packer.decrypt, mat).copy()), value)
        self.last["down"] = self.engine.stats.bytes_down - before
        self.rounds += 1
        if value is self.out and self.reference is not None:  # the cell's output: its precision in bits
            err = float((flatten(out) - self.reference).abs().max())
            scale = float(self.reference.abs().max())
            self.info["output_precision_bits"] = math.log2(scale / err) if err > 0 and scale > 0 else math.inf
        return out

    def counters(self):
        if self.engine is None:
            return {}
        s = self.engine.stats
        return {
            "depth": self.engine.depth_total + s.depth,
            self.refresh_counter: getattr(s, self.refresh_counter),
            "rotations": s.rotations,
            "rounds": self.rounds + s.round_trips,
            "comm_bytes_up": s.bytes_up,
            "comm_bytes_down": s.bytes_down,
            "comm_bytes": s.bytes_up + s.bytes_down,
        }

    def metrics(self):
        return {**self.info, "ct_bytes": self.last["up"] + self.last["down"]}

    def close(self):
        self.engine = None
