"""`backend.mode=simulator`: the SPU parties as threads of the client, for debugging.

The same jobs as the party processes run (`parties.py`), each party's in a thread of its own
over SPU's in-memory links, so one process holds everything (a debugger steps into any party).
What it lacks, and why it is only a debugging mode: SPU logs one process-wide file, whose link
lines do not name the party, so traffic is known in total only (`comm_bytes`, and `rounds` as
the most messages any party sent; no `comm_bytes_p<i>`); threads share the client's cores and
memory (no memory guard) and a hung thread cannot be killed (the run fails at its timeout, the
thread stays until SPU's receive timeout).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from time import monotonic, perf_counter
from typing import Any

from backends.parties import PartyError
from backends.spu import parties


class SimulatedParty(threading.Thread):
    """One party: runs the jobs put in `jobs`, answering each in `answers`."""

    def __init__(self, rank: int):
        super().__init__(name=f"spu-simulated-party-{rank}", daemon=True)
        self.rank, self.jobs, self.answers = rank, queue.Queue(), queue.Queue()

    def run(self) -> None:
        parties._PARTY.__dict__.update(rank=self.rank, log=None, programs={})
        while (job := self.jobs.get()) is not None:
            try:
                self.answers.put(("ok", job()))
            except BaseException as exc:  # noqa: BLE001 - reported to the client
                self.answers.put(("error", f"simulated party {self.rank}: {type(exc).__name__}: {exc}"))


class SimulatorPool:
    """The parties of `key` as threads, with the interface of `backends.parties.PartyPool`."""

    def __init__(self, key: parties.PoolKey, timeout_s: float):
        from spu import libspu

        start = perf_counter()
        self.key, self.name, self.log = key, "spu", _logging(key.log_dir)
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.procs = [SimulatedParty(rank) for rank in range(key.parties)]
        for party in self.procs:
            party.start()
        desc = libspu.link.Desc()
        desc.id = f"encbench-simulator-{id(self)}"
        for rank in range(key.parties):
            desc.add_party(f"thread_{rank}", f"thread_{rank}")
        desc.recv_timeout_ms = int(2 * timeout_s * 1000)
        links = [libspu.link.create_mem(desc, rank) for rank in range(key.parties)]
        self.run_each([lambda link=link: parties.use(link, key.config) for link in links], timeout_s)
        self.start_s = perf_counter() - start

    def run_each(self, jobs: Sequence[Callable[[], Any]], timeout_s: float) -> list[Any]:
        """Job i in party i, all at once; every party's result (PartyError on an error or timeout)."""
        for party, job in zip(self.procs, jobs, strict=False):
            party.jobs.put(job)
        deadline, answers = monotonic() + timeout_s, []
        for party in self.procs[: len(jobs)]:
            try:
                status, value = party.answers.get(timeout=max(deadline - monotonic(), 0))
            except queue.Empty:
                self.kill()
                raise PartyError(f"{party.name} did not finish within backend.party_timeout_s={timeout_s:g}") from None
            if status == "error":
                self.kill()
                raise PartyError(value)
            answers.append(value)
        return answers

    def traffic(self) -> list[dict[str, int]]:
        """Each party's link statistics of the last run, in no particular order."""
        stats, self.offset = parties.link_stats(self.log, self.offset, len(self.procs))
        return stats

    def kill(self) -> None:
        """Stop the threads once their current job ends."""
        for party in self.procs:
            party.jobs.put(None)
        self.procs = []


@functools.cache
def _logging(log_dir: str) -> Path:
    """SPU's log of this process (set up once), to a file: the link statistics are info lines."""
    from spu import libspu

    options = libspu.logging.LogOptions()
    options.enable_console_logger = False
    options.system_log_path = str(Path(log_dir) / "simulator.log")
    options.log_level = libspu.logging.LogLevel.INFO
    libspu.logging.setup_logging(options)
    return Path(options.system_log_path)
