"""CrypTen party processes (`backends/parties.py` starts, reuses and kills them).

Each party is a spawned OS process (rank 0..P-1, plus rank P for CrypTen's trusted third party
when `triples=TTP`) that joins a torch.distributed (gloo) group over TCP and then runs, in
lock-step with the others, the jobs this process sends it through a pipe.

`Traffic` is the party-side accounting that `CryptenBackend.counters` reads (see there).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import backends.parties as shared
from backends.parties import PartyPool, free_port, serve

BYTES_PER_ELEMENT = 8  # CrypTen's ring elements are int64


@dataclass(frozen=True)
class PoolKey:
    """What the running parties were started with; a cell asking for other values restarts them."""

    parties: int
    triples: str
    addr: str
    port: int
    rank: int | None  # None: every party runs here; an int: only that party (one host per party)


def _party_main(rank: int, key: PoolKey, port: int, conn: Connection) -> None:
    """A party's process: join the group, then run jobs until told to stop."""
    start = time.perf_counter()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(key.parties),
        RENDEZVOUS=f"tcp://{key.addr}:{port}",
        DISTRIBUTED_BACKEND="gloo",
    )
    from backends.crypten.compat import import_crypten

    try:
        crypten = import_crypten()
        crypten.cfg.mpc.provider = key.triples
        crypten.cfg.communicator.verbose = True  # otherwise CrypTen counts nothing
        if rank == key.parties:  # the trusted third party serves triples until killed
            conn.send(("ok", time.perf_counter() - start))
            crypten.mpc.provider.TTPServer()
            return
        crypten.init()
        Traffic.install(crypten)
    except BaseException as exc:  # noqa: BLE001 - reported to the pool
        conn.send(("error", f"party {rank} failed to start: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", time.perf_counter() - start))
    serve(rank, conn)


def pool(key: PoolKey, timeout_s: float) -> tuple[PartyPool, bool]:
    """The running CrypTen parties for `key`, started (or restarted) if needed; True when just started."""

    def start() -> PartyPool:
        ranks = list(range(key.parties)) if key.rank is None else [key.rank]
        jobs = len(ranks)  # the TTP takes no jobs
        if key.triples == "TTP" and 0 in ranks:
            ranks.append(key.parties)  # the trusted third party runs beside party 0
        port = key.port or free_port(key.addr)
        return PartyPool(key, "crypten", _party_main, ranks, (key, port), timeout_s, n_jobs=jobs)

    return shared.pool("crypten", key, start)


class Traffic:
    """Per-party accounting on top of CrypTen's own communicator statistics.

    CrypTen logs, per party, one round per communicator call and the elements each call sends
    *or receives* (its docs: sum over parties and halve for the system). Here each call also
    credits the elements this party *sends* under the same model (all_reduce: its tensor once;
    broadcast / scatter: the source sends to the other P-1; reduce / gather: non-roots send one),
    so per-party sent bytes sum to CrypTen's system total. Calls made while the triple provider
    generates correlated randomness are booked as preprocessing, not online; there, what the
    trusted third party sends to party 0 (it takes no part in the counters' gathering) is booked
    on party 0.
    """

    instance: Traffic | None = None

    def __init__(self, comm: Any):
        self.comm = comm
        self.sent = 0.0  # online bytes this party sent
        self.pre_sent = self.pre_rounds = self.pre_s = 0.0
        self.depth = 0  # > 0 inside the triple provider

    @classmethod
    def install(cls, crypten: Any) -> None:
        traffic = cls(crypten.communicator.get())
        for name in ("send", "isend", "all_reduce", "broadcast", "reduce", "gather", "all_gather", "scatter"):
            traffic._wrap_comm(name)
        for name in ("send_obj", "broadcast_obj"):
            traffic._wrap_comm(name)
        provider_cls = type(crypten.mpc.get_default_provider())
        for name in crypten.mpc.provider.provider.TupleProvider.TRACEABLE_FUNCTIONS:
            setattr(provider_cls, name, traffic._preprocessing(getattr(provider_cls, name)))
        cls.instance = traffic

    def online_rounds(self) -> float:
        return self.comm.comm_rounds - self.pre_rounds

    def _wrap_comm(self, name: str) -> None:
        inner = getattr(self.comm, name)

        def counted(*args, **kwargs):
            rank, world = self.comm.get_rank(), self.comm.get_world_size()
            nbytes = sent_bytes(name, rank, world, args, kwargs)
            if name == "broadcast" and args[1] == world:  # from the TTP (rank P), which reports no counters:
                nbytes = sent_bytes(name, world, 2, args, kwargs)  # book what it sent to this party here
            if self.depth:
                self.pre_sent += nbytes
            else:
                self.sent += nbytes
            return inner(*args, **kwargs)

        setattr(self.comm, name, counted)

    def _preprocessing(self, fn: Callable) -> Callable:
        def generate(provider, *args, **kwargs):
            if self.depth:
                return fn(provider, *args, **kwargs)
            rounds, start = self.comm.comm_rounds, time.perf_counter()
            self.depth += 1
            try:
                return fn(provider, *args, **kwargs)
            finally:
                self.depth -= 1
                self.pre_s += time.perf_counter() - start
                self.pre_rounds += self.comm.comm_rounds - rounds

        return generate


def sent_bytes(name: str, rank: int, world: int, args: tuple, kwargs: dict) -> float:
    """Bytes this party sends in one communicator call, under CrypTen's own counting model."""
    if name in ("send_obj", "broadcast_obj"):
        size = sys.getsizeof(args[0])
        return size if name == "send_obj" else (size * (world - 1) if args[1] == rank else 0)
    tensors = args[0] if isinstance(args[0], list) else [args[0]]
    n = sum(t.nelement() for t in tensors)
    if name == "scatter":
        n = sum(t.nelement() for i, t in enumerate(tensors) if i != rank) if args[1] == rank else 0
    elif name == "broadcast":
        n = n * (world - 1) if args[1] == rank else 0
    elif name in ("reduce", "gather"):
        n = 0 if args[1] == rank else n
    elif name == "all_gather":
        n = n * (world - 1)
    return n * BYTES_PER_ELEMENT
