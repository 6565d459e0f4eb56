"""SPU party processes: each holds one brpc link to the others and one SPU runtime.

The client (the harness's process) compiles each op to an SPU program and sends it, with the
names of its input and output variables, to every party; the parties run it in lock-step over
their links, outputs stay secret-shared in their runtimes for the next op. The functions below
run inside a party (as jobs of `backends/parties.py`); `_PARTY` is that party's state.

Traffic: SPU 0.9.5 exposes its link statistics only in the log line profiling writes after each
run ("Link details: total send bytes X, recv bytes Y, send actions A, recv actions B": payload
bytes and messages this party sent and received during that run); each party logs to a file of
its own and `run` reads that line back.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from backends.parties import serve

LINK_STATS = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)"
)
_PARTY = threading.local()  # this party's state: its process's, or its thread's (`simulator.py`)


@dataclass(frozen=True)
class PoolKey:
    """What the running parties were started with; another protocol or setting restarts them."""

    parties: int
    config: bytes  # the serialized libspu.RuntimeConfig
    log_dir: str
    mode: str = "parties"  # parties (processes) | simulator (threads of the client)


def party_main(rank: int, key: PoolKey, conn: Connection) -> None:
    """A party's process: import SPU with its log in a file of its own, then serve jobs."""
    start = time.perf_counter()
    try:
        from spu import libspu

        log = Path(key.log_dir) / f"party{rank}.log"
        options = libspu.logging.LogOptions()
        options.enable_console_logger = False  # Cheetah logs every product at info level
        options.system_log_path = str(log)
        options.log_level = libspu.logging.LogLevel.INFO  # the link statistics are info lines
        libspu.logging.setup_logging(options)
        _PARTY.__dict__.update(rank=rank, log=log, offset=0, programs={})
    except BaseException as exc:  # noqa: BLE001 - reported to the pool
        conn.send(("error", f"spu party {rank} failed to start: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", time.perf_counter() - start))
    serve(rank, conn)


def connect(addresses: list[str], config: bytes, timeout_s: float) -> float:
    """Job: open the links to every party and make the runtime; seconds it took. Sent to all
    parties at once, after all imported (a party connecting early backs off for seconds)."""
    from spu import libspu

    start = time.perf_counter()
    desc = libspu.link.Desc()
    desc.id = "encbench"
    for rank, address in enumerate(addresses):
        desc.add_party(f"p{rank}", address)
    desc.recv_timeout_ms = int(2 * timeout_s * 1000)  # the client kills a hung run first; this is a backstop
    desc.connect_retry_times, desc.connect_retry_interval_ms = 100, 100
    desc.retry_opts.retry_interval_ms, desc.retry_opts.retry_interval_incr_ms = 100, 100
    desc.http_max_payload_size = 32 << 20
    use(libspu.link.create_brpc(desc, _PARTY.rank), config)
    return time.perf_counter() - start


def use(link: Any, config: bytes) -> None:
    """This party's link, and a runtime of `config` (serialized) on it."""
    from spu import libspu

    cfg = libspu.RuntimeConfig()
    cfg.ParseFromString(config)
    _PARTY.__dict__.update(link=link, config=cfg)
    clear()


def clear() -> None:
    """Job: a fresh runtime, without variables (a new cell; SPU 0.9.5's `Runtime.clear` fails)."""
    import spu.api as spu_api

    _PARTY.runtime = spu_api.Runtime(_PARTY.link, _PARTY.config)


def set_vars(shares: dict[str, Any]) -> None:
    """Job: store this party's shares under their names."""
    for name, share in shares.items():
        _PARTY.runtime.set_var(name, share)


def get_var(name: str) -> Any:
    """Job: this party's share of variable `name`."""
    return _PARTY.runtime.get_var(name)


def run(key: str, code: bytes | None, inputs: list[str], outputs: list[str], drop: list[str]) -> dict[str, int]:
    """Job: run program `key` (its code sent once) on variables `inputs`, storing `outputs`, after
    dropping the variables the client no longer holds; this party's traffic during the run."""
    from spu import libspu

    runtime, programs = _PARTY.runtime, _PARTY.programs
    for name in drop:
        runtime.del_var(name)
    if code is not None:
        programs[key] = code
    runtime.run(libspu.Executable(name=key, input_names=inputs, output_names=outputs, code=programs[key]))
    if _PARTY.log is None:  # a simulator thread: the process's one log is read by the pool
        return {}
    (stats,), _PARTY.offset = link_stats(_PARTY.log, _PARTY.offset, 1)
    return stats


def link_stats(log: Path, offset: int, count: int) -> tuple[list[dict[str, int]], int]:
    """The last `count` link statistics logged after byte `offset` of `log` (spdlog may flush a
    moment later), and the offset past them."""
    for _ in range(200):
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        found = LINK_STATS.findall(text)
        if len(found) >= count:
            keys = ("sent", "received", "sends", "receives")
            stats = [dict(zip(keys, map(int, line), strict=True)) for line in found[-count:]]
            return stats, offset + len(text.encode())
        time.sleep(0.001)
    raise RuntimeError("SPU logged no link statistics for a run (RuntimeConfig.enable_pphlo_profile must be on)")
