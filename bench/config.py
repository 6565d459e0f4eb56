"""Structured configs (dataclasses) registered with hydra's ConfigStore, and their typed view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import backends
import workloads
from backends.base import BackendConfig
from bench import claims
from bench.cells import Cell, expand
from bench.measure import HarnessConfig
from bench.network import NetworkConfig
from workloads.base import ConfigError, WorkloadConfig


@dataclass
class AllBackendsConfig(BackendConfig):
    """`backend=all`: every installed backend, with its default config updated by `quick[name]`.

    The quick sweep compiles every TFHE cell with exact rounding and mono parameters: seconds per
    cell, where concrete's defaults (no rounding, multi parameters: the fewest PBS) take minutes
    per block. Override as `backend.quick.concrete.rounding=none`. `lattigo` counts (dry run and
    cost model): its bootstrapping keys alone take 1.5 minutes.
    """

    name: str = "all"
    quick: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "concrete": {"rounding": "exact", "parameter_strategy": "mono"},
            "lattigo": {"mode": "count"},
        }
    )


@dataclass
class AllWorkloadsConfig(WorkloadConfig):
    """`workload=all`: every workload at these sizes; `variants` is default, each or grid."""

    name: str = "all"
    variants: str = "each"


@dataclass
class EncbenchConfig:
    backend: Any = MISSING
    workload: Any = MISSING
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    claims: list[str] = field(default_factory=list)  # bench/claims.py ids: their cells replace backend x workload
    networks: dict[str, NetworkConfig] = field(default_factory=dict)  # filled from conf/network/
    results_dir: str = "results"
    run_id: str = MISSING  # set by the `encbench` entry point; names the run's directory
    sweep: str = MISSING  # set by the entry point: a hash of the whole command's cells, how `resume` finds its run
    resume: bool = False
    report: bool = True
    reports_dir: str = "reports"  # the report of a run goes to <reports_dir>/<run_id>/
    progress: bool = True


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="encbench_schema", node=EncbenchConfig)
    cs.store(group="backend", name="all", node=AllBackendsConfig)
    for name in backends.names():
        cs.store(group="backend", name=name, node=backends.get(name).Config)
    cs.store(group="workload", name="all", node=AllWorkloadsConfig)
    for name, cls in workloads.REGISTRY.items():
        cs.store(group="workload", name=name, node=cls.Config)


def validate_harness(h: HarnessConfig) -> None:
    if h.repeats < 1 or h.warmup < 0:
        raise ConfigError(f"harness.repeats={h.repeats}, harness.warmup={h.warmup}: need repeats >= 1, warmup >= 0")
    if h.timeout_s <= 0 or h.budget_s <= 0:
        raise ConfigError("harness.timeout_s and harness.budget_s must be positive (seconds)")


def validate_networks(networks: dict[str, NetworkConfig]) -> None:
    for name, net in networks.items():
        if net.bandwidth_gbps <= 0 or net.rtt_ms < 0:
            raise ConfigError(f"networks.{name}: need bandwidth_gbps > 0 and rtt_ms >= 0")


def typed(cfg: DictConfig) -> tuple[Any, Any, HarnessConfig]:
    """The backend, workload and harness configs as dataclass instances."""
    harness = OmegaConf.to_object(cfg.harness)
    validate_harness(harness)
    validate_networks(networks(cfg))
    return OmegaConf.to_object(cfg.backend), OmegaConf.to_object(cfg.workload), harness


def cells(cfg: DictConfig) -> list[Cell]:
    """The job's cells: the claims' (`claims=[...]`), else backend x workload expanded."""
    backend, workload, harness = typed(cfg)
    return claims.cells(list(cfg.claims), harness) if cfg.claims else expand(backend, workload, harness)


def networks(cfg: DictConfig) -> dict[str, NetworkConfig]:
    return {name: NetworkConfig(**net) for name, net in OmegaConf.to_container(cfg.networks).items()}
