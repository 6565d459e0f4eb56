"""Every key of a composed config is one a dataclass declares: `+`, `++` and `~` cannot slip
a typo past the schema (hydra's `+` appends keys to structured configs without a check)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf

import backends
from workloads.base import ConfigError


def unknown_key(key: str, known: list[str], groups: list[str] = ()) -> str:
    """The one-line refusal of `key`, with the closest known key and its parent's keys."""
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, [*known, *groups], n=1, cutoff=0.6)
    hint = f" (did you mean {'.'.join(filter(None, (parent, close[0])))}?)" if close else ""
    listed = f"{parent or 'top-level'} keys: {', '.join(known)}"
    if groups:
        listed += f"; config groups: {', '.join(groups)}"
    return f"{key} is not a known key{hint}; {listed}"


def declared(node: DictConfig, path: str) -> list[str] | None:
    """The keys `node` may have, or None for a free-form dict (networks, backend.quick)."""
    if path == "backend.quick":
        return backends.names()
    parent, _, leaf = path.rpartition(".")
    if parent == "backend.quick":
        return [f.name for f in dataclasses.fields(backends.get(leaf).Config)]
    kind = OmegaConf.get_type(node)
    return [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None


def undeclared(node: DictConfig, path: str = "") -> Iterator[tuple[str, list[str]]]:
    """(full key, the keys its parent declares) for each key no dataclass declares."""
    known = declared(node, path)
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if known is not None and key not in known:
            yield full, known
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from undeclared(child, full)


def check_declared(cfg: DictConfig, groups: list[str]) -> None:
    """Refuse the first key of `cfg` that no dataclass declares (ConfigError, one line)."""
    for key, known in undeclared(cfg):
        raise ConfigError(unknown_key(key, known, groups if "." not in key else ()))


def check_deletions(cfg: DictConfig, keys: list[str], groups: list[str]) -> None:
    """`~key` may drop an entry of a free-form dict (`~networks.wan`), never a declared field:
    the app reads every one of those. `cfg` is composed without the deletions."""
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        if leaf not in known:
            raise ConfigError(unknown_key(key, known, groups if not parent else ()))
        if declared(node, parent) is not None or leaf in groups:
            raise ConfigError(f"~{key}: encbench needs {key}; set a value instead ({key}=...)")
