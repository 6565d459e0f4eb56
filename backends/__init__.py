"""Backends behind one interface: each module here defining `BACKEND` is one, found by name.

Out-of-tree backends (a plugin, or a test's fault injector) register by module path in the
environment variable `ENCBENCH_BACKENDS` (comma-separated); worker processes inherit it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from backends.base import ALL, Backend, BackendConfig, Capabilities, Column
from workloads.base import ConfigError

_NOT_BACKENDS = {"base", "ckks", "parties"}  # ckks: the packing both CKKS backends share; parties: MPC processes
PLUGINS_ENV = "ENCBENCH_BACKENDS"


def _modules(plugins: bool = True) -> dict[str, str]:
    found = {m.name: f"backends.{m.name}" for m in pkgutil.iter_modules(__path__)}
    found = {n: m for n, m in found.items() if n not in _NOT_BACKENDS and not n.startswith("_")}
    for path in filter(None, os.environ.get(PLUGINS_ENV, "").split(",") if plugins else []):
        found[path.rsplit(".", 1)[-1]] = path.strip()
    return found


def names(plugins: bool = True) -> list[str]:
    """Every backend, whether or not its library is installed; `plugins=False`: the in-tree ones."""
    return sorted(_modules(plugins))


REQUIRED = {
    "name": "the name it is selected by",
    "Config": "its config dataclass",
    "capabilities": "what it runs and measures",
    "default_tolerance": "its bound on max_abs_error",
    "threat_model": "who holds what and who sees what",
}


def get(name: str) -> type[Backend]:
    """The backend class registered as `name`; ConfigError naming the choices, or what the class
    lacks of the contract (`backends/base.py`), otherwise."""
    modules = _modules()
    if name not in modules:
        raise ConfigError(f"backend={name} is unknown; choose one of: {', '.join(sorted(modules))}")
    cls = importlib.import_module(modules[name]).BACKEND
    missing = [f"`{attr}` ({why})" for attr, why in REQUIRED.items() if not hasattr(cls, attr)]
    if missing:
        raise ConfigError(f"backend {name}: {cls.__name__} lacks {', '.join(missing)}; see backends/base.py")
    return cls


def installed(plugins: bool = True) -> list[str]:
    """The backends whose libraries import on this machine."""
    return [n for n in names(plugins) if get(n).unavailable() is None]


__all__ = ["ALL", "Backend", "BackendConfig", "Capabilities", "Column", "get", "installed", "names"]
