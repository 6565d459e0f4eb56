"""Per-op micro-benchmarks: every named op of every workload, on every installed backend.

`make benchmark` saves them (pytest-benchmark autosave); compare against a saved run with
`pytest tests/benchmarks --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:25%`.
Each op is benchmarked alone: its closure, captured during one forward pass, is called again.
"""

import pytest

import backends
import workloads
from bench.cells import Cell

SIZES = {"seq_len": 8, "d_model": 64, "n_heads": 4}


class OpClosures:
    """Recorder that runs the forward pass and keeps each op's closure for re-running."""

    def __init__(self):
        self.ops = {}

    def __call__(self, name, fn):
        self.ops[name] = fn
        return fn()


def closures(backend_name, workload_name):
    cls = backends.get(backend_name)
    backend = cls(cls.Config())
    workload = Cell({}, {"name": workload_name, **SIZES}, {}).make_workload()
    handles = backend.setup(workload, workload.weights())
    rec = OpClosures()
    backend.run(workload, rec, backend.protect(workload.inputs()), handles)
    return rec.ops


CASES = [
    (b, w, op)
    for b in backends.installed()
    if b in ("plaintext",)  # grows as backends land
    for w in workloads.REGISTRY
    for op in closures(b, w)
]


@pytest.mark.parametrize("backend_name,workload_name,op", CASES, ids=["/".join(c) for c in CASES])
def test_op(benchmark, backend_name, workload_name, op):
    benchmark.group = f"{backend_name}/{workload_name}"
    fn = closures(backend_name, workload_name)[op]
    out = benchmark(fn)
    assert out is not None
