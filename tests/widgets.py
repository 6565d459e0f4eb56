"""A test backend with a counter of its own: the plaintext backend, turning `widgets` in every op.

Registered through ENCBENCH_BACKENDS (tests/ on the path; see conftest.py). It shows that a backend
adds a column with one declaration, nothing in `bench/` naming it: the gate checks it, the report
plots and tabulates it, docs/metrics.md lists it. It also counts its online runs, to check how often
the harness runs a backend that gives its per-op outputs itself (`op_outputs`, as a fused circuit does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import workloads
from backends.base import ALL, Capabilities, Column
from backends.plaintext import PlaintextBackend, PlaintextConfig
from workloads.base import Capture
from workloads.ops import TorchOps

WIDGETS = Column("widgets", "count", "op", "widgets the op turned (one per output element)", True)


@dataclass
class WidgetsConfig(PlaintextConfig):
    name: str = "widgets"
    own_op_outputs: bool = False  # give per-op outputs like a fused circuit, so no extra run is needed


class WidgetsBackend(PlaintextBackend):
    name = "widgets"
    Config = WidgetsConfig
    capabilities = Capabilities(workloads={name: ALL for name in workloads.REGISTRY}, columns=(WIDGETS,))

    def __init__(self, cfg: WidgetsConfig):
        super().__init__(cfg)
        self.cfg, self.turned, self.runs = cfg, 0, 0

    def run(self, workload, rec, x, w):
        self.runs += 1

        def turning(name, fn):
            def op():
                out = fn()
                self.turned += sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)))
                return out

            return rec(name, op)

        return workload.forward(self.ops, turning, x, w)

    def counters(self):
        return {"widgets": self.turned}

    def op_outputs(self, workload, inputs, weights):
        if not self.cfg.own_op_outputs:
            return None
        capture = Capture()
        workload.forward(TorchOps(torch.float64), capture, inputs, weights)
        return capture.outputs


BACKEND = WidgetsBackend
