"""Cells: one backend x one workload config x one harness config, and how a sweep expands to them."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import traceback
from dataclasses import asdict, dataclass, fields
from typing import Any

import backends
import workloads
from bench.measure import HarnessConfig, measure
from workloads.base import ConfigError

VARIANT_MODES = ("default", "each", "grid")


@dataclass(frozen=True)
class Cell:
    """Plain data (it crosses process boundaries); `id` is a hash of everything that shapes it."""

    backend: dict[str, Any]
    workload: dict[str, Any]
    harness: dict[str, Any]

    @property
    def id(self) -> str:
        blob = json.dumps([self.backend, self.workload, self.harness], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def make_workload(self) -> workloads.Workload:
        cls = workloads.get(self.workload["name"])
        return cls(cls.Config(**self.workload))

    @property
    def label(self) -> str:
        wl = self.make_workload()
        backend = backends.get(self.backend["name"]).Config(**self.backend).label()
        return f"{backend}/{wl.name}[{wl.variant}] seq={wl.cfg.seq_len} d={wl.cfg.d_model}"

    def columns(self) -> dict[str, Any]:
        """The identity columns every row of this cell carries."""
        wl = self.make_workload()
        sizes = {k: getattr(wl.cfg, k) for k in ("seq_len", "d_model", "n_heads", "lora_rank")}
        return {
            "backend": self.backend["name"],
            "workload": wl.name,
            "variant": wl.variant,
            **sizes,
            "d_ff": wl.d_ff,
            "cell_id": self.id,
            "backend_cfg": json.dumps(self.backend, sort_keys=True),
            "workload_cfg": json.dumps(self.workload, sort_keys=True),
        }


def failure_rows(status: str, message: str) -> list[dict[str, Any]]:
    return [{"op": "total", "status": status, "error": message}]


def measure_job(cell: Cell, backend: backends.Backend) -> list[dict[str, Any]]:
    """What a backend executes for a cell; module-level so that it pickles to MPC party processes."""
    return measure(backend, cell.make_workload(), HarnessConfig(**cell.harness))


def run_cell(cell: Cell) -> list[dict[str, Any]]:
    """Measure one cell here; an exception becomes an `error` row with its one-line message."""
    try:
        backend_cls = backends.get(cell.backend["name"])
        missing = backend_cls.unavailable()
        if missing:
            return failure_rows("skipped", f"{backend_cls.name}: {missing}")
        return backend_cls.execute(backend_cls.Config(**cell.backend), functools.partial(measure_job, cell))
    except Exception as exc:  # a crashing backend must not stop the sweep
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return failure_rows("error", f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})")


def variant_configs(cls: type[workloads.Workload], sizes: dict[str, Any], mode: str) -> list[Any]:
    """`default`: the default variant; `each`: also every other value of one switch at a time (not
    of the workload's `each_fixed` switches); `grid`: every combination of switch values. Variants
    these sizes do not allow (head_merge=2 with an odd n_heads) are left out; the default variant
    (listed first) must be valid."""
    if mode == "grid":
        switches = list(cls.variants)
        combos = [dict(zip(switches, values, strict=True)) for values in itertools.product(*cls.variants.values())]
    else:
        combos = [{}]
        if mode == "each":
            defaults = cls.Config()
            combos += [
                {s: v}
                for s, vals in cls.variants.items()
                if s not in cls.each_fixed
                for v in vals
                if v != getattr(defaults, s)
            ]
    configs = [cls.Config(**sizes, **combo, name=cls.name) for combo in combos]
    return [configs[0], *(c for c in configs[1:] if valid(cls, c))]  # the first is the default variant


def valid(cls: type[workloads.Workload], cfg: Any) -> bool:
    try:
        cls.validate(cfg)
    except ConfigError:
        return False
    return True


def expand(backend: Any, workload: Any, harness: HarnessConfig) -> list[Cell]:
    """The cells of one job, validated; `backend` / `workload` are typed configs, possibly `all`."""
    if backend.name == "all":
        backend_cfgs = [backends.get(n).Config(**backend.quick.get(n, {})) for n in backends.installed()]
    else:
        backend_cfgs = [backend]
    for cfg in backend_cfgs:
        backends.get(cfg.name).validate(cfg)
    if workload.name == "all":
        if workload.variants not in VARIANT_MODES:
            raise ConfigError(f"workload.variants={workload.variants}; allowed: {', '.join(VARIANT_MODES)}")
        shared = {f.name: getattr(workload, f.name) for f in fields(workloads.WorkloadConfig) if f.name != "name"}
        workload_cfgs = [
            c for cls in workloads.REGISTRY.values() for c in variant_configs(cls, shared, workload.variants)
        ]
    else:
        workload_cfgs = [workload]
    for cfg in workload_cfgs:
        workloads.get(cfg.name).validate(cfg)
    harness_data = asdict(harness)
    each = workload.name == "all" and workload.variants == "each"
    return [
        Cell(asdict(b), asdict(w), harness_data)
        for w in workload_cfgs
        for b in backend_cfgs
        if not (each and off_default(w, backends.get(b.name).capabilities.same_cost))
    ]


def off_default(cfg: Any, switches: tuple[str, ...]) -> bool:
    """Whether `cfg` sets one of `switches` to other than its workload's default."""
    defaults = type(cfg)()
    return any(getattr(cfg, s) != getattr(defaults, s) for s in switches if hasattr(cfg, s))
