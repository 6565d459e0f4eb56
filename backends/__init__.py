"""Backends behind one interface: each module here defining `BACKEND` is one, found by name.

Out-of-tree backends (a plugin, or a test's fault injector) register by module path in the
environment variable `ENCBENCH_BACKENDS` (comma-separated); worker processes inherit it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from backends.base import ALL, Backend, BackendConfig, Capabilities
from workloads.base import ConfigError

_NOT_BACKENDS = {"base"}


def _modules() -> dict[str, str]:
    found = {m.name: f"backends.{m.name}" for m in pkgutil.iter_modules(__path__)}
    found = {n: m for n, m in found.items() if n not in _NOT_BACKENDS and not n.startswith("_")}
    for path in filter(None, os.environ.get("ENCBENCH_BACKENDS", "").split(",")):
        found[path.rsplit(".", 1)[-1]] = path.strip()
    return found


def names() -> list[str]:
    """Every backend, whether or not its library is installed."""
    return sorted(_modules())


def get(name: str) -> type[Backend]:
    """The backend class registered as `name`; ConfigError naming the choices otherwise."""
    modules = _modules()
    if name not in modules:
        raise ConfigError(f"backend={name} is unknown; choose one of: {', '.join(sorted(modules))}")
    return importlib.import_module(modules[name]).BACKEND


def installed() -> list[str]:
    """The backends whose libraries import on this machine."""
    return [n for n in names() if get(n).unavailable() is None]


__all__ = ["ALL", "Backend", "BackendConfig", "Capabilities", "get", "installed", "names"]
