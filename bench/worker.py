"""Cells run in a child process, so a cell that hangs or crashes costs only itself.

The worker is started once and reused across cells (backends may keep parties or caches alive
in it). It leads its own process group: on a timeout, a crash or Ctrl-C the whole group,
including any processes a backend started, is killed, and the next cell gets a fresh worker.
A watchdog kills the group too if the parent dies without cleaning up (SIGKILL, a cluster's
time limit), so no process of a killed sweep survives it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
from multiprocessing.connection import Connection
from typing import Any

from backends.base import set_activity_sink
from bench.cells import Cell, failure_rows, run_cell

STARTUP_TIMEOUT_S = 300.0
ACTIVITY_BYTES = 240


def _serve(conn: Connection, activity) -> None:
    os.setsid()  # own process group: killable as a whole, and Ctrl-C reaches only the parent
    set_activity_sink(lambda text: setattr(activity, "value", text.encode()[: ACTIVITY_BYTES - 1]))
    conn.send("ready")
    while True:
        try:
            cell = conn.recv()
        except EOFError:  # the parent is gone
            return
        if cell is None:
            return
        activity.value = b""
        conn.send(run_cell(cell))


def watchdog(pgid: int) -> subprocess.Popen:
    """A process that kills group `pgid` as soon as this process is gone, however it died: it waits
    for EOF on a pipe whose only write end is ours (not inheritable, so no other child holds it).
    Being a separate program, it works even while the worker holds the GIL in C code. Its own
    session keeps it out of the worker's group and away from signals sent to ours (Ctrl-C, hang-up)."""
    return subprocess.Popen(
        ["sh", "-c", f"read _; kill -9 -{pgid}"],  # not `kill -9 -- -pgid`: dash does not take `--`
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,  # nor holds our output pipes open
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
    )


class Worker:
    """A reusable child process that measures one cell at a time, with a per-cell timeout."""

    def __init__(self) -> None:
        self.proc: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.activity = None
        self.watchdog: subprocess.Popen | None = None

    def _start(self) -> None:
        if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            # In a joblib (loky) launcher job the global method is "loky", which a spawned child
            # would try, and fail, to restore.
            mp.set_start_method("spawn", force=True)
        ctx = mp.get_context("spawn")  # a clean interpreter: no state inherited from the sweep
        self.conn, child = ctx.Pipe()
        self.activity = ctx.Array("c", ACTIVITY_BYTES, lock=False)  # the cell's last `report_activity`
        self.proc = ctx.Process(target=_serve, args=(child, self.activity), name="encbench-worker")
        self.proc.start()
        child.close()
        if not self.conn.poll(STARTUP_TIMEOUT_S) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("the measurement worker did not start")
        self.watchdog = watchdog(self.proc.pid)  # "ready" comes after setsid: the group exists

    def run(self, cell: Cell, timeout_s: float) -> list[dict[str, Any]]:
        if self.proc is None or not self.proc.is_alive():
            self.kill()  # a worker that died on its own may leave its group and watchdog behind
            self._start()
        self.conn.send(cell)
        try:
            ready = self.conn.poll(timeout_s)
            if not ready:
                doing = self.activity.value.decode(errors="replace")
                self.kill()
                where = f" while {doing}" if doing else ""
                return failure_rows(
                    "timeout", f"cell exceeded harness.timeout_s={timeout_s:g}{where}; raise it or shrink the cell"
                )
            return self.conn.recv()
        except (EOFError, ConnectionError):
            self.proc.join(5)
            code = self.proc.exitcode
            self.kill()
            return failure_rows("error", f"the backend crashed the worker process (exit code {code})")
        except BaseException:  # Ctrl-C while waiting: take the busy worker down with us
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # no group (yet): kill the process itself
                self.proc.kill()
            self.proc.join()
        if self.conn is not None:
            self.conn.close()
        if self.watchdog is not None:  # stopped, not set off: the group it names is gone (and its id reusable)
            self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog.stdin.close()
        self.proc = self.conn = self.watchdog = None

    def close(self) -> None:
        """Stop an idle worker politely, then make sure its process group is gone."""
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)
        self.kill()
