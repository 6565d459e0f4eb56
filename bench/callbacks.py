"""Hydra callback: write the report when a run or a whole sweep ends (`report=false` skips it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("encbench")


class ReportCallback(Callback):
    def _report(self, config: DictConfig, run_dir: Path) -> None:
        if not config.get("report", True):
            return
        from bench.report.page import build  # matplotlib only when a report is made

        try:
            out = build(run_dir, config.reports_dir)
        except Exception as exc:  # the results are safe on disk; say how to retry
            log.error("report failed (%s: %s); rerun `encbench-report %s`", type(exc).__name__, exc, run_dir)
            return
        print(f"encbench: report in {out / 'index.html'} and {out / 'report.md'}", flush=True)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(config, Path(config.hydra.run.dir))  # results_dir/run_id unless overridden

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(config, Path(config.hydra.sweep.dir))
