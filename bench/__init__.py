"""The encbench harness: runner, timing, metrics, results store, CLI.

Public API: `load(path)` reads results into a DataFrame; `measure(backend, workload, harness)`
measures one cell in this process.
"""

from bench.measure import HarnessConfig, measure
from bench.results import COLUMNS, load

__all__ = ["COLUMNS", "HarnessConfig", "load", "measure"]
