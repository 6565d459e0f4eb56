"""The backend contract: the steps a technology implements; the harness times and checks them.

A backend is one module in `backends/` defining a `Backend` subclass as `BACKEND`, its `Config`
dataclass (registered as `backend=<name>`), and `capabilities`. The harness drives it per cell:

    backend = ...                              # inside Backend.execute (here, or in every party)
    w = backend.setup(workload, weights)       # keygen / compile / share weights   -> setup_s
    x = backend.protect(inputs)                # encrypt / secret-share             -> op "protect"
    out = backend.run(workload, rec, x, w)     # the named ops, each through rec    -> op rows
    y = backend.reveal(out)                    # decrypt / reconstruct              -> op "reveal"

`rec(name, fn)` is the harness's: it brackets each op with `sync()` and reads `counters()` before
and after, so a backend only keeps cumulative counts. The three execution models fit as follows:
- eager (plaintext, TenSEAL): `ops` computes on ciphertexts; the default `run` calls the
  workload's forward and every op is timed on its own.
- traced circuits (Concrete): `setup` traces `workload.forward` with a recorder that opens one
  tag per op and compiles; `run` executes the circuit as one op, and `op_counters` returns the
  per-tag counts (`fused = True` in the capabilities: per-op latency is not observable).
- lock-step parties (CrypTen): `execute` runs the harness's job in every party process, so the
  same forward runs everywhere; `sync` is a barrier so that all parties' clocks bracket each op
  alike, and `counters` sums the parties' traffic.

Example, a backend whose values are float32 tensors::

    class Float32(Backend):
        name = "float32"
        Config = Float32Config
        capabilities = Capabilities(workloads=ALL_WORKLOADS)
        default_tolerance = 1e-4
        def __init__(self, cfg): self.ops = TorchOps(torch.float32)
        def setup(self, workload, weights): return {k: v.float() for k, v in weights.items()}
        def protect(self, inputs): return {k: v.float() for k, v in inputs.items()}
        def reveal(self, value): return value.double()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from workloads import Recorder, Workload
from workloads.ops import Ops

T = TypeVar("T")
ALL = None  # in Capabilities.workloads: every variant of that workload
_activity_sink: Callable[[str], None] = lambda text: None  # noqa: E731


def report_activity(text: str) -> None:
    """Say what a long step is doing now ("compiling qk_matmul (13-bit values)"), so that a cell
    stopped by the harness's timeout says where it was."""
    _activity_sink(text)


def set_activity_sink(sink: Callable[[str], None]) -> None:
    """Where `report_activity` goes (the harness's worker installs one)."""
    global _activity_sink
    _activity_sink = sink


@dataclass
class BackendConfig:
    """Base of every backend's config; `name` selects the backend."""

    name: str = "?"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run and measure.

    `workloads` maps each supported workload to the variant values it supports per switch
    (`ALL` for every variant; a switch left out supports every value). `counters` names the
    result columns it fills besides latency and error. `fused` says ops run as one circuit, so
    per-op latency is not measured (per-op counters still are).
    """

    workloads: Mapping[str, Mapping[str, tuple[str, ...]] | None]
    counters: tuple[str, ...] = ()
    fused: bool = False

    def why_not(self, workload: Workload) -> str | None:
        """Why the backend cannot run this workload and variant, or None if it can."""
        if workload.name not in self.workloads:
            return f"workload {workload.name} is not supported"
        for switch, allowed in (self.workloads[workload.name] or {}).items():
            value = getattr(workload.cfg, switch)
            if value not in allowed:
                return f"{switch}={value} is not supported (supported: {', '.join(allowed)})"
        return None


class Backend(ABC):
    """One technology behind the common pipeline; see the module docstring for the contract."""

    name: ClassVar[str]
    Config: ClassVar[type[BackendConfig]]
    capabilities: ClassVar[Capabilities]
    default_tolerance: ClassVar[float]
    threat_model: ClassVar[str]  # who holds what, who sees what; recorded in every run's manifest
    ops: Ops

    @abstractmethod
    def __init__(self, cfg: BackendConfig): ...

    @classmethod
    def validate(cls, cfg: BackendConfig) -> None:
        """Raise ConfigError (one line naming the key and the fix) for a bad config."""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run on this machine (a library missing), or None."""
        return None

    @classmethod
    def execute(cls, cfg: BackendConfig, job: Callable[[Backend], T]) -> T:
        """Run `job(backend)` with a live backend; MPC backends run it in every party and return
        party 0's result. `job` pickles (a module-level function or a partial of one)."""
        backend = cls(cfg)
        try:
            return job(backend)
        finally:
            backend.close()

    def why_not(self, workload: Workload) -> str | None:
        """Why this cell cannot run (the cell is then `skipped`), or None."""
        return self.capabilities.why_not(workload)

    @abstractmethod
    def setup(self, workload: Workload, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Prepare keys, circuits or parties for this workload; return the weights as `ops` values."""

    @abstractmethod
    def protect(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Encrypt or secret-share the client's inputs."""

    def run(self, workload: Workload, rec: Recorder, x: dict[str, Any], w: dict[str, Any]) -> Any:
        """Compute the workload on protected values; every named op goes through `rec`."""
        return workload.forward(self.ops, rec, x, w)

    @abstractmethod
    def reveal(self, value: Any) -> Any:
        """Decrypt or reconstruct a value (or a tuple / dict of them) to float64 tensors."""

    def sync(self) -> None:
        """Wait until every party reaches this point (a barrier); no-op for one process."""

    def agree(self, value: T) -> T:
        """Party 0's `value` on every party, for harness decisions that must match in lock-step
        (stopping repeats at the time budget); the value itself in one process."""
        return value

    def counters(self) -> dict[str, float]:
        """Cumulative online counters (`rounds`, `comm_bytes`, `pbs`, ...) since `setup`."""
        return {}

    def op_outputs(self, workload: Workload, inputs: dict[str, torch.Tensor], weights: Any) -> dict[str, Any] | None:
        """Every op's output as float64, for per-op errors, when a run cannot reveal them (a fused
        circuit); None: the harness reveals them from a run."""
        return None

    def op_counters(self) -> dict[str, dict[str, float]]:
        """Counters known per op without running it (e.g. PBS per tag of a compiled circuit). A
        `latency_s` here replaces the measured one: a modelled estimate (then `estimated=True` in
        `metrics`)."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """Cell-level figures: `key_bytes`, `ct_bytes`, `security_bits` and backend extras."""
        return {}

    def close(self) -> None:
        """Release keys, circuits or parties."""
