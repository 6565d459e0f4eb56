"""`concrete`: TFHE through Concrete-Python: the workload quantized to integers and compiled to one circuit.

Threat model: the client encrypts its quantized input and decrypts the output; the server holds the
quantized weights in the clear and runs the circuit; one round trip.

Quantization (`_tfhe_quant`): weights and activations on `n_bits` grids, ranges calibrated in float
on `calibration_samples` seeded inputs (other seeds than the measured one). The same forward run on
int64 arrays is the quantized-clear model: per-op errors against float64 come from it (the fused
circuit reveals only its output), and the circuit's output is compared against both it
(`qclear_abs_error`) and float64 (`max_abs_error`).

Modes (`mode`): `compile` runs no FHE: counts, bit-widths and key sizes from compilation, the online
run is the quantized-clear model; `simulate` runs Concrete's simulation (approximate rounding and
p_error as in FHE, no keys); `execute` makes keys, encrypts, runs and decrypts.

Per op: `pbs` and `ks` from the compiler's per-tag statistics (each op runs inside `fhe.tag`); the
fused circuit is timed as one op, `circuit`. Cell level: `max_bit_width`, `p_error`,
`global_p_error`, `complexity`, `key_bytes` (bootstrap + key-switch keys), `ct_bytes` (input +
output ciphertexts, also `comm_bytes`), `security_bits` (Concrete's configured security level),
`compile_s`, `keygen_s`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any

import numpy as np
import torch

from backends import _tfhe_cost
from backends._tfhe_quant import QuantOps, QuantSettings, concrete_fhe
from backends.base import Backend, BackendConfig, Capabilities
from workloads.base import Capture, ConfigError, Workload, run_op

MODES = ("compile", "simulate", "execute")
ROUNDING = ("none", "exact", "approximate")


@dataclass
class ConcreteConfig(BackendConfig):
    name: str = "concrete"
    n_bits: int = 4  # weights and activations, 2..8
    mode: str = "simulate"  # compile | simulate | execute
    rounding: str = "none"  # drop low bits before lookups: none | exact | approximate (see the README)
    rounding_bits: int | None = None  # bits kept of an accumulator before a lookup; None: n_bits + 2
    calibration_samples: int = 4
    parameter_strategy: str = "multi"  # Concrete's parameter selection: multi | mono
    p_error: float | None = None  # None: Concrete's default
    global_p_error: float | None = None
    max_tlu_bits: int = 16  # Concrete's widest lookup


class ConcreteBackend(Backend):
    name = "concrete"
    Config = ConcreteConfig
    capabilities = Capabilities(
        # power: x^4 spans more decades than any n_bits grid, so rows of small scores quantize to all
        # zeros and normalise to nothing (error ~1 at 4-8 bits, as in CrypTen's fixed point)
        workloads={"attention_head": {"softmax": ("exact", "relu", "quad2")}},
        counters=("pbs", "ks", "key_bytes", "ct_bytes", "comm_bytes", "security_bits", "max_bit_width"),
        fused=True,
    )
    # Errors seen at n_bits 4-6 on outputs of magnitude ~4: 0.5-1.2 (softmax normalisation on a few
    # integer levels dominates); a broken circuit is off by 2-4. The bound catches breakage, not precision.
    default_tolerance = 1.5
    threat_model = (
        "client encrypts its quantized input and decrypts the output; the server holds the quantized "
        "weights in the clear and evaluates the TFHE circuit; one round trip"
    )

    @classmethod
    def validate(cls, cfg):
        if not 2 <= cfg.n_bits <= 8:
            raise ConfigError(f"backend.n_bits={cfg.n_bits} must be between 2 and 8")
        for key, allowed in (("mode", MODES), ("rounding", ROUNDING), ("parameter_strategy", ("multi", "mono"))):
            if getattr(cfg, key) not in allowed:
                raise ConfigError(f"backend.{key}={getattr(cfg, key)} is unknown; allowed: {', '.join(allowed)}")
        if cfg.rounding_bits is not None and not cfg.n_bits <= cfg.rounding_bits <= cfg.max_tlu_bits:
            raise ConfigError(
                f"backend.rounding_bits={cfg.rounding_bits} must be between n_bits and {cfg.max_tlu_bits}"
            )
        if cfg.calibration_samples < 1:
            raise ConfigError(f"backend.calibration_samples={cfg.calibration_samples} must be >= 1")

    @classmethod
    def unavailable(cls):
        try:
            concrete_fhe()
        except ImportError as exc:
            return f"concrete-python does not import ({exc}); run `make setup`"
        return None

    def __init__(self, cfg: ConcreteConfig):
        self.cfg = cfg
        self.settings = QuantSettings(cfg.n_bits, cfg.rounding, cfg.rounding_bits or cfg.n_bits + 2)
        self.info: dict[str, Any] = {}
        self.per_tag: dict[str, dict[str, float]] = {}
        self.qclear_error = 0.0
        self.topk = 1.0

    def why_not(self, workload):
        reason = super().why_not(workload)
        if reason is None and workload.uses_heads and workload.cfg.n_heads > 1 and workload.name != "attention_head":
            return "one head per circuit"
        return reason

    # setup: calibrate, quantize, trace, compile --------------------------------------------------

    def setup(self, workload, weights):
        fhe = concrete_fhe()

        self.workload, self.weights = workload, weights
        self.reference = workload.reference()[0]
        calib = QuantOps(self.settings, "calibrate")
        samples = calibration_inputs(workload, self.cfg.calibration_samples)
        for sample in samples:
            self._forward(calib, sample, weights)
        self.ranges = calib.ranges
        self.clear = QuantOps(self.settings, "clear", self.ranges)
        inputset = [self._quantize(x).v for x in [*samples, workload.inputs()]]
        key = cache_key(self.cfg, workload, self.ranges)
        self.info["cache_hit"] = key in _CIRCUITS
        start = perf_counter()
        if not self.info["cache_hit"]:
            self.rounders = [fhe.AutoRounder(target_msbs=self.settings.rounding_bits) for _ in self.ranges]
            compiler = fhe.Compiler(self._traced, {"x": "encrypted"})
            graph = compiler.trace(inputset, self._configuration(fhe))
            check_widths(graph, self.cfg.max_tlu_bits)
            try:
                _CIRCUITS[key] = compiler.compile(inputset, self._configuration(fhe)), self.rounders
            except RuntimeError as exc:
                if "NoParametersFound" not in str(exc):
                    raise
                raise ConfigError(
                    f"concrete: no TFHE parameters fit this circuit ({graph.maximum_integer_bit_width()}-bit "
                    "values); set backend.rounding=exact or approximate, or lower backend.n_bits"
                ) from None
        self.circuit, self.rounders = _CIRCUITS[key]
        self.info["compile_s"] = perf_counter() - start
        self.clear.rounders = self.rounders  # as Concrete adjusted them
        self.output = self._forward(self.clear, workload.inputs(), weights)  # the quantized-clear output
        start = perf_counter()
        if self.cfg.mode == "execute":
            self.circuit.keygen()
        self.info["keygen_s"] = perf_counter() - start
        self._statistics()
        return weights

    def _configuration(self, fhe):
        c = self.cfg
        return fhe.Configuration(
            rounding_exactness=fhe.Exactness.APPROXIMATE if c.rounding == "approximate" else fhe.Exactness.EXACT,
            parameter_selection_strategy=c.parameter_strategy,
            p_error=c.p_error,
            global_p_error=c.global_p_error,
            fhe_simulation=c.mode != "execute",  # compile mode: statistics from the simulation server
            fhe_execution=c.mode == "execute",
            auto_adjust_rounders=True,
            min_max_strategy_preference="one-tlu-promoted",  # the multi-parameter default is far slower to compile
        )

    def _forward(self, ops: QuantOps, inputs, weights, rec=run_op, traced=None):
        """The workload on `ops`; each op's result is computed inside its own `rec` call."""
        ops.calls = 0
        x = {k: ops.private(v) for k, v in inputs.items()}
        if traced is not None:
            x = {"x": ops.encrypted(x["x"], traced)}
        w = {k: ops.weight(v) for k, v in weights.items()}
        return self.workload.forward(ops, lambda name, fn: rec(name, lambda: ops.resolve(fn())), x, w)

    def _traced(self, x):
        fhe = concrete_fhe()

        def tagged(name, fn):
            with fhe.tag(name):
                return fn()

        ops = QuantOps(self.settings, "trace", self.ranges, self.rounders)
        return self._forward(ops, self.workload.inputs(), self.weights, tagged, traced=x).v

    def _quantize(self, inputs):
        self.clear.calls = 0
        return self.clear.private(inputs["x"])

    def _statistics(self):
        """Counts and sizes from the server Concrete compiled (the simulation one unless executing:
        same parameters, and it spares a second compilation)."""
        module, name = self.circuit._module, self.circuit._name  # Concrete 2.11 keeps both servers here
        server = (module.execution_runtime if self.cfg.mode == "execute" else module.simulation_runtime).val.server
        pbs, ks = server.programmable_bootstrap_count_per_tag(name), server.key_switch_count_per_tag(name)
        self.per_tag = {tag: {"pbs": pbs.get(tag, 0), "ks": ks.get(tag, 0)} for tag in {*pbs, *ks}}
        ct = server.size_of_inputs(name) + server.size_of_outputs(name)
        self.info.update(
            n_bits=self.cfg.n_bits,
            fhe_mode=self.cfg.mode,
            pbs_total=server.programmable_bootstrap_count(name),
            max_bit_width=self.circuit.graph.maximum_integer_bit_width(),
            p_error=server.p_error,
            global_p_error=server.global_p_error,
            complexity=server.complexity,
            key_bytes=server.size_of_bootstrap_keys + server.size_of_keyswitch_keys,
            ct_bytes=ct,
            comm_bytes=ct,
            security_bits=int(self.circuit.configuration.security_level.value),
            estimated=self.cfg.mode != "execute",
        )

    # online -------------------------------------------------------------------------------------

    def protect(self, inputs):
        q = self._quantize(inputs)
        return Sealed(self.circuit.encrypt(q.v) if self.cfg.mode == "execute" else q.v, q.scale)

    def run(self, workload, rec, x, w):
        if self.cfg.mode == "execute":
            circuit = lambda: self.circuit.run(x.value)  # noqa: E731
        elif self.cfg.mode == "simulate":
            circuit = lambda: self.circuit.simulate(x.value)  # noqa: E731
        else:
            circuit = lambda: self._forward(self.clear, self.workload.inputs(), self.weights).v  # noqa: E731
        return rec("circuit", lambda: Sealed(circuit(), self.output.scale, output=True))

    def reveal(self, value):
        ints = self.circuit.decrypt(value.value) if self.cfg.mode == "execute" else value.value
        out = torch.as_tensor(np.asarray(ints, dtype=np.float64) * value.scale)
        if value.output:
            self.qclear_error = max(self.qclear_error, float((out - self.clear.dequantize(self.output)).abs().max()))
            self.topk = min(self.topk, topk_agreement(out, self.reference))
        return out

    def op_outputs(self, workload, inputs, weights):
        capture = Capture(self.clear.dequantize)
        self._forward(self.clear, inputs, weights, capture)
        return capture.outputs

    def op_counters(self):
        if self.cfg.mode == "execute":
            return self.per_tag
        # without execution the circuit's latency is the cost model's (its simulation time means nothing)
        return {**self.per_tag, "circuit": {"latency_s": self.estimate(), "latency_iqr_s": float("nan")}}

    def estimate(self) -> float:
        """The cost model's run time for this circuit (`_tfhe_cost`)."""
        return self.info["complexity"] * _tfhe_cost.seconds_per_unit()["seconds_per_unit"]

    def metrics(self):
        extra = {"qclear_abs_error": self.qclear_error, "topk_agreement": self.topk, "est_fhe_s": self.estimate()}
        return {**self.info, **extra}

    def close(self):
        self.circuit = None


@dataclass
class Sealed:
    """What the client sends or receives: integers (ciphertexts when executing) and their scale."""

    value: Any
    scale: float
    output: bool = False


_CIRCUITS: dict[str, tuple[Any, list]] = {}  # compiled circuits of this process and their rounders, by `cache_key`


def cache_key(cfg: ConcreteConfig, workload: Workload, ranges) -> str:
    """A hash of everything that shapes the circuit: backend config, workload config and seed
    (weights and calibration follow from them), and the calibrated ranges."""
    text = repr((sorted(vars(cfg).items()), sorted(workload.describe().items()), ranges))
    return hashlib.sha256(text.encode()).hexdigest()


def check_widths(graph, limit: int) -> None:
    """Refuse a circuit with a lookup wider than Concrete supports, naming the op and the width (a
    rounded input counts the bits it keeps)."""
    for node in graph.graph.nodes:
        if node.converted_to_table_lookup and node.properties.get("name") != "round_bit_pattern":
            width = max(kept_bits(p) for p in graph.ordered_preds_of(node))
            if width > limit:
                raise ConfigError(
                    f"concrete: op {node.tag or '?'} needs a {width}-bit lookup, over the {limit} bits Concrete "
                    f"supports; set backend.rounding=approximate or lower backend.rounding_bits / backend.n_bits"
                )


def kept_bits(node) -> int:
    lsbs = node.properties.get("kwargs", {}).get("lsbs_to_remove", 0)
    return node.output.dtype.bit_width - (lsbs if isinstance(lsbs, int) else 0)


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
