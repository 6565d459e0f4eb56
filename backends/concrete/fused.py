"""The `fused` scheme: the workload's own forward on `QuantOps`, so any workload compiles to TFHE.

Calibration runs the forward in float on the calibration inputs (the range of every lookup); the
same forward on int64 arrays is the quantized-clear model, and on Concrete tracers the circuit, each
op inside its `fhe.tag`. The savings against the public demo's head (`demo`) are in
`quant`: re-quantization fused into the lookup that follows, products by squares of sums, and
no lookups or products spent on entries the causal mask fixes.

`client_projection` ends the circuit at the heads (the attention's output before its projection)
and leaves the projection to the client, in float, as the public demo does: the client then holds
the output projection's weights.

`isolate(op)` makes one op its own circuit, for per-op latency (a fused circuit's ops cannot be
timed apart): its encrypted inputs are the values it reads (the workload's inputs and earlier ops'
outputs, found by tracing), and its lookups keep the slots, scales and rounders they have in the
whole forward, so it computes exactly what that op computes inside the fused circuit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backends.concrete.blocks import concrete_fhe
from backends.concrete.circuit import circuit_function, inputset_entry
from backends.concrete.quant import QuantOps
from backends.concrete.values import Q, QuantSettings, dequantize
from workloads.base import Capture, Workload, run_op
from workloads.ops import TorchOps


class FusedScheme:
    """One workload on `QuantOps`; the interface `circuit.Scheme` documents."""

    def __init__(self, settings: QuantSettings, workload: Workload, weights: dict[str, torch.Tensor]):
        self.settings, self.workload, self.weights = settings, workload, weights
        self.inputs = tuple(workload.inputs())
        self.ops = None  # the clear QuantOps, once calibrated

    def calibrate(self, samples: list[dict[str, torch.Tensor]]) -> None:
        calib = QuantOps(self.settings, "calibrate")
        for inputs in samples:
            self._forward(calib, self._inputs(calib, inputs))
        fhe = concrete_fhe()
        # one rounder per lookup slot: Concrete adjusts them to the inputset when compiling
        rounders = [fhe.AutoRounder(target_msbs=self.settings.rounding_bits) for _ in calib.ranges]
        self.ops = QuantOps(self.settings, "clear", calib.ranges, rounders)

    def encode(self, inputs: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
        return tuple(q.v for q in self._inputs(self.ops, inputs).values())

    def circuit(self, *encrypted, tag=run_op):
        ops = self._tracing()
        return values(self._forward(ops, self._inputs(ops, self.workload.inputs(), encrypted), rec=tag))

    def clear(self, *ints) -> Any:
        x = self._inputs(self.ops, self.workload.inputs(), ints)
        self.output = self._forward(self.ops, x)  # scales and known entries, for `decode`
        return values(self.output)

    def decode(self, out) -> Any:
        """The client's output from the circuit's integers, on the scales of the last `clear` run
        (the structure does not depend on the input)."""
        if isinstance(self.output, tuple):
            return tuple(dequantize(q, v) for q, v in zip(self.output, out, strict=True))
        out = dequantize(self.output, out)
        return self._client_projection(out) if self.settings.client_projection else out

    def decode_inputs(self, ints) -> dict[str, torch.Tensor]:
        quantized = self._inputs(self.ops, self.workload.inputs())
        return {name: dequantize(q, v) for (name, q), v in zip(quantized.items(), ints, strict=True)}

    def op_outputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        capture = Capture(self.ops.dequantize)
        self._forward(self.ops, self._inputs(self.ops, inputs), rec=capture)
        if self.settings.client_projection:
            capture.outputs["out_proj"] = self._client_projection(capture.outputs["av_matmul"])
        return capture.outputs

    def op_names(self) -> list[str]:
        capture = Capture()
        self._forward(self.ops, self._inputs(self.ops, self.workload.inputs()), rec=capture)
        return list(capture.outputs)

    def isolate(self, op: str) -> IsolatedOp:
        return IsolatedOp(self, op)

    def boundary(self, op: str, inputs) -> tuple[dict[str, Q], list[Any], int]:
        """In the clear model on `inputs`: the quantized inputs, every op's output before `op` (as
        returned), and the lookup slot `op` starts at."""
        x, earlier = self._inputs(self.ops, inputs), []

        def rec(name, fn):
            if name == op:
                raise Reached(self.ops.calls)
            earlier.append(fn())
            return earlier[-1]

        try:
            self._forward(self.ops, x, rec)
        except Reached as reached:
            return x, earlier, reached.value
        raise ValueError(f"{self.workload.name} has no op {op}")

    def replay(self, op: str, start: int, x: dict[str, Q], earlier: list[Any], tag):
        """`op` alone, traced: earlier ops are not run but return `earlier`, values standing for
        their outputs (tracers); `op`'s lookups start at slot `start`, as in the whole forward."""
        ops, outputs = self._tracing(), iter(earlier)

        def rec(name, fn):
            if name != op:
                return next(outputs)
            ops.calls = start
            raise Reached(tag(name, fn))

        try:
            self._forward(ops, x, rec)
        except Reached as reached:
            return values(reached.value)
        raise ValueError(f"{self.workload.name} has no op {op}")

    def _tracing(self) -> QuantOps:
        return QuantOps(self.settings, "trace", self.ops.ranges, self.ops.rounders)

    def _inputs(self, ops: QuantOps, inputs, encrypted=None) -> dict[str, Q]:
        """`inputs` quantized (a lookup slot each), or their structure on the `encrypted` values."""
        ops.calls = 0
        x = {k: ops.private(v) for k, v in inputs.items()}
        if encrypted is None:
            return x
        return {name: ops.encrypted(q, v) for (name, q), v in zip(x.items(), encrypted, strict=True)}

    def _forward(self, ops: QuantOps, x: dict[str, Q], rec=run_op):
        """The workload on `ops`; every op's result is computed inside its own `rec` call. With
        `client_projection` the forward ends at the heads: `out_proj` returns them untouched."""
        bits = {"wo": self.settings.out_proj_bits}
        w = {k: ops.weight(v, bits.get(k)) for k, v in self.weights.items()}
        last = []

        def step(name, fn):
            if name == "out_proj" and self.settings.client_projection:
                return last[-1]
            last.append(rec(name, lambda: ops.resolve(fn())))
            return last[-1]

        return self.workload.forward(ops, step, x, w)

    def _client_projection(self, heads: torch.Tensor) -> torch.Tensor:
        """The output projection on the client, in float, as the public demo does."""
        torch_ops = TorchOps()
        return torch_ops.linear(torch_ops.merge_heads(heads), self.weights["wo"], self.weights["bo"])


class IsolatedOp:
    """One op of a `FusedScheme` as a circuit of its own (see the module docstring); the interface
    `circuit.Scheme` documents, for compiling and running it."""

    def __init__(self, parent: FusedScheme, op: str):
        self.parent, self.op = parent, op
        x, earlier, self.start = parent.boundary(op, parent.workload.inputs())
        self.structure = (x, earlier)  # Q values, whose integers the circuit's inputs replace
        self.used = list(range(len(flat(self.structure))))  # narrowed to what the op reads by `calibrate`

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(f"v{i}" for i in self.used)

    def calibrate(self, samples) -> None:
        """Scales are the parent's; trace once on every candidate value and keep those the op reads."""
        compiler = concrete_fhe().Compiler(circuit_function(self), dict.fromkeys(self.inputs, "encrypted"))
        graph = compiler.trace([inputset_entry(self.encode(self.parent.workload.inputs()))])
        self.used = [self.used[i] for i, node in graph.input_nodes.items() if node in graph.graph]

    def encode(self, inputs) -> tuple[np.ndarray, ...]:
        x, earlier, _ = self.parent.boundary(self.op, inputs)
        found = flat((x, earlier))
        return tuple(np.asarray(found[i].v) for i in self.used)

    def circuit(self, *encrypted, tag=run_op):
        by_index = dict(zip(self.used, encrypted, strict=True))
        x, earlier = rebuild(self.structure, by_index)
        return self.parent.replay(self.op, self.start, x, earlier, tag)


class Reached(Exception):
    """Stops a forward at an op; carries the lookup slot it starts at, or its traced output."""

    def __init__(self, value):
        super().__init__()
        self.value = value


def flat(value) -> list[Q]:
    """The `Q` values in nested dicts / lists / tuples, in order."""
    if isinstance(value, Q):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [q for item in value for q in flat(item)] if isinstance(value, (list, tuple)) else []


def rebuild(value, replacements: dict[int, Any], counter=None):
    """`value` with the integers of its i-th `Q` replaced by `replacements[i]` (None when absent)."""
    counter = counter if counter is not None else [0]
    if isinstance(value, Q):
        counter[0] += 1
        return Q(replacements.get(counter[0] - 1), value.scale, value.fixed, value.narrow)
    if isinstance(value, dict):
        return {k: rebuild(v, replacements, counter) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rebuild(v, replacements, counter) for v in value)
    return value


def values(out):
    return tuple(q.v for q in out) if isinstance(out, tuple) else out.v
