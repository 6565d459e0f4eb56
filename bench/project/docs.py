"""The projections of docs/results.yaml, rendered for docs/results.md and README.md by `encbench-docs`:
each runs its `encbench-project` command on the committed results (nothing is measured)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.project.assemble import project
from bench.project.cli import configure, load
from bench.project.page import model_table, time_table, validation_table
from bench.report.frame import fmt_bytes, fmt_seconds
from bench.report.tables import Table

RATIO_FIGURES = {"online_s": ("online (compute)", fmt_seconds), "comm_bytes": ("communication", fmt_bytes)}


@dataclass(frozen=True)
class ProjectionSpec:
    """One `projections:` entry: a command, and optionally overrides to set against it (`versus`)
    with the published ratios they are compared with."""

    title: str
    command: str
    about: str = ""
    readme: bool = False
    versus: tuple[str, ...] = ()
    published: str = ""


def run(spec: ProjectionSpec, repo: Path, extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, object]:
    argv = shlex.split(spec.command)[1:]
    paths = [str(repo / a) for a in argv if "=" not in a]
    cfg = configure([a for a in argv if "=" in a] + list(extra))
    proj = project(load(paths), cfg)
    return pd.DataFrame(proj.rows), proj


def section(spec: ProjectionSpec, repo: Path, level: str = "##") -> list[str]:
    rows, proj = run(spec, repo)
    networks = sorted({n for n in rows.network if n})
    lines = [f"{level} {spec.title}", "", f"`{spec.command}`", ""]
    if spec.about:
        lines += [spec.about.strip(), ""]
    lines += [model_table(rows, networks).to_markdown(), ""]
    if spec.versus:
        lines += [
            f"**Against {', '.join(spec.versus)}**",
            "",
            versus_table(spec, repo, rows, networks).to_markdown(),
            "",
        ]
        lines += [f"Published: {spec.published}", ""] if spec.published else []
    times = time_table(rows)
    if times is not None:
        lines += ["**Where the time goes**", "", times.to_markdown(), ""]
    checked = validation_table(proj.validation)
    if checked is not None:
        lines += ["**Validation**", "", checked.to_markdown(), ""]
    return lines


def versus_table(spec: ProjectionSpec, repo: Path, base: pd.DataFrame, networks: list[str]) -> Table:
    """Per backend, the base command's figures over each `versus` override's, as ratios."""
    figures = dict(RATIO_FIGURES) | {f"online_{n}_s": (f"online, {n}", fmt_seconds) for n in networks}
    data = {}
    for override in spec.versus:
        other, _ = run(spec, repo, (override,))
        for backend in base.backend.unique():
            a = base[base.backend == backend].set_index("figure").value
            b = other[other.backend == backend].set_index("figure").value
            data[f"{backend}, {override}"] = {
                name: f"{fmt(a[f])} / {fmt(b[f])} = {a[f] / b[f]:.2f}x" for f, (name, fmt) in figures.items() if f in a
            }
    return Table(pd.DataFrame.from_dict(data, orient="index"), index_name="base / versus")


def anchor(title: str) -> str:
    """GitHub's heading anchor."""
    return "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_").replace(" ", "-")


def readme_block(specs: list[ProjectionSpec], repo: Path) -> str:
    lines = []
    for spec in (s for s in specs if s.readme):
        rows, _ = run(spec, repo)
        networks = sorted({n for n in rows.network if n})
        where = f"[validation and breakdown](docs/results.md#{anchor(spec.title)})"
        lines += [f"{spec.title} (`{spec.command}`, {where}):", ""]
        if spec.versus:
            lines += [versus_table(spec, repo, rows, networks).to_markdown(), ""]
            lines += [f"Published: {spec.published.strip()}", ""] if spec.published else []
        else:
            lines += [model_table(rows, networks).to_markdown(), ""]
    return "\n".join(lines).rstrip()
