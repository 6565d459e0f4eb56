"""The run manifest: everything needed to interpret or reproduce a job's rows."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import backends
from bench.results import SCHEMA_VERSION

MANIFEST_FILE = "manifest.json"
LIBRARIES = ("torch", "numpy", "pandas", "hydra-core")  # and each backend's `libraries`
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in [*LIBRARIES, *(lib for b in backends.names() for lib in backends.get(b).libraries)]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(
    *,
    run_id: str,
    overrides: list[str],
    sweep: str,
    launcher: str,
    jobs_in_parallel: int,
    config: dict[str, Any],
    threat_models: dict[str, str],
) -> dict[str, Any]:
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "argv": sys.argv,
        "overrides": overrides,
        "sweep": sweep,
        "launcher": launcher,
        "jobs_in_parallel": jobs_in_parallel,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "threat_models": threat_models,
        "config": config,
    }


def write(directory: Path, manifest: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(directory / MANIFEST_FILE)  # atomic: never a half-written manifest


def read(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST_FILE).read_text())


def find_manifests(results_dir: Path) -> list[Path]:
    """Manifests of every run and job under `results_dir`."""
    return sorted(results_dir.glob(f"*/{MANIFEST_FILE}")) + sorted(results_dir.glob(f"*/*/{MANIFEST_FILE}"))
