"""`crypten`: the workloads on secret-shared data, computed by 2 or 3 CrypTen parties.

Threat model: semi-honest parties; party 0 holds the user's input, party 1 the model's weights,
both secret-shared (weights a workload declares public in `public_weights()` stay plain tensors
and cost no communication). Multiplication triples come from CrypTen's trusted first party (TFP)
or a trusted third party process (TTP), `backend.triples`.

Execution: `execute` sends the harness's job to every party process (`parties`), which
runs it on its own `CryptenBackend`; the cell's rows are party 0's. `sync` is a barrier.
One party per host: run the same sweep on every host, each with its own rank, e.g. for 2 parties
with party 0 on 10.0.0.1 (the rendezvous; the TTP, if any, runs beside party 0):
    host A: encbench backend=crypten backend.rank=0 backend.master_addr=10.0.0.1 backend.master_port=29500 ...
    host B: encbench backend=crypten backend.rank=1 backend.master_addr=10.0.0.1 backend.master_port=29500 ...
(world size = backend.parties; set GLOO_SOCKET_IFNAME if gloo picks the wrong interface).
Counters (cumulative, read outside the timed interval through an unlogged all_gather):
- `rounds`: online communication rounds of party 0, CrypTen's count (one per communicator call),
  which equals every party's in CrypTen's lock-step protocols; not summed over parties.
- `comm_bytes_p<i>`: online bytes party i sent; `comm_bytes`: their sum, the system's traffic
  (each byte once, by its sender), which equals CrypTen's "sum over parties, halve".
- `preproc_s`, `preproc_rounds`, `preproc_bytes`: time (slowest party), rounds (party 0) and bytes
  (all parties) spent inside the triple provider; included in `latency_s`, excluded from `rounds`
  and `comm_bytes`. TFP shares triples without communication, so only its time is non-zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

import workloads
from backends.base import (
    ALL,
    APPROX,
    COMM_BYTES,
    COMM_BYTES_SPLIT,
    PARTIES,
    PARTY_START_S,
    ROUNDS,
    Backend,
    BackendConfig,
    Capabilities,
    Column,
    map_values,
)
from backends.crypten import parties
from backends.crypten.ops import CryptenOps, expanded
from workloads.base import require

TRIPLES = ("TFP", "TTP")
GELU_METHODS = ("tanh", "erf")
MAX_METHODS = ("log_reduction", "pairwise")
COLUMNS = (
    ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, APPROX,
    Column("preproc_rounds", "count", "op", "rounds inside the triple provider (outside `rounds`)", True),
    Column("preproc_bytes", "bytes", "op", "bytes inside the triple provider, all parties (outside `comm_bytes`)",
           True, "communication"),
    Column("preproc_s", "s", "op", "time inside the triple provider (slowest party), included in `latency_s`",
           kind="latency"),
    PARTIES,
    Column("triples", "text", "cell", "triple provider: `TFP` trusted first party, `TTP` trusted third party",
           kind="parameter"),
    Column("precision_bits", "bits", "cell", "fixed-point fractional bits", kind="parameter"),
    PARTY_START_S,
)  # fmt: skip


@dataclass
class CryptenConfig(BackendConfig):
    """Parties, triples, and CrypTen's fixed-point and approximation settings (all recorded)."""

    name: str = "crypten"
    parties: int = 2
    triples: str = "TFP"  # TFP: trusted first party; TTP: trusted third party (one more process)
    precision_bits: int = 16  # fixed-point fractional bits (CrypTen's encoder.precision_bits)
    exp_iterations: int = 8  # exp(x) = (1 + x / 2^n)^(2^n)
    reciprocal_nr_iters: int = 10  # Newton-Raphson steps of 1/x, initial guess 3 exp(1 - 2x) + 0.003
    sqrt_nr_iters: int = 3  # Newton-Raphson steps of 1/sqrt(x)
    reciprocal_scale: float = 64.0  # ops.reciprocal(x) = reciprocal(x / B) / B; see CryptenOps.reciprocal
    max_method: str = "log_reduction"  # softmax's row max: log_reduction | pairwise
    gelu: str = "tanh"  # exact GELU as 0.5x(1 + tanh(...)) (max formula error 3e-4) or via CrypTen's erf
    erf_iterations: int = 8  # Taylor terms of erf (only with gelu=erf; diverges for |x| > ~2)
    threads: int = 1  # torch threads per party
    master_addr: str = "127.0.0.1"  # rendezvous address (party 0's host for multi-host runs)
    master_port: int = 0  # 0: a free port on master_addr
    rank: int | None = None  # null: all parties here; 0..parties-1: only this party (one per host)
    party_timeout_s: float = 900.0  # a party start or cell taking longer is killed (hang detection)


class CryptenBackend(Backend):
    name = "crypten"
    Config = CryptenConfig
    capabilities = Capabilities(workloads={name: ALL for name in workloads.REGISTRY}, columns=COLUMNS)
    # 16-bit fixed point resolves 2^-16 = 1.5e-5 per value, but the errors that matter are CrypTen's
    # approximations: exp's limit form (relative error ~ x^2 / 2^(iterations+1)), the Newton
    # reciprocal (relative error ~ x^2 2^-16 per step) and 1/sqrt, carried through dot products.
    # Measured worst per-op errors: 7e-3 at the default sizes, 0.016 for the GPT-2 head at seq 32,
    # 0.018 for the GPT-2 block at seq 32. 0.05 leaves ~3x headroom and still flags the cliffs
    # (0.2 to 1e9 when an approximation leaves its range). Truncation failures (probability about
    # |x| 2^-32 per element at 16 bits) are not absorbed: they show as errors, as they should.
    default_tolerance = 0.05
    libraries = ("crypten",)
    threat_model = (
        "semi-honest parties; party 0 secret-shares the user's input, party 1 the model's weights; "
        "weights a variant declares public stay in the clear"
    )

    @classmethod
    def validate(cls, cfg):
        checks = [
            (cfg.parties in (2, 3), f"backend.parties={cfg.parties} must be 2 or 3"),
            (cfg.triples in TRIPLES, f"backend.triples={cfg.triples}; allowed: {', '.join(TRIPLES)}"),
            (cfg.gelu in GELU_METHODS, f"backend.gelu={cfg.gelu}; allowed: {', '.join(GELU_METHODS)}"),
            (cfg.max_method in MAX_METHODS, f"backend.max_method={cfg.max_method}; allowed: {', '.join(MAX_METHODS)}"),
            (cfg.reciprocal_scale > 0, f"backend.reciprocal_scale={cfg.reciprocal_scale} must be positive"),
            (8 <= cfg.precision_bits <= 24, f"backend.precision_bits={cfg.precision_bits} must be in 8..24"),
            (cfg.rank is None or 0 <= cfg.rank < cfg.parties, f"backend.rank={cfg.rank} must be null or < parties"),
            (cfg.threads >= 1 and cfg.party_timeout_s > 0, "backend.threads and backend.party_timeout_s must be > 0"),
        ]
        require(checks)

    @classmethod
    def unavailable(cls):
        return _import_problem()

    @classmethod
    def execute(cls, cfg, job):
        """Run `job` in every party (started on first use, then reused); party 0's result."""
        cls.validate(cfg)
        key = parties.PoolKey(cfg.parties, cfg.triples, cfg.master_addr, cfg.master_port, cfg.rank)
        pool, started = parties.pool(key, cfg.party_timeout_s)
        start_s = pool.start_s if started else 0.0
        return pool.run(functools.partial(_party_job, cls, cfg, start_s, job), cfg.party_timeout_s)

    def __init__(self, cfg: CryptenConfig):
        from backends.crypten.compat import import_crypten

        self.cfg, self.crypten = cfg, import_crypten()
        settings = {
            "encoder.precision_bits": cfg.precision_bits,
            "functions.exp_iterations": cfg.exp_iterations,
            "functions.reciprocal_nr_iters": cfg.reciprocal_nr_iters,
            "functions.sqrt_nr_iters": cfg.sqrt_nr_iters,
            "functions.max_method": cfg.max_method,
            "functions.erf_iterations": cfg.erf_iterations,
        }
        for key, value in settings.items():
            self.crypten.cfg[key] = value
        torch.set_num_threads(cfg.threads)
        self.comm = self.crypten.communicator.get()
        self.rank, self.world = self.comm.get_rank(), self.comm.get_world_size()
        self.traffic = parties.Traffic.instance
        self.ops = CryptenOps(self.crypten, cfg, self.comm)
        self.party_start_s = 0.0

    def _share(self, tensors: dict[str, torch.Tensor], owner: int, public: set[str] = frozenset()) -> dict:
        """Secret-share `owner`'s tensors; the others contribute same-shaped zeros (they do not know them)."""
        return {
            k: v
            if k in public
            else self.crypten.cryptensor(v if self.rank == owner else torch.zeros_like(v), src=owner)
            for k, v in tensors.items()
        }

    def setup(self, workload, weights):
        public = workload.public_weights() if hasattr(workload, "public_weights") else set()
        return self._share(weights, owner=1, public=public)

    def protect(self, inputs):
        return self._share(inputs, owner=0)

    def reveal(self, value):
        def plain(v):
            v = expanded(v)
            return v.double() if isinstance(v, torch.Tensor) else v.get_plain_text().double()

        return map_values(plain, value)

    def sync(self):
        torch.distributed.barrier(group=self.comm.main_group)  # direct: not logged as a round

    def agree(self, value):
        flag = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.broadcast(flag, src=0, group=self.comm.main_group)  # direct: unlogged
        return type(value)(flag.item())

    def counters(self):
        t = self.traffic
        mine = torch.tensor([t.online_rounds(), t.sent, t.pre_rounds, t.pre_sent, t.pre_s], dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(every, mine, group=self.comm.main_group)  # direct: unlogged
        found = {f"comm_bytes_p{i}": float(v[1]) for i, v in enumerate(every)}
        return {
            "rounds": float(every[0][0]),
            "comm_bytes": sum(float(v[1]) for v in every),
            **found,
            "preproc_rounds": float(every[0][2]),
            "preproc_bytes": sum(float(v[3]) for v in every),
            "preproc_s": max(float(v[4]) for v in every),
        }

    def metrics(self):
        c = self.cfg
        return {
            "parties": c.parties,
            "triples": c.triples,
            "precision_bits": c.precision_bits,
            "party_start_s": self.party_start_s,
            "approx": f"exp={c.exp_iterations},recip_nr={c.reciprocal_nr_iters},sqrt_nr={c.sqrt_nr_iters},"
            f"max={c.max_method},gelu={c.gelu}" + (f",erf={c.erf_iterations}" if c.gelu == "erf" else ""),
        }


@functools.cache
def _import_problem() -> str | None:
    """Why crypten does not import here (tried once per process, ~1.5 s), or None."""
    from backends.crypten.compat import import_crypten

    try:
        import_crypten()
    except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
        return f"crypten does not import: {type(exc).__name__}: {exc} (pip install --no-deps crypten==0.4.1)"
    return None


def _party_job(cls: type[CryptenBackend], cfg: CryptenConfig, start_s: float, job) -> Any:
    """What each party runs for a cell: the harness's job on this party's backend."""
    backend = cls(cfg)
    backend.party_start_s = start_s
    try:
        return job(backend)
    finally:
        backend.close()


BACKEND = CryptenBackend
