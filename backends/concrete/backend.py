"""`concrete`: TFHE through Concrete-Python: the workload quantized to integers and compiled to one circuit.

Threat model: the client encrypts its quantized input and decrypts the output; the server holds the
quantized weights in the clear and runs the circuit; one round trip.

Schemes (`scheme`): `fused` (module `fused`) runs any workload's forward on integers, with the
PBS savings described in `quant`; `demo` (module `demo`) is the public GPT-2 demo's head, ported,
the baseline. Either way weights and activations sit on `n_bits` grids calibrated in float on
`calibration_samples` seeded inputs (other seeds than the measured one); the same integers in numpy
are the quantized-clear model: per-op errors against float64 come from it (the fused circuit
reveals only its output), and the circuit's output is compared against both it
(`qclear_abs_error`) and float64 (`max_abs_error`).

Modes (`mode`): `compile` runs no FHE: counts, bit-widths and key sizes from compilation, the online
run is the quantized-clear model; `simulate` runs Concrete's simulation (rounding and p_error as in
FHE, no keys); `execute` makes keys, encrypts, runs and decrypts. Circuits and keys come from the
on-disk cache (`circuit`); latencies not executed come from the cost model (`cost`).

Per op: `pbs` and `ks` from the compiler's per-tag statistics (each op runs inside `fhe.tag`), and,
with `isolated_ops`, a latency from the op compiled as its own circuit; the fused circuit is timed as
one op, `circuit`; `protect` uploads the input ciphertexts and `reveal` downloads the output's
(`comm_bytes`, one round trip: `rounds`). Cell level: `max_bit_width`, `p_error`, `global_p_error`,
`complexity`, `key_bytes` (bootstrap + key-switch keys), `ct_bytes`, `security_bits` (Concrete's
configured security level), `compile_s`, `keygen_s`. Every column is declared in `COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from backends.base import (
    ALL,
    COMM_BYTES,
    COMM_BYTES_SPLIT,
    COMPILE_S,
    CT_BYTES,
    KEY_BYTES,
    KEYGEN_S,
    PBS,
    ROUNDS,
    SECURITY_BITS,
    Backend,
    BackendConfig,
    Capabilities,
    Column,
    report_activity,
)
from backends.concrete import circuit, cost
from backends.concrete.blocks import concrete_fhe
from backends.concrete.demo import DemoScheme
from backends.concrete.fused import FusedScheme
from backends.concrete.values import QuantSettings
from workloads.base import ConfigError, Workload

SCHEMES = ("fused", "demo")
MODES = ("compile", "simulate", "execute")
ROUNDING = ("none", "exact")
STRATEGIES = ("multi", "mono")
DEMO_CELL = ("attention_head", "softmax=exact")
# measured at seq 6, d_model 64, approximate rounding in one op's lookups at a time, the output against
# the circuit's own integers: qk_matmul 1.3, softmax 1.1, av_matmul 0.2, out_proj 0.2, all 1.2
APPROXIMATE_REFUSED = (
    "backend.rounding=approximate is refused: Concrete's approximate rounding is one step off on some "
    "entries and every lookup class of a head amplifies it (the output departs from the circuit's own "
    "integers by up to 4.6); use backend.rounding=exact"
)
ISOLATED_RUNS = 2
COLUMNS = (
    PBS, ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, CT_BYTES, KEY_BYTES, SECURITY_BITS, KEYGEN_S,
    Column("ks", "count", "op", "key switches of the op (Concrete's per-tag statistics)", True),
    Column("pbs_total", "count", "cell", "PBS of the whole circuit as Concrete counts them", True),
    Column("complexity", "count", "cell", "Concrete's price of all PBS and key switches: the cost model's input", True),
    Column("max_bit_width", "bits", "cell", "widest integer in the circuit", True),
    Column("p_error", "ratio", "cell", "error probability of one PBS", True, "accuracy"),
    Column("global_p_error", "ratio", "cell", "error probability of the whole circuit", True, "accuracy"),
    Column("scheme", "text", "cell", "`fused` (this suite's) or `demo` (the public GPT-2 demo's head, ported)",
           kind="parameter"),
    Column("n_bits", "bits", "cell", "bits of weights and activations", kind="parameter"),
    Column("output_projection", "text", "cell", "where a head's output projection runs: `server` (in the circuit) "
           "or `client` (in float on the heads it decrypts, as the public demo: the client then holds the "
           "projection's weights, a weaker threat model)", kind="parameter"),
    Column("fhe_mode", "text", "cell", "`compile`, `simulate` or `execute`", kind="parameter"),
    Column("cost_model", "text", "cell", "the cost model: `seconds_per_unit`, `overhead_s`, `spread` (largest "
           "relative residual of its fit) and whose `machine` (this one once an executed cell measured it, else the "
           "reference machine's)", kind="parameter"),
    COMPILE_S,
    Column("keys_load_s", "s", "cell", "this cell's key generation or load (execute mode)", kind="setup"),
    Column("cache_hit", "bool", "cell", "the circuit came from the on-disk cache", kind="flag"),
    Column("keys_cached", "bool", "cell", "the keys came from the on-disk cache (execute mode)", kind="flag"),
    Column("est_fhe_s", "s", "row", "the cost model's run time of the fused circuit (`total`, `circuit`) or of "
           "the op's own circuit (isolated op rows)", kind="estimate"),
    Column("qclear_abs_error", "value", "cell", "the circuit's output against the quantized-clear model (the "
           "same integers in numpy): 0 when the circuit computes what it should", kind="accuracy"),
    Column("topk_agreement", "ratio", "cell", "share of each output row's top-5 features that float64 also "
           "ranks top-5, worst over repeats", kind="accuracy"),
)  # fmt: skip


@dataclass
class ConcreteConfig(BackendConfig):
    name: str = "concrete"
    scheme: str = "fused"  # fused | demo (the public GPT-2 demo's head, ported: the baseline)
    n_bits: int = 4  # weights and activations, 2..8
    mode: str = "simulate"  # compile | simulate | execute
    rounding: str = "none"  # drop low bits before lookups: none | exact (approximate is refused: `validate`)
    rounding_bits: int | None = None  # bits kept of an accumulator before a lookup; None: n_bits + 2
    fuse_requant: bool = True  # lookups read accumulators directly; false: re-quantize them first (+1 PBS each)
    fuse_linear_requant: bool = False  # linear ops multiply accumulators directly; false: re-quantize them first
    out_proj_bits: int | None = None  # bits of the output projection's weights; None: n_bits (a head: no PBS)
    client_projection: bool = False  # heads: the client projects the heads in float, holding `wo` (the demo's split)
    calibration_samples: int = 4
    parameter_strategy: str = "multi"  # Concrete's parameter selection: multi | mono
    p_error: float | None = None  # None: Concrete's default
    global_p_error: float | None = None
    compress: bool = True  # seeded (compressed) input ciphertexts and evaluation keys, as the demo
    max_tlu_bits: int = 16  # Concrete's widest lookup
    max_key_gb: float = 12.0  # execute mode refuses circuits whose keys would not fit in memory
    isolated_ops: bool = True  # per-op latency: each op compiled (and executed) as its own circuit


class ConcreteBackend(Backend):
    name = "concrete"
    Config = ConcreteConfig
    capabilities = Capabilities(
        # power: x^4 spans more decades than any n_bits grid, so rows of small scores quantize to all
        # zeros and normalise to nothing (error ~1 at 4-8 bits, as in CrypTen's fixed point)
        workloads={
            "attention_head": {"softmax": ("exact", "relu", "quad2", "gaussian")},
            "layernorm": ALL,
            "block": {"softmax": ("exact", "relu", "quad2", "gaussian")},
            "lora_update": ALL,
            "llama_block": {"softmax": ("exact", "relu", "quad2", "gaussian")},
        },
        unsupported={"finetune": "not implemented: a TFHE training step (its backward multiplies encrypted tensors)"},
        columns=COLUMNS,
        same_cost=("gelu", "silu"),  # every form is one lookup per entry
    )
    # 4-bit per-tensor quantization leaves errors up to ~1.7 on outputs of magnitude ~5 (a block at
    # seq 8, d_model 64); above 2 is a cliff (relu attention at 4 bits: 2.9). Whether the circuit
    # computes its own integers right is `qclear_abs_error` (0 in every quick-sweep cell).
    default_tolerance = 2.0
    libraries = ("concrete-python",)
    threat_model = (
        "client encrypts its quantized input and decrypts the output; the server holds the quantized "
        "weights in the clear and evaluates the TFHE circuit; one round trip"
    )

    @classmethod
    def validate(cls, cfg):
        if not 2 <= cfg.n_bits <= 8:
            raise ConfigError(f"backend.n_bits={cfg.n_bits} must be between 2 and 8")
        if cfg.rounding == "approximate":
            raise ConfigError(APPROXIMATE_REFUSED)
        choices = (("scheme", SCHEMES), ("mode", MODES), ("rounding", ROUNDING), ("parameter_strategy", STRATEGIES))
        for key, allowed in choices:
            if getattr(cfg, key) not in allowed:
                raise ConfigError(f"backend.{key}={getattr(cfg, key)} is unknown; allowed: {', '.join(allowed)}")
        if cfg.rounding_bits is not None and not cfg.n_bits <= cfg.rounding_bits <= cfg.max_tlu_bits:
            raise ConfigError(
                f"backend.rounding_bits={cfg.rounding_bits} must be between n_bits and {cfg.max_tlu_bits}"
            )
        if cfg.calibration_samples < 1:
            raise ConfigError(f"backend.calibration_samples={cfg.calibration_samples} must be >= 1")
        if cfg.out_proj_bits is not None and not cfg.n_bits <= cfg.out_proj_bits <= 12:
            raise ConfigError(f"backend.out_proj_bits={cfg.out_proj_bits} must be between n_bits and 12")
        fused_only = (
            cfg.rounding != "none"
            or not cfg.fuse_requant
            or cfg.fuse_linear_requant
            or cfg.out_proj_bits
            or cfg.client_projection
        )
        if cfg.scheme == "demo" and fused_only:
            raise ConfigError(
                "backend.rounding, fuse_requant, fuse_linear_requant, out_proj_bits and client_projection apply to "
                "scheme=fused, not to the demo's head"
            )

    @classmethod
    def unavailable(cls):
        try:
            concrete_fhe()
        except ImportError as exc:
            return f"concrete-python does not import ({exc}); run `make setup`"
        return None

    def __init__(self, cfg: ConcreteConfig):
        self.cfg = cfg
        self.settings = QuantSettings(
            cfg.n_bits,
            cfg.rounding,
            cfg.rounding_bits or cfg.n_bits + 2,
            cfg.fuse_requant,
            cfg.fuse_linear_requant,
            cfg.out_proj_bits,
            cfg.client_projection,
        )
        self.info: dict[str, Any] = {}
        self.per_tag: dict[str, dict[str, float]] = {}
        self.traffic = {"up": 0, "down": 0}  # input and output ciphertexts' bytes
        self.qclear_error = 0.0
        self.topk = 1.0

    def why_not(self, workload):
        reason = super().why_not(workload)
        if reason is None and self.cfg.scheme == "demo" and (workload.name, workload.variant) != DEMO_CELL:
            return "scheme=demo is the public demo's head: attention_head with softmax=exact only"
        if reason is None and self.cfg.client_projection and workload.name != "attention_head":
            return "backend.client_projection applies to attention_head, whose output is the projected heads"
        return reason

    # setup: calibrate, quantize, trace, compile (or load from the cache), keys --------------------

    def setup(self, workload, weights):
        self.workload, self.reference = workload, workload.reference()[0]
        if self.cfg.scheme == "demo":
            scheme = DemoScheme(self.cfg.n_bits, workload, weights)
        else:
            scheme = FusedScheme(self.settings, workload, weights)
        self.program, hit = self._compiled(scheme)
        self.scheme = self.program.scheme
        self.info.update(self.program.info, cache_hit=hit)
        self.info.pop("name")
        self._statistics()
        if self.cfg.mode == "execute":
            self._refuse_oversized_keys(self.program)
            self.info.update(self.program.keygen())
        self.isolated = self._isolated_ops() if self.cfg.isolated_ops and isinstance(scheme, FusedScheme) else {}
        self.expected = self.scheme.clear(*self.scheme.encode(workload.inputs()))
        return weights

    def _compiled(self, scheme, op: str | None = None):
        """The (cached) program of `scheme`, or of one of its ops; and whether it was cached."""
        execute = self.cfg.mode == "execute"
        shaping = {k: v for k, v in vars(self.cfg).items() if k not in ("mode", "max_key_gb", "isolated_ops")}
        key = circuit.cache_key(shaping, execute, self.workload.describe(), op)
        samples = calibration_inputs(self.workload, self.cfg.calibration_samples)
        label = f"{self.workload.name} op {op}" if op else f"the {self.workload.name} circuit"
        return circuit.load_or_compile(
            key, scheme, samples, self.workload.inputs(), self._configuration(), self.cfg.max_tlu_bits, label
        )

    def _isolated_ops(self) -> dict[str, dict[str, Any]]:
        """Each op compiled as its own circuit: its latency executed (execute mode: a warm-up, then
        the median of `ISOLATED_RUNS`) or the cost model's (`est_fhe_s`, from its own complexity)."""
        found = {}
        for op in self.scheme.op_names():
            program, _ = self._compiled(self.scheme.isolate(op), op)
            estimate = cost.estimate(program.server.complexity, self.cfg.mode == "execute")
            found[op] = {"latency_s": estimate, "est_fhe_s": estimate, "estimated": True}
            if self.cfg.mode == "execute":
                self._refuse_oversized_keys(program)
                program.keygen()
                report_activity(f"running {op} as its own circuit")
                seconds = program.time_runs(self.workload.inputs(), ISOLATED_RUNS)
                found[op].update(latency_s=float(np.median(seconds)), estimated=False)
            found[op].update(isolated=True, latency_iqr_s=float("nan"))
        return found

    def _configuration(self):
        fhe = concrete_fhe()
        c, execute = self.cfg, self.cfg.mode == "execute"
        return fhe.Configuration(
            rounding_exactness=fhe.Exactness.EXACT,
            parameter_selection_strategy=c.parameter_strategy,
            p_error=c.p_error,
            global_p_error=c.global_p_error,
            compress_input_ciphertexts=c.compress,
            compress_evaluation_keys=c.compress,
            fhe_simulation=not execute,  # compile mode: statistics from the simulation server
            fhe_execution=execute,
            auto_adjust_rounders=True,
            min_max_strategy_preference="one-tlu-promoted",  # the multi-parameter default is far slower to compile
        )

    def _statistics(self):
        server, name = self.program.server, self.program.name
        pbs, ks = server.programmable_bootstrap_count_per_tag(name), server.key_switch_count_per_tag(name)
        self.per_tag = {tag: {"pbs": pbs.get(tag, 0), "ks": ks.get(tag, 0)} for tag in {*pbs, *ks}}
        self.traffic = {"up": server.size_of_inputs(name), "down": server.size_of_outputs(name)}
        client = self.cfg.scheme == "demo" or self.cfg.client_projection
        self.info.update(
            scheme=self.cfg.scheme,
            output_projection="client" if client else "server",
            n_bits=self.cfg.n_bits,
            fhe_mode=self.cfg.mode,
            pbs_total=server.programmable_bootstrap_count(name),
            p_error=server.p_error,
            global_p_error=server.global_p_error,
            complexity=server.complexity,
            key_bytes=self.program.key_bytes,
            ct_bytes=sum(self.traffic.values()),
            security_bits=int(self._configuration().security_level.value),
            estimated=self.cfg.mode != "execute",  # the total's latency is the cost model's
        )

    def _refuse_oversized_keys(self, program):
        need = program.key_bytes / 1e9
        if need > self.cfg.max_key_gb:
            raise ConfigError(
                f"concrete: this circuit's keys take {need:.1f} GB, over backend.max_key_gb={self.cfg.max_key_gb:g}; "
                "use backend.mode=simulate (latency from the cost model) or shrink the cell"
            )

    # online -------------------------------------------------------------------------------------

    def protect(self, inputs):
        ints = self.scheme.encode(inputs)
        return Protected(ints if self.cfg.mode == "compile" else self.program.encrypt(*ints), ints)

    def run(self, workload, rec, x, w):
        if self.cfg.mode == "compile":  # no FHE: the quantized-clear model stands in for the circuit
            return rec("circuit", lambda: Sealed(self.scheme.clear(*x.value)))
        return rec("circuit", lambda: Sealed(self.program.run(x.value)))

    def reveal(self, value):
        if isinstance(value, Protected):  # Concrete decrypts outputs only: the client's own integers
            return self.scheme.decode_inputs(value.ints)
        ints = value.value if self.cfg.mode == "compile" else self.program.decrypt(value.value)
        out = self.scheme.decode(ints)
        self.qclear_error = max(self.qclear_error, max_abs_difference(out, self.scheme.decode(self.expected)))
        self.topk = min(self.topk, topk_agreement(first(out), first(self.reference)))
        return out

    def op_outputs(self, workload, inputs, weights):
        return self.scheme.op_outputs(inputs)

    def op_counters(self):
        ops = {*self.per_tag, *self.isolated}
        per_op = {op: {**self.per_tag.get(op, {}), **self.isolated.get(op, {})} for op in ops}
        modelled = self.cfg.mode != "execute"  # protect / reveal quantize, encrypt only in execute mode
        up, down = self.traffic["up"], self.traffic["down"]
        per_op["protect"] = {"comm_bytes": up, "comm_bytes_up": up, "estimated": modelled}
        per_op["reveal"] = {"comm_bytes": down, "comm_bytes_down": down, "rounds": 1, "estimated": modelled}  # 1 trip
        per_op["circuit"] = {"est_fhe_s": self.estimate()}
        if modelled:  # the circuit's latency is the cost model's (its simulation time means nothing)
            per_op["circuit"].update(latency_s=self.estimate(), latency_iqr_s=float("nan"), estimated=True)
        return per_op

    def estimate(self) -> float:
        """The cost model's run time for the fused circuit (`cost`)."""
        return cost.estimate(self.info["complexity"], self.cfg.mode == "execute")

    def metrics(self):
        extra = {
            "qclear_abs_error": self.qclear_error,
            "topk_agreement": self.topk,
            "est_fhe_s": self.estimate(),
            "cost_model": cost.seconds_per_unit(self.cfg.mode == "execute"),  # per unit, overhead, spread, whose
        }
        return {**self.info, **extra}

    def close(self):
        self.program = None


@dataclass
class Protected:
    """The client's encrypted inputs (integers without FHE), and the integers it encrypted."""

    value: Any
    ints: tuple[np.ndarray, ...]


@dataclass
class Sealed:
    """The circuit's output as the server returns it (ciphertexts, or integers without FHE)."""

    value: Any


def first(value):
    return value[0] if isinstance(value, tuple) else value


def max_abs_difference(a, b) -> float:
    pairs = zip(a, b, strict=True) if isinstance(a, tuple) else [(a, b)]
    return max(float((x - y).abs().max()) for x, y in pairs)


def topk_agreement(out: torch.Tensor, ref: torch.Tensor, k: int = 5) -> float:
    """Mean share of each output row's top-k features (by value) that float64 also ranks top-k."""
    k = min(k, out.shape[-1])
    got, want = out.topk(k, dim=-1).indices, ref.topk(k, dim=-1).indices
    hits = (got.unsqueeze(-1) == want.unsqueeze(-2)).any(-1).double().mean()
    return float(hits)


def calibration_inputs(workload: Workload, n: int) -> list[dict[str, torch.Tensor]]:
    """`n` seeded input samples, from seeds the measured input does not use."""
    cfg = workload.cfg
    return [type(workload)(replace(cfg, seed=cfg.seed + 1 + i)).inputs() for i in range(n)]


BACKEND = ConcreteBackend
