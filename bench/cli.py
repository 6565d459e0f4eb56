"""`encbench`: the hydra app that turns a command line into cells, measures them, and reports."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backends import get as get_backend
from bench import manifest
from bench.config import cells as job_cells
from bench.config import networks, register, typed
from bench.prepare import CONF_DIR, prepare
from bench.sweep import run_cells
from workloads.base import ConfigError

log = logging.getLogger("encbench")


def launcher_info() -> tuple[str, int]:
    """The launcher's name and how many jobs it runs at once (they skew each other's timings)."""
    launcher = HydraConfig.get().launcher
    name = str(launcher.get("_target_", "basic")).rsplit(".", 1)[-1]
    n_jobs = launcher.get("n_jobs", 1)
    return name, (n_jobs if n_jobs and n_jobs > 0 else 1)


def run_job(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    run_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else job_dir  # hydra.*.dir may be overridden
    _, _, harness = typed(cfg)
    cells = job_cells(cfg)
    name, parallel = launcher_info()
    info = manifest.collect(
        run_id=cfg.run_id,
        overrides=list(hc.overrides.task),
        sweep=cfg.sweep,
        launcher=name,
        jobs_in_parallel=parallel,
        config=OmegaConf.to_container(cfg),
        threat_models={c.backend["name"]: get_backend(c.backend["name"]).threat_model for c in cells},
    )
    manifest.write(job_dir, {**info, "status": "running", "cells": len(cells)})
    status = "interrupted"
    try:
        tally = run_cells(
            cells,
            job_dir,
            run_dir,
            cfg.run_id,
            timeout_s=harness.timeout_s,
            networks=networks(cfg),
            resume=cfg.resume,
            progress=cfg.progress,
        )
        status = "finished"
    except KeyboardInterrupt:
        print(f"encbench: interrupted; finished cells are kept in {job_dir}/ (resume=true continues)", flush=True)
        sys.exit(130)
    finally:
        manifest.write(job_dir, {**info, "status": status, "cells": len(cells)})
    counts = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()) if n)
    print(f"encbench: {len(cells)} cells ({counts}); results in {job_dir}/", flush=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> None:
    try:
        run_job(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)


def main() -> None:
    """Validate the whole command line first (one-line errors, exit 2), then hand it to hydra."""
    try:
        sys.argv[1:] = prepare(sys.argv[1:])
    except ConfigError as exc:
        print(f"encbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    register()
    app()


if __name__ == "__main__":
    main()
