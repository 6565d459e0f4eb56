"""The backend contract: the steps a technology implements; the harness times and checks them.

A backend is a module (or a package, its internals beside it) in `backends/` defining a `Backend`
subclass as `BACKEND`, its `Config` dataclass (registered as `backend=<name>`), and `capabilities`.
The harness drives it per cell:

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
  tag per op and compiles; `run` executes the circuit as one op (`circuit`), `op_counters` gives
  the per-tag counts, and each op's latency comes from that op compiled as a circuit of its own
  (`isolated`), or from a cost model (`estimated`).
- lock-step parties (CrypTen): `execute` runs the harness's job in every party process, so the
  same forward runs everywhere; `sync` is a barrier so that all parties' clocks bracket each op
  alike, and `counters` sums the parties' traffic.

Every result column a backend fills beyond the harness's own is declared in
`Capabilities.columns` (`Column`: unit, scope, meaning, deterministic or not); the shared ones
below (`PBS`, `ROUNDS`, `COMM_BYTES`, ...) carry the meaning the harness relies on (network
estimates, security marks). Reports, the regression gate and docs/metrics.md read the declarations.

Example, a backend whose values are float32 tensors (`tests/test_contract.py` runs it)::

    @dataclass
    class Float32Config(BackendConfig):
        name: str = "float32"

    class Float32(Backend):
        name = "float32"
        Config = Float32Config
        capabilities = Capabilities(workloads={"layernorm": ALL, "attention_head": ALL})
        default_tolerance = 1e-4
        threat_model = "none: inputs and weights in the clear"
        def __init__(self, cfg): self.ops = TorchOps(torch.float32)
        def setup(self, workload, weights): return {k: v.float() for k, v in weights.items()}
        def protect(self, inputs): return {k: v.float() for k, v in inputs.items()}
        def reveal(self, value): return map_values(torch.Tensor.double, value)
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from workloads import Recorder, Workload
from workloads.ops import Ops

# compiled circuits, keys and cost-model calibrations (gigabytes): outside the repository
CACHE_ROOT = Path(os.environ.get("ENCBENCH_CACHE", "~/.cache/encbench")).expanduser()
# of this machine's memory, the most one cell may take by default (CKKS keys and plaintexts, MPC
# parties): a GPT-2 head at seq_len 128 with 18.6 GiB of bootstrapping keys and 2.9 GB of rotation
# keys was killed for memory at 24 GiB, as was cheetah's GPT-2 block at seq_len 128 before it ran in blocks
MEMORY_SHARE = 0.85

T = TypeVar("T")
ALL = None  # in Capabilities.workloads: every variant of that workload
_activity_sink: Callable[[str], None] = lambda text: None  # noqa: E731


def machine_memory() -> int:
    """This machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def report_activity(text: str) -> None:
    """Say what a long step is doing now ("compiling qk_matmul (13-bit values)"), so that a cell
    stopped by the harness's timeout says where it was."""
    _activity_sink(text)


def set_activity_sink(sink: Callable[[str], None]) -> None:
    """Where `report_activity` goes (the harness's worker installs one)."""
    global _activity_sink
    _activity_sink = sink


def map_values(fn: Callable[[Any], Any], value: Any) -> Any:
    """`fn` applied to every value of a (nested) tuple, list or dict of them: what `reveal` gets."""
    if isinstance(value, dict):
        return {k: map_values(fn, v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return tuple(map_values(fn, v) for v in value)
    return fn(value)


@dataclass
class BackendConfig:
    """Base of every backend's config; `name` selects the backend."""

    name: str = "?"

    def label(self) -> str:
        """The backend as progress lines name it (with a setting that tells its cells apart)."""
        return self.name


SCOPES = ("op", "cell", "row")


@dataclass(frozen=True)
class Column:
    """A result column: its unit, which rows carry it, and what it means.

    `scope`: `op` (what one op did, on that op's row; the `total` row holds the sum over ops),
    `cell` (a figure of the whole cell, such as a key size: on the `total` row only) or `row`
    (every row has its own, like latency). `deterministic`: exact across runs of the same code
    (counts, sizes), so the regression gate compares it exactly. `kind` groups columns in reports
    and docs: `communication` and `counter` (per-op counts, plotted per op), `size`, `security`,
    `setup` (parts of `setup_s`), `latency`, `accuracy`, `parameter`, `flag`, `estimate`. A name ending in
    `*` is a family (`comm_bytes_*`: `comm_bytes_p0`, `comm_bytes_up`, ...).
    """

    name: str
    unit: str  # s, bytes, count, bits, levels, value (the workload's own), ratio, bool, text
    scope: str
    meaning: str
    deterministic: bool = False
    kind: str = "counter"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"column {self.name}: scope {self.scope!r} is not one of {SCOPES}")


# The columns several technologies share; the harness relies on their meaning.
# fmt: off
PBS = Column("pbs", "count", "op", "programmable bootstraps (TFHE)", True)
DEPTH = Column("depth", "levels", "op", "multiplicative depth the op consumed (CKKS)", True)
ROUNDS = Column("rounds", "count", "op", "communication rounds (MPC: message exchanges; HE: round trips)", True,
                "communication")
COMM_BYTES = Column("comm_bytes", "bytes", "op", "bytes sent, each byte once: all parties (MPC), both ways (HE)",
                    True, "communication")
COMM_BYTES_SPLIT = Column("comm_bytes_*", "bytes", "op", "bytes sent by one party (`p0`, `p1`, ...) or in one "
                          "direction (`up`: client to server, `down`)", True, "communication")
CT_BYTES = Column("ct_bytes", "bytes", "cell", "serialized input + output ciphertexts of one online run", True, "size")
KEY_BYTES = Column("key_bytes", "bytes", "cell", "evaluation keys the server holds (made in setup)", True, "size")
SECURITY_BITS = Column("security_bits", "bits", "cell", "classical security of the HE parameters; below 128 only "
                       "with the backend's `allow_insecure`, and then marked insecure", True, "security")
KEYGEN_S = Column("keygen_s", "s", "cell", "key generation (as recorded when the keys were made)", kind="setup")
APPROX = Column("approx", "text", "cell", "settings of the non-linearities' approximations", kind="parameter")
COMPILE_S = Column("compile_s", "s", "cell", "compiling before the online runs: a circuit (as recorded when it was "
                   "compiled) or each op's program (on its first run, the warm-up's)", kind="setup")
PARTIES = Column("parties", "count", "cell", "parties computing", kind="parameter")
PARTY_START_S = Column("party_start_s", "s", "cell", "starting the parties (and their links), on the cell that "
                       "started them (0 when reused)", kind="setup")
# fmt: on


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run and measure.

    `workloads` maps each supported workload to the variant values it supports per switch
    (`ALL` for every variant; a switch left out supports every value); `unsupported` says why
    for workloads left out that a user may expect (a skipped cell shows it). `columns` are the result
    columns it fills besides the harness's own (latency, error, status, sizes of the workload).
    `same_cost`: variant switches all of whose values have the same cost on this backend (a TFHE
    lookup table is one PBS per entry whatever function it holds), so a `workload.variants=each`
    sweep runs only their default here.
    """

    workloads: Mapping[str, Mapping[str, tuple[str, ...]] | None]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[Column, ...] = ()
    same_cost: tuple[str, ...] = ()  # switches whose values cost alike here: `each` sweeps keep the default

    def why_not(self, workload: Workload) -> str | None:
        """Why the backend cannot run this workload and variant, or None if it can."""
        if workload.name not in self.workloads:
            reason = self.unsupported.get(workload.name)
            return f"workload {workload.name} is not supported" + (f": {reason}" if reason else "")
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
    libraries: ClassVar[tuple[str, ...]] = ()  # distributions whose versions every run's manifest records
    ops: Ops  # what the default `run` computes with; a backend that overrides `run` may have none

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

    def op_counters(self) -> dict[str, dict[str, Any]]:
        """Per-op figures known without timing the op (PBS per tag of a compiled circuit, the
        traffic of `protect`). A `latency_s` here replaces the measured one (set `estimated` or
        `isolated` beside it, to say where it came from)."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """Cell-level figures (`cell`-scope columns: key sizes, security, parameters); they go on
        the `total` row only."""
        return {}

    def close(self) -> None:
        """Release keys, circuits or parties."""
