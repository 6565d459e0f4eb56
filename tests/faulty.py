"""Fault injector for the harness tests: the plaintext backend, failing on purpose at one op.

Registered through ENCBENCH_BACKENDS=faulty (tests/ on the path). It computes honestly in
plaintext; it exists to show that a raising, crashing or hanging backend costs only its cell.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from backends.base import report_activity
from backends.plaintext import PlaintextBackend, PlaintextConfig


@dataclass
class FaultyConfig(PlaintextConfig):
    name: str = "faulty"
    fault: str = "raise"  # raise | crash | hang
    fault_op: str = "softmax"
    pid_file: str = ""  # `hang` writes here the pid of a child it starts, to check it gets killed
    fault_once: str = ""  # a marker file: fault only while it is absent (the fault creates it); a rerun gets past


class FaultyBackend(PlaintextBackend):
    name = "faulty"
    Config = FaultyConfig

    def __init__(self, cfg: FaultyConfig):
        super().__init__(cfg)
        self.cfg = cfg

    def run(self, workload, rec, x, w):
        def faulty(name, fn):
            if name.split(".")[-1] == self.cfg.fault_op:
                self.inject()
            return rec(name, fn)

        return workload.forward(self.ops, faulty, x, w)

    def inject(self):
        if self.cfg.fault_once:
            if os.path.exists(self.cfg.fault_once):
                return
            open(self.cfg.fault_once, "w").close()
        if self.cfg.fault == "raise":
            raise RuntimeError(f"injected fault in {self.cfg.fault_op}")
        if self.cfg.fault == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        report_activity(f"hanging on purpose in {self.cfg.fault_op}")  # the timeout message names it
        child = subprocess.Popen(["sleep", "600"])  # stands for an MPC party the backend started
        if self.cfg.pid_file:
            with open(self.cfg.pid_file, "w") as f:
                f.write(str(child.pid))
        time.sleep(3600)


BACKEND = FaultyBackend
