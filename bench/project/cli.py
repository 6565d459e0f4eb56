"""`encbench-project RESULTS... model=<preset> [model.seq_len=..] [model.private_layers=..] [network=..]`

Projects one private forward of a whole model from stored block cells (nothing is re-run) and
writes projection.jsonl, validation.jsonl, fits.jsonl, projection.md and index.html to `out`
(default reports/projection/<model>-s<seq_len>-p<private layers>/). Overrides are hydra's, as for
`encbench`: presets in conf/model/, keys of bench.project.model.ProjectConfig.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import bench
from bench.keys import check_declared
from bench.prepare import CONF_DIR, one_line
from bench.project import model as models
from bench.project.assemble import project
from bench.project.model import ProjectConfig
from bench.project.page import write
from workloads.base import ConfigError

PICKS = ("network", "backend")  # plain strings of ProjectConfig that share a name with a config group
MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def configure(overrides: list[str]) -> ProjectConfig:
    """The typed config of the overrides; ConfigError (one line) when one is unknown or invalid."""
    picked = {}  # `network=` and `backend=` name groups to hydra (encbench's): taken out before composing
    for item in list(overrides):
        key, _, value = item.partition("=")
        if key.lstrip("+") == "model" and value not in MODELS:
            raise ConfigError(f"model={value} is unknown; choose one of: {', '.join(MODELS)}")
        if key in PICKS:
            picked[key] = value
            overrides = [o for o in overrides if o != item]
    models.register()
    try:
        cfg = composed(overrides)
        check_declared(cfg, ["model", "network"])
        typed = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        default = composed([])
        raise ConfigError(one_line(exc, lambda parent: list(OmegaConf.select(default, parent or "").keys()))) from None
    for key, value in picked.items():
        setattr(typed, key, value)
    models.block_config(typed.model)  # validates the model's shape and switches
    return typed


def composed(overrides: list[str]) -> DictConfig:
    """conf/project.yaml with `overrides`; inside encbench's own run (its report) hydra is already
    set up on conf/."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="project", overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="encbench-project"):
        return compose(config_name="project", overrides=overrides)


def load(paths: list[str]) -> pd.DataFrame:
    if not paths:
        raise ConfigError("give the results to project from: encbench-project RESULTS... model=<preset>")
    frames = []
    for path in paths:
        if not Path(path).exists():
            raise ConfigError(f"{path} does not exist; pass a results, run or job directory, or a rows file")
        frame = bench.load(path)
        if frame.empty:
            raise ConfigError(f"{path} holds no result rows")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def out_dir(cfg: ProjectConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    m = cfg.model
    name = f"{m.name}-s{m.seq_len}-p{models.private_layers(m)}" + (f"-{cfg.backend}" if cfg.backend != "all" else "")
    return Path("reports") / "projection" / name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    paths = [a for a in argv if "=" not in a]
    try:
        cfg = configure([a for a in argv if "=" in a])
        proj = project(load(paths), cfg)
    except ConfigError as exc:
        print(f"encbench-project: error: {exc}", file=sys.stderr)
        return 2
    out = out_dir(cfg)
    write(proj, cfg, shlex.join(["encbench-project", *argv]), out)
    for row in proj.rows:
        if row["figure"] == "online_s" and not row["network"]:
            print(f"{row['backend']:>10}: {row['value']:.4g} s online ({row['how'] or row['flag']})")
    print(out / "index.html")
    print(out / "projection.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
