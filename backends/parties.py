"""MPC party processes: started once per sweep process, reused across cells, killed together.

Each party is a spawned OS process that runs `serve` after its technology's start-up: it takes
jobs (pickled callables) from this process through a pipe and answers each with its result.
Parties inherit this process's process group (no setsid), so the harness's worker takes them
down when it kills its group on a timeout. If any party dies, raises or stops answering within
`timeout_s`, or the parties together hold more than MEMORY_SHARE of the machine's memory (SPU's
Cheetah keeps its HE and OT buffers: its GPT-2 block at seq_len 128 passed 21 GB of 24 before its
ops ran in blocks), every party is killed and PartyError raised: the cell becomes `error` and the
next cell starts fresh parties, before the kernel's OOM killer picks a victim. Each technology keeps one pool (a cell
of another config replaces it).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import socket
import traceback
from collections.abc import Callable, Hashable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from time import monotonic, perf_counter
from typing import Any

from backends.base import MEMORY_SHARE, machine_memory


class PartyError(RuntimeError):
    """A party crashed, raised or hung; all parties were killed."""


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def resident_bytes(pids: Sequence[int]) -> int:
    """Resident memory of processes `pids` together (those gone count 0)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
    return total


def serve(rank: int, conn: Connection) -> None:
    """A party's job loop, after its start-up answered ("ok", ...): run jobs until told to stop."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            conn.send(("ok", job()))
        except BaseException as exc:  # noqa: BLE001 - reported to the pool, which kills every party
            where = traceback.format_exception(exc)[-2].strip().splitlines()[0] if exc.__traceback__ else ""
            conn.send(("error", f"party {rank}: {type(exc).__name__}: {exc} ({where})"))


class PartyPool:
    """Party processes `target(rank, *args, conn)` for `ranks`; the first `n_jobs` take jobs."""

    def __init__(self, key: Hashable, name: str, target: Callable, ranks: Sequence[int], args: tuple,
                 timeout_s: float, n_jobs: int | None = None):  # fmt: skip
        self.key, self.name, self.procs, self.conns = key, name, [], []
        ctx = mp.get_context("spawn")  # clean interpreters: no threads inherited via fork
        start = perf_counter()
        for rank in ranks:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(rank, *args, theirs), name=f"{name}-party-{rank}", daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)
        self._collect(self.conns, timeout_s, "start")
        self.start_s = perf_counter() - start
        self.n_jobs = len(ranks) if n_jobs is None else n_jobs

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def run(self, job: Callable[[], Any], timeout_s: float) -> Any:
        """Run `job` in every party that takes jobs; the first (lowest rank) party's result."""
        return self.run_each([job] * self.n_jobs, timeout_s)[0]

    def run_each(self, jobs: Sequence[Callable[[], Any]], timeout_s: float) -> list[Any]:
        """Job i in party i, all at once; every party's result."""
        conns = self.conns[: len(jobs)]
        for proc, conn, job in zip(self.procs[: len(jobs)], conns, jobs, strict=True):
            try:
                conn.send(job)
            except OSError:  # its end of the pipe is gone
                self.kill()
                raise PartyError(f"{proc.name} died before a job (exit code {proc.exitcode})") from None
        return self._collect(conns, timeout_s, "job")

    def _collect(self, conns: list[Connection], timeout_s: float, what: str) -> list[Any]:
        """Every party's answer; a death, an error, a timeout or too much memory (checked every
        second) kills all parties and raises."""
        answers: dict[int, Any] = {}
        deadline = monotonic() + timeout_s
        sentinels = {p.sentinel: i for i, p in enumerate(self.procs)}
        machine = machine_memory()
        while len(answers) < len(conns):
            left = deadline - monotonic()
            ready = wait([c for i, c in enumerate(conns) if i not in answers] + list(sentinels), min(max(left, 0), 1))
            held = resident_bytes(self.pids)
            if held > MEMORY_SHARE * machine:
                self.kill()
                raise PartyError(
                    f"the {self.name} parties held {held / 1e9:.1f} GB, over {MEMORY_SHARE:.0%} of this machine's "
                    f"{machine / 1e9:.1f} GB, during the {what}: use smaller shapes or a machine with more memory"
                )
            if not ready:
                if monotonic() < deadline:
                    continue
                late = ", ".join(self.procs[i].name for i in range(len(conns)) if i not in answers)
                self.kill()
                raise PartyError(f"{late} did not finish the {what} within backend.party_timeout_s={timeout_s:g}")
            for obj in ready:
                if obj in sentinels:
                    proc = self.procs[sentinels[obj]]
                    self.kill()
                    raise PartyError(f"{proc.name} died during the {what} (exit code {proc.exitcode})")
                i = conns.index(obj)
                try:
                    status, value = obj.recv()
                except EOFError:  # died before its sentinel was seen
                    status, value = "error", f"{self.procs[i].name} died during the {what}"
                if status == "error":
                    self.kill()
                    raise PartyError(value)
                answers[i] = value
        return [answers[i] for i in range(len(conns))]

    def kill(self) -> None:
        """SIGKILL every party process of this pool (by pid) and reap it."""
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(5)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


_POOLS: dict[str, PartyPool] = {}  # technology -> its running parties


def pool(name: str, key: Hashable, start: Callable[[], PartyPool]) -> tuple[PartyPool, bool]:
    """The running pool of technology `name` for `key`, or `start()`'s (the old one killed); True
    when just started. Each technology keeps its own, so a sweep alternating them restarts none."""
    found = _POOLS.get(name)
    if found is not None and found.key == key and found.procs and all(p.is_alive() for p in found.procs):
        return found, False
    if found is not None:
        found.kill()
    _POOLS[name] = start()
    return _POOLS[name], True


def current(name: str) -> PartyPool | None:
    """The running pool of technology `name`, if any."""
    return _POOLS.get(name)


def shutdown() -> None:
    """Kill every pool's parties."""
    for found in _POOLS.values():
        found.kill()
    _POOLS.clear()


atexit.register(shutdown)
