"""Before hydra runs anything: validate every job of the command line and fix the run id.

Hydra reports user errors as multi-line messages with a stack-trace hint, and only when a job
starts. `prepare` composes every job of a sweep up front, so a bad value in the fifth job stops
the sweep before the first one runs, with one line naming the key and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import backends
import workloads
from bench import manifest
from bench.config import cells as job_cells
from bench.config import register
from bench.keys import check_declared, check_deletions, unknown_key
from workloads.base import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MULTIRUN_FLAGS = {"-m", "--multirun"}


def one_line(exc: Exception, keys: Callable[[str], list[str]] | None = None) -> str:
    """Hydra / OmegaConf error text reduced to one line naming the key; `keys(parent)` lists
    the keys a parent node has, for an unknown-key error."""
    text = str(exc.__cause__ or exc)
    present = re.search(r"An item is already at '([^']+)'", text)
    if present:
        return f"{present.group(1)} is already set; drop the + to change it ({present.group(1)}=...)"
    key = re.search(r"full_key: (\S+)", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    if not key:
        return first
    key = key.group(1)
    if "is not a subclass of NetworkConfig" in first:
        presets = "|".join(group_choices()["network"])
        return f"networks.{key} is not a network yet; start it from a preset: +network@networks.{key}=<{presets}>"
    if re.match(r"Key '[^']+' not in", first) and keys:
        return unknown_key(key, keys(key.rpartition(".")[0]))
    return f"{key}: {first}"


def group_choices() -> dict[str, list[str]]:
    """Each config group (hydra's own aside) and its options."""
    found = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    del found["hydra"], found["model"]  # hydra's own; encbench-project's
    presets = found.pop("workload", [])  # conf/workload/*.yaml: workloads with variants set
    protocols = found.pop("backend", [])  # conf/backend/*.yaml: backends with a protocol set
    return {
        **found,
        "backend": ["all", *backends.names(), *protocols],
        "workload": ["all", *workloads.REGISTRY, *presets],
    }


def check_groups(overrides: list[str], choices: dict[str, list[str]]) -> None:
    """Hydra names neither the choices of a group nor, for `network`, that it is placed per name."""
    for item in overrides:
        key, _, value = item.partition("=")
        group, at, _ = key.lstrip("+").partition("@")
        if group == "network" and not at:
            raise ConfigError(
                f"{item}: networks are not picked with network=; rows get an estimate per entry of networks "
                f"(lan, wan by default); add one with +network@networks.<name>=<preset> "
                f"(presets: {', '.join(choices['network'])})"
            )
        if group in choices and value not in choices[group]:
            raise ConfigError(f"{key}={value} is unknown; choose one of: {', '.join(choices[group])}")


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Each job's overrides; a sweep (`a,b`, `range(...)`) expands only under -m, as in hydra.
    A preset (`+experiment=fit`) may set `hydra.mode: MULTIRUN` and its own sweep
    (`hydra.sweeper.params`); the command line's values win."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        preset = preset_sweep([o.input_line for o in parsed if not o.is_sweep_override()])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(one_line(exc)) from None
    if preset is not None:
        given = {o.key_or_group.lstrip("+~") for o in parsed}
        parsed += OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in preset.items() if k not in given])
        multirun = True
    if not multirun:
        swept = [o.input_line for o in parsed if o.is_sweep_override()]
        if swept:
            raise ConfigError(f"{swept[0]} is a sweep; add -m to run one job per value")
        return [overrides]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preset_sweep(overrides: list[str]) -> dict[str, str] | None:
    """The sweep a preset asks for with `hydra.mode: MULTIRUN`, or None (a single run)."""
    if not any("experiment" in o for o in overrides):
        return None  # only presets set hydra's mode; composing costs ~0.3 s
    check_groups(overrides, group_choices())
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="encbench"):
        hc = compose(config_name="config", overrides=[*overrides, "run_id=validate"], return_hydra_config=True).hydra
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None
    return {str(k): str(v) for k, v in (hc.sweeper.get("params") or {}).items()}


def validate(job_overrides: list[list[str]]) -> str:
    """Compose and expand every job; returns the sweep's identity for `resume`: a hash of every
    job's cells and networks. Unlike the command's text, it does not change with the order of
    overrides or values, a default spelled out, the launcher or where the results go, and it
    changes whenever what would be measured does."""
    register()
    choices = group_choices()
    measured = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="encbench"):
        for job in job_overrides:
            task = [o for o in job if not o.startswith("hydra")] + ["run_id=validate"]
            try:
                check_groups(job, choices)
                cfg = compose_checked(task, sorted(choices))
                check_claims_alone(cfg, job)
                cells = job_cells(cfg)
            except (HydraException, OmegaConfBaseException) as exc:
                message = one_line(exc, lambda parent, task=task: keys_of(task, parent))
                raise ConfigError(in_job(message, job_overrides, job)) from None
            except ConfigError as exc:
                raise ConfigError(in_job(str(exc), job_overrides, job)) from None
            nets = OmegaConf.to_container(cfg.networks)
            measured += [json.dumps([cell.id, nets], sort_keys=True) for cell in cells]
    return hashlib.sha1("\n".join(sorted(measured)).encode()).hexdigest()[:12]


def check_claims_alone(cfg: DictConfig, job: list[str]) -> None:
    """Claims pick their own cells: a backend or workload given beside them would be ignored."""
    chosen = [o for o in job if o.lstrip("+~").split("=")[0].split(".")[0].split("@")[0] in ("backend", "workload")]
    if cfg.claims and chosen:
        raise ConfigError(
            f"{chosen[0]}: claims={list(cfg.claims)} run their own cells (bench/claims.py); drop the backend and "
            "workload settings, or drop the claims"
        )


def in_job(message: str, jobs: list[list[str]], job: list[str]) -> str:
    """`message`, naming the failing job by its swept values when a multirun has several."""
    if len(jobs) < 2:
        return message
    common = set.intersection(*map(set, jobs))
    return f"{message} (in the job {' '.join(o for o in job if o not in common)})"


def compose_checked(task: list[str], groups: list[str]) -> DictConfig:
    """The job's config, once no override deletes a key the app reads or adds one nobody declares."""
    parsed = OverridesParser.create().parse_overrides(task)
    deleted = [o for o in parsed if o.is_delete() and o.package is None]  # `~group@pkg` edits the defaults
    if deleted:
        kept = [o.input_line for o in parsed if o not in deleted]
        check_deletions(compose(config_name="config", overrides=kept), [o.key_or_group for o in deleted], groups)
    cfg = compose(config_name="config", overrides=task)
    check_declared(cfg, groups)
    return cfg


def keys_of(task: list[str], parent: str) -> list[str]:
    """Keys of node `parent` in the config composed from `task` without its `parent.*` overrides."""
    kept = [o for o in task if not o.startswith(f"{parent}.")] if parent else ["run_id=validate"]
    node = compose(config_name="config", overrides=kept)
    return list((OmegaConf.select(node, parent) if parent else node).keys())


def check_writable(results_dir: Path) -> None:
    """Hydra would fail creating the run directory with a traceback; probing the nearest existing
    ancestor leaves nothing behind."""
    existing = next(p for p in (results_dir, *results_dir.parents) if os.path.exists(p))
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise ConfigError(
            f"results_dir={results_dir} cannot be written ({existing}: {exc.strerror}); "
            "pass results_dir=<a writable directory>"
        ) from None


def resume_target(results_dir: Path, sweep: str) -> str:
    """The earlier run of the same sweep under `results_dir` whose job started last (run ids given
    by hand do not sort by time)."""
    found = [manifest.read(p.parent) for p in manifest.find_manifests(results_dir)]
    found = [m for m in found if m.get("sweep") == sweep]
    if not found:
        raise ConfigError(
            f"resume=true: no earlier run of this sweep under {results_dir}/; drop resume or pass run_id=<id>"
        )
    return max(found, key=lambda m: m["started_at"])["run_id"]


def new_run_id(results_dir: Path) -> str:
    run_id = stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(2, 1000):
        if not (results_dir / run_id).exists():
            break
        run_id = f"{stamp}-{n}"
    return run_id


def prepare(argv: list[str]) -> list[str]:
    """Validate the command line and return it with `sweep=` and `run_id=` added (ConfigError if invalid)."""
    flags = [a for a in argv if a.startswith("-")]
    if any(f not in MULTIRUN_FLAGS for f in flags):
        return argv  # --help, --cfg, --info, ...: hydra's own commands, nothing runs
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    sweep = validate(jobs(overrides, multirun=bool(flags)))
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    results_dir = Path(given.get("results_dir", "results"))
    check_writable(results_dir)
    added = [f"sweep={sweep}"]  # every job records it in its manifest, for `resume` to find the run
    if "run_id" not in given:
        resume = given.get("resume", "false").lower() in ("true", "yes", "on", "1")
        added.append(f"run_id={resume_target(results_dir, sweep) if resume else new_run_id(results_dir)}")
    return [*flags, *overrides, *added]  # -m first: hydra's parser rejects it between overrides
