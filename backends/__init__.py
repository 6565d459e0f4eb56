"""Backends behind one interface; each module here defining `BACKEND` is one, found by name."""

from __future__ import annotations

import importlib
import pkgutil

from backends.base import ALL, Backend, BackendConfig, Capabilities
from workloads.base import ConfigError

_NOT_BACKENDS = {"base"}


def names() -> list[str]:
    """Every backend module, whether or not its library is installed."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_BACKENDS and not m.name.startswith("_"))


def get(name: str) -> type[Backend]:
    """The backend class registered as `name`; ConfigError naming the choices otherwise."""
    if name not in names():
        raise ConfigError(f"backend={name} is unknown; choose one of: {', '.join(names())}")
    return importlib.import_module(f"backends.{name}").BACKEND


def installed() -> list[str]:
    """The backends whose libraries import on this machine."""
    return [n for n in names() if get(n).unavailable() is None]


__all__ = ["ALL", "Backend", "BackendConfig", "Capabilities", "get", "installed", "names"]
