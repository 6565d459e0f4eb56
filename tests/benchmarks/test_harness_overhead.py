"""The harness must add little: the plaintext head through the harness vs the same torch code.

"Through the harness" is one timed online run as `measure` does it: protect, every op bracketed by
the op timer (sync, clock, counter deltas), reveal. The accuracy check that follows each run
(~0.1 ms at this size) is the harness's checking work, outside the timed run, and not included.

`make benchmark` times both with pytest-benchmark (group `harness-overhead`) and asserts the bound
with its own timing: interleaved single runs (so a load spike hits both sides alike), the fastest of
each, the best of several trials. A wall-clock bound has no place in `make test` on a shared machine:
there the ratio test is skipped, like every benchmark.
"""

from time import perf_counter

import pytest
import torch

import backends
from bench.cells import Cell
from bench.measure import online_run
from workloads.base import run_op
from workloads.ops import TorchOps

SHAPE = {"name": "attention_head", "seq_len": 128, "d_model": 768, "n_heads": 12}


@pytest.fixture(scope="module")
def head():
    workload = Cell({}, SHAPE, {}).make_workload()
    backend = backends.get("plaintext")(backends.get("plaintext").Config())  # sets 1 torch thread
    inputs, weights = workload.inputs(), workload.weights()
    handles = backend.setup(workload, weights)
    direct = lambda: workload.forward(TorchOps(torch.float64), run_op, inputs, weights)  # noqa: E731
    harness = lambda: online_run(backend, workload, inputs, handles)  # noqa: E731
    return direct, harness


@pytest.mark.benchmark(group="harness-overhead")
def test_direct_torch(benchmark, head):
    benchmark(head[0])


@pytest.mark.benchmark(group="harness-overhead")
def test_through_harness(benchmark, head):
    benchmark(head[1])


def fastest_interleaved(a, b, rounds: int) -> tuple[float, float]:
    """The fastest of `rounds` runs of each, alternating a and b."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((a, b)):
            start = perf_counter()
            fn()
            best[i] = min(best[i], perf_counter() - start)
    return best[0], best[1]


def test_harness_within_1_2x_of_direct_torch(head, request):
    if not request.config.getoption("benchmark_enable"):
        pytest.skip("a wall-clock bound: run by `make benchmark`")
    direct, harness = head
    fastest_interleaved(direct, harness, 3)  # warm caches
    ratios = [h / d for d, h in (fastest_interleaved(direct, harness, 20) for _ in range(3))]
    assert min(ratios) <= 1.2, ratios
