"""`spu`: the workloads under SecretFlow SPU's MPC protocols, computed by real party processes.

Protocols (`backend.protocol`), all semi-honest:
- `semi2k`: 2 parties, additive sharing over Z_2^k; party 0 also deals the correlated randomness
  (SPU's trusted first party: not secure against party 0), so no third process is needed.
- `aby3`: 3 parties, replicated sharing, honest majority; no dealer.
- `cheetah`: 2 parties, no dealer: products by lattice HE, non-linearities by silent OT.
Party 0 secret-shares the user's input, party 1 the model's weights (weights a variant declares
public stay in the clear, compiled into the programs as constants).

Execution: each harness op is one SPU program (`lazy.py`: traced from the op set as jax,
compiled once per structure in this process, the client), run by the parties over SPU's brpc
links on loopback (`parties.py`); values stay secret-shared in the parties between ops.
Counters, from SPU's link statistics per party and run:
- `comm_bytes_p<i>`: payload bytes party i sent; `comm_bytes` their sum (each byte once).
- `rounds`: messages sent by the busiest party. SPU counts messages ("send actions"), not
  rounds; in these lock-step protocols every message waits on the previous exchange, so the
  count bounds the rounds from above (a round in which one party sends two messages counts 2).
- `protect`: the input's shares sent by its owner to the other parties (one round); `reveal`:
  what party 0, the user, lacks of the output (one round).
`compile_s`: compiling the ops' programs, on their first run (the warm-up's); that run's time per
op (`first_run_s`) also holds Cheetah's lazy key and OT set-up.
`backend.mode=simulator` (debugging): the parties as threads of this process (`simulator.py`).
PUMA's GELU, softmax and SiLU are `backend.forms=puma` (see `jaxops.py`).
Cheetah's products and non-linearities run in blocks of at most `CHEETAH_BLOCK` (output) elements:
its HE products' and OT's memory grows with the op's size (a GPT-2 block at seq_len 128: 21 GB
whole, about 19 GB in blocks).
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import weakref
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import torch

import backends.parties as shared
import workloads
from backends.base import (
    ALL,
    APPROX,
    CACHE_ROOT,
    COMM_BYTES,
    COMM_BYTES_SPLIT,
    COMPILE_S,
    PARTIES,
    PARTY_START_S,
    ROUNDS,
    Backend,
    BackendConfig,
    Capabilities,
    Column,
    map_values,
)
from backends.spu import parties
from backends.spu.lazy import LazyOps, Private, Program
from backends.spu.simulator import SimulatorPool
from workloads.base import require
from workloads.ops import Ops

PROTOCOLS = {"semi2k": 2, "aby3": 3, "cheetah": 2}  # protocol -> parties
DEALER = {"semi2k": "trusted first party (party 0)", "aby3": "none (honest majority)", "cheetah": "none (HE, OT)"}
FORMS = ("spu", "puma")
FIELDS = (64, 128)
MODES = ("parties", "simulator")
# Elements (a product's: output elements) per block of a Cheetah op, 128 x 768. Measured: a 128x768
# by 768x2304 product, both parties in one process, 13.7 GB and 43 s whole, 5.4 GB and 28 s in three
# blocks; an erf GELU over 128x3072, two party processes, 5.6 GB whole, 3.3 GB in four blocks.
CHEETAH_BLOCK = 98_304
COLUMNS = (
    ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, APPROX,
    COMPILE_S, PARTIES, PARTY_START_S,
    Column("protocol", "text", "cell", "SPU protocol", kind="parameter"),
    Column("dealer", "text", "cell", "who deals correlated randomness", kind="parameter"),
    Column("field_bits", "bits", "cell", "ring Z_2^k of the shares", kind="parameter"),
    Column("fraction_bits", "bits", "cell", "fixed-point fractional bits", kind="parameter"),
)  # fmt: skip


@dataclass
class SpuConfig(BackendConfig):
    """Protocol, ring, fixed point and approximation settings (all recorded)."""

    name: str = "spu"
    protocol: str = "semi2k"  # semi2k (2PC, dealer) | aby3 (3PC) | cheetah (2PC, HE + OT)
    field: int = 64  # share ring Z_2^64 or Z_2^128
    fraction_bits: int = 18  # fixed-point fractional bits (SPU's default for FM64)
    forms: str = "spu"  # GELU, softmax, SiLU: spu (SPU's kernels) | puma (PUMA's approximations)
    exp_iters: int = 8  # exp(x) = (1 + x / 2^n)^(2^n) (SPU's Taylor mode; PUMA's examples use 5)
    party_timeout_s: float = 900.0  # a party start or op taking longer is killed (hang detection)
    mode: str = "parties"  # parties (processes) | simulator (threads of this process, for debugging)

    def label(self) -> str:
        return f"{self.name}[{self.protocol}{'' if self.mode == 'parties' else ',' + self.mode}]"


class SpuBackend(Backend):
    name = "spu"
    Config = SpuConfig
    capabilities = Capabilities(workloads={name: ALL for name in workloads.REGISTRY}, columns=COLUMNS)
    # 18 fractional bits resolve 4e-6; the errors that matter are SPU's approximations (exp's limit
    # form, Newton reciprocal and rsqrt, tanh-free GELU) carried through dot products: measured
    # worst per-op errors at the default sizes below 1e-2. 0.05 as for crypten, for comparison.
    default_tolerance = 0.05
    libraries = ("spu", "jax")
    threat_model = (
        "semi-honest parties; party 0 secret-shares the user's input, party 1 the model's weights "
        "(weights a variant declares public stay in the clear); semi2k: 2 parties, party 0 deals the "
        "correlated randomness (not secure against party 0); aby3: 3 parties, honest majority; "
        "cheetah: 2 parties, no dealer"
    )

    @classmethod
    def validate(cls, cfg):
        checks = [
            (cfg.protocol in PROTOCOLS, f"backend.protocol={cfg.protocol}; allowed: {', '.join(PROTOCOLS)}"),
            (cfg.field in FIELDS, f"backend.field={cfg.field}; allowed: {', '.join(map(str, FIELDS))}"),
            (cfg.forms in FORMS, f"backend.forms={cfg.forms}; allowed: {', '.join(FORMS)}"),
            (cfg.mode in MODES, f"backend.mode={cfg.mode}; allowed: {', '.join(MODES)}"),
            (8 <= cfg.fraction_bits <= cfg.field // 2 - 8, f"backend.fraction_bits={cfg.fraction_bits} must be in "
             f"8..{cfg.field // 2 - 8} for backend.field={cfg.field}"),
            (1 <= cfg.exp_iters <= 16, f"backend.exp_iters={cfg.exp_iters} must be in 1..16"),
            (cfg.party_timeout_s > 0, "backend.party_timeout_s must be > 0"),
        ]  # fmt: skip
        require(checks)

    @classmethod
    def unavailable(cls):
        return _import_problem()

    @classmethod
    def execute(cls, cfg, job):
        """Run `job` here (the client) with the parties started on first use, then reused."""
        cls.validate(cfg)
        key = parties.PoolKey(PROTOCOLS[cfg.protocol], runtime_config(cfg).SerializeToString(), _log_dir(), cfg.mode)
        start = _start if cfg.mode == "parties" else SimulatorPool
        pool, started = shared.pool("spu", key, functools.partial(start, key, cfg.party_timeout_s))
        backend = cls(cfg)
        backend.pool, backend.party_start_s = pool, pool.start_s if started else 0.0
        try:
            return job(backend)
        finally:
            backend.close()

    def __init__(self, cfg: SpuConfig):
        import spu.api as spu_api

        from backends.spu.jaxops import JaxOps  # jax: imported only where the backend runs

        self.cfg, self.n = cfg, PROTOCOLS[cfg.protocol]
        self.io = spu_api.Io(self.n, runtime_config(cfg))
        self.ops, self.jax_ops = LazyOps(), JaxOps(cfg.forms, CHEETAH_BLOCK if cfg.protocol == "cheetah" else 0)
        self.totals: dict[str, float] = {}
        self.dropped: list[str] = []  # variables whose handles are gone, deleted with the next run
        self.pool: shared.PartyPool | None = None
        self.party_start_s = self.compile_s = 0.0
        self.made = 0

    # --- values ---------------------------------------------------------------------------

    def _handle(self, shape: tuple[int, ...]) -> Private:
        self.made += 1
        handle = Private(f"v{self.made}", tuple(shape))
        weakref.finalize(handle, self.dropped.append, handle.name)
        return handle

    def _share(self, tensors: dict[str, torch.Tensor], owner: int, public: set[str] = frozenset()) -> dict:
        """Secret-share `owner`'s tensors into the parties; count what the owner sends."""
        from spu import libspu

        handles, per_party, sent = {}, [{} for _ in range(self.n)], 0
        for k, v in tensors.items():
            if k in public:
                handles[k] = v
                continue
            handles[k] = self._handle(v.shape)
            shares = self.io.make_shares(v.numpy().astype(np.float32), libspu.Visibility.VIS_SECRET)
            for rank, share in enumerate(shares):
                per_party[rank][handles[k].name] = share
                sent += 0 if rank == owner else share_bytes(share)
        self._jobs([functools.partial(parties.set_vars, shares) for shares in per_party])
        self._add({"rounds": 1.0, "comm_bytes": sent, f"comm_bytes_p{owner}": sent})
        return handles

    def setup(self, workload, weights):
        """The weights shared; the parties hold no variable yet (`close` freed the last cell's)."""
        public = workload.public_weights() if hasattr(workload, "public_weights") else set()
        return self._share(weights, owner=1, public=public)

    def protect(self, inputs):
        return self._share(inputs, owner=0)

    def run(self, workload, rec, x, w):
        return workload.forward(self.ops, lambda name, fn: rec(name, lambda: self.materialize(fn())), x, w)

    def materialize(self, value: Any) -> Any:
        """Run the program behind `value`'s pending ops on the parties; handles in their place."""
        program = Program.of(value)
        if not program.outputs:
            return value
        key = f"{self.cfg.forms}:{self.jax_ops.block}:{program.key}"  # what the ops trace to
        code, shapes = self._compiled(key, program)
        outputs = [self._handle(shape) for shape in shapes]
        drop, self.dropped[:] = list(self.dropped), []
        args = (key, code, [p.name for p in program.inputs], [h.name for h in outputs], drop)
        stats = self._jobs([functools.partial(parties.run, *args)] * self.n)
        _shipped(self.pool).add(key)
        if self.cfg.mode == "simulator":  # one log for all parties: whose line is whose is unknown
            stats, per_party = self.pool.traffic(), {}
        else:
            per_party = {f"comm_bytes_p{i}": s["sent"] for i, s in enumerate(stats)}
        self._add({"rounds": max(s["sends"] for s in stats), "comm_bytes": sum(s["sent"] for s in stats), **per_party})
        by_node = {id(node): h for node, h in zip(program.outputs, outputs, strict=True)}
        return map_values(lambda leaf: by_node.get(id(leaf), leaf), value)

    def _compiled(self, key: str, program: Program) -> tuple[bytes | None, list[tuple[int, ...]]]:
        """The program's code (None when the parties have it) and output shapes; compiled once."""
        found = _COMPILED.get(key)
        if found is None:
            start = perf_counter()
            found = compile_program(program, self.jax_ops)
            _COMPILED[key] = found
            self.compile_s += perf_counter() - start
        code, shapes = found
        return (None if key in _shipped(self.pool) else code), shapes

    def reveal(self, value):
        """Reconstructed for party 0, the user, in one round: it lacks party 1's additive share
        (semi2k, cheetah) or the one component of the replicated sharing it does not hold (aby3:
        sent by party 2); counted as ring elements."""
        value = self.materialize(value)
        if any(isinstance(v, Private) for v in flatten(value)):
            self._add({"rounds": 1.0})
        sender = 2 if self.cfg.protocol == "aby3" else 1

        def plain(v):
            if not isinstance(v, Private):
                return v.double() if isinstance(v, torch.Tensor) else v
            shares = self._jobs([functools.partial(parties.get_var, v.name)] * self.n)
            sent = math.prod(v.shape) * self.cfg.field // 8
            self._add({"comm_bytes": sent, f"comm_bytes_p{sender}": sent})
            return torch.from_numpy(np.asarray(self.io.reconstruct(shares), dtype=np.float64))

        return map_values(plain, value)

    # --- parties --------------------------------------------------------------------------

    def _jobs(self, jobs: list) -> list:
        return self.pool.run_each(jobs, self.cfg.party_timeout_s)

    def _add(self, counts: dict[str, float]) -> None:
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0.0) + float(v)

    def counters(self):
        if self.cfg.mode == "simulator":  # traffic per party is unknown for the runs: none shown
            return {k: v for k, v in self.totals.items() if not k.startswith("comm_bytes_p")}
        return dict(self.totals)

    def close(self):
        """Free the parties' variables; the parties stay for the next cell."""
        if self.pool is not None and self.pool.procs:
            self._jobs([parties.clear] * self.n)

    def metrics(self):
        c = self.cfg
        return {
            "protocol": c.protocol,
            "parties": self.n,
            "dealer": DEALER[c.protocol],
            "field_bits": c.field,
            "fraction_bits": c.fraction_bits,
            "simulated": c.mode == "simulator",
            "party_start_s": self.party_start_s,
            "compile_s": self.compile_s,
            "approx": f"forms={c.forms},exp=taylor{c.exp_iters},recip=newton,rsqrt=newton",
        }


_COMPILED: dict[str, tuple[bytes, list[tuple[int, ...]]]] = {}  # program key -> code, output shapes
_SHIPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> program keys its parties hold


def flatten(value: Any) -> list[Any]:
    found: list[Any] = []
    map_values(found.append, value)
    return found


def share_bytes(share: Any) -> int:
    """Serialized size of one party's share: what moves when it is sent."""
    return sum(len(chunk) for chunk in share.share_chunks)


def _shipped(pool: shared.PartyPool) -> set[str]:
    return _SHIPPED.setdefault(pool, set())


def compile_program(program: Program, ops: Ops) -> tuple[bytes, list[tuple[int, ...]]]:
    """SPU code of `program.fn` for secret float inputs of the programs' shapes, and output shapes."""
    import jax
    import spu.utils.frontend as spu_fe
    from spu import libspu

    fn = program.fn(ops)
    args = [jax.ShapeDtypeStruct(p.shape, np.float32) for p in program.inputs]
    names = [f"in{i}" for i in range(len(args))]
    executable, _ = spu_fe.compile(
        spu_fe.Kind.JAX, fn, args, {}, names, [libspu.Visibility.VIS_SECRET] * len(args),
        lambda outs: [f"out{i}" for i in range(len(outs))], copts=libspu.CompilerOptions(),
    )  # fmt: skip
    shapes = [tuple(s.shape) for s in jax.eval_shape(fn, *args)]
    return executable.code, shapes


def runtime_config(cfg: SpuConfig):
    """SPU's runtime config for `cfg`; profiling on, since it is what logs the link statistics."""
    from spu import libspu

    config = libspu.RuntimeConfig(
        protocol=getattr(libspu.ProtocolKind, cfg.protocol.upper()),
        field=libspu.FieldType.FM64 if cfg.field == 64 else libspu.FieldType.FM128,
        fxp_fraction_bits=cfg.fraction_bits,
    )
    config.beaver_type = libspu.RuntimeConfig.BeaverType.TrustedFirstParty
    config.fxp_exp_mode = libspu.RuntimeConfig.ExpMode.EXP_TAYLOR
    config.fxp_exp_iters = cfg.exp_iters
    config.enable_pphlo_profile = True
    return config


@functools.cache
def _log_dir() -> str:
    """Where this process's parties log (`CACHE_ROOT/spu-logs/<pid>`); logs of processes that are
    gone (a worker killed at its timeout) are removed here, this one's at exit."""
    root = CACHE_ROOT / "spu-logs"
    for old in root.glob("*"):
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    mine.mkdir(parents=True, exist_ok=True)
    atexit.register(shutil.rmtree, mine, ignore_errors=True)
    return str(mine)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def _start(key: parties.PoolKey, timeout_s: float) -> shared.PartyPool:
    """Start the parties, then connect them all at once."""
    pool = shared.PartyPool(key, "spu", parties.party_main, range(key.parties), (key,), timeout_s)
    start = perf_counter()
    addresses = [f"127.0.0.1:{shared.free_port('127.0.0.1')}" for _ in range(key.parties)]
    connect = functools.partial(parties.connect, addresses, key.config, timeout_s)
    pool.run_each([connect] * key.parties, timeout_s)
    pool.start_s += perf_counter() - start
    return pool


@functools.cache
def _import_problem() -> str | None:
    try:
        import spu.api  # noqa: F401
        import spu.utils.frontend  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
        return f"spu does not import: {type(exc).__name__}: {exc} (pip install spu==0.9.5 'jax[cpu]==0.4.34')"
    return None


BACKEND = SpuBackend
