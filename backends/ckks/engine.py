"""Slot-vector CKKS engines: the level bookkeeping every library shares, and a dry numpy twin.

A library's engine (SEAL in `backends.tenseal.seal`, Lattigo in `backends.lattigo.engine`)
supplies the primitives `_*`; the dry twin runs the same cell without keys, so it finds the depth,
the rotation steps and the refreshes that the real run will have, before any key is made.

Levels: a fresh ciphertext has `levels` rescales left; every product (plain or cipher) uses one.
When an operand has none left it is refreshed, by one of two execution models (`bootstrap`):
- client-aided: it goes back to the client for decryption and re-encryption, counted in
  `refreshes`, with its bytes both ways and one round trip;
- non-interactive: the server bootstraps it (`bootstraps`), which leaves `params.boot_levels`.
`depth` on a ciphertext is the logical multiplicative depth, not reset by refreshes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = Any  # slots, levels, ct_bytes(level); boot_levels when bootstrapping


@dataclass
class Ct:
    raw: object
    level: int
    depth: int


@dataclass
class Stats:
    """Cumulative, deterministic counters."""

    depth: int = 0
    rotations: int = 0
    refreshes: int = 0
    bootstraps: int = 0
    round_trips: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    steps: Counter = field(default_factory=Counter)  # rotation step -> uses
    work: Counter = field(default_factory=Counter)  # (primitive, level) -> uses: a cost model's input


def signed_powers(steps: int) -> list[int]:
    """`steps` as a sum of signed powers of two with no two adjacent (non-adjacent form): the
    fewest rotations by power-of-two keys."""
    parts, bit = [], 0
    while steps:
        if steps & 1:
            digit = 2 - (steps & 3)  # +1 or -1
            parts.append(digit << bit)
            steps -= digit
        steps >>= 1
        bit += 1
    return parts


def power_of_two_steps(slots: int) -> set[int]:
    """Every signed power of two below the slot count: the keys any rotation can be composed of."""
    return {sign << i for i in range(slots.bit_length() - 1) for sign in (1, -1)} - {-slots // 2}


class Engine:
    """Level-aware slot-vector arithmetic; subclasses supply the primitives `_*`."""

    def __init__(self, params: Params, bootstrap: bool = False, keyed: set[int] | None = None):
        self.params, self.bootstrap, self.keyed = params, bootstrap, keyed
        self.slots = params.slots
        self.stats = Stats()
        self._refreshed: dict[int, tuple[Ct, Ct]] = {}
        self.depth_total = 0
        self.plains: dict[tuple[object, int], np.ndarray] = {}  # keyed plaintexts used, by level

    # client side
    def encrypt(self, values: np.ndarray, depth: int = 0) -> Ct:
        self.stats.bytes_up += self.params.ct_bytes(self.params.levels)
        self.stats.work["encrypt", self.params.levels] += 1
        return Ct(self._encrypt(self._pad(values)), self.params.levels, depth)

    def decrypt(self, ct: Ct) -> np.ndarray:
        self.stats.bytes_down += self.params.ct_bytes(ct.level)
        self.stats.work["decrypt", ct.level] += 1
        return self._decrypt(ct.raw)

    def refresh(self, ct: Ct) -> Ct:
        """Bootstrapped by the server, or client-aided (down at its level, decrypt, re-encrypt at
        the top, up). A ciphertext is refreshed once however many products then use it."""
        done = self._refreshed.get(id(ct))
        if done is not None and done[0] is ct:
            return done[1]
        if self.bootstrap:
            self.stats.bootstraps += 1
            self.stats.work["bootstrap", ct.level] += 1
            fresh = Ct(self._bootstrap(ct.raw), self.params.boot_levels, ct.depth)
        else:
            self.stats.refreshes += 1
            self.stats.round_trips += 1
            fresh = self.encrypt(self.decrypt(ct), ct.depth)
        self._refreshed[id(ct)] = (ct, fresh)
        return fresh

    def ensure(self, ct: Ct, levels: int) -> Ct:
        """Refresh now if fewer than `levels` are left: before fanning one ciphertext out into
        many products (rotated copies would each need their own refresh)."""
        return self.refresh(ct) if ct.level < levels else ct

    def new_run(self) -> None:
        """A new online run: fresh inputs start at depth 0 again; `depth_total` keeps the
        counter cumulative (the harness takes per-op deltas of it)."""
        self._refreshed.clear()
        self.depth_total += self.stats.depth
        self.stats.depth = 0

    # server side
    def _pad(self, values) -> np.ndarray:
        out = np.zeros(self.slots)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        out[: values.size] = values
        return out

    def _at(self, ct: Ct, level: int) -> Ct:
        if ct.level == level:
            return ct
        return Ct(self._mod_switch(ct.raw, level), level, ct.depth)

    def _align(self, a: Ct, b: Ct) -> tuple[Ct, Ct]:
        low = min(a.level, b.level)
        return self._at(a, low), self._at(b, low)

    def _ready(self, ct: Ct) -> Ct:
        return self.refresh(ct) if ct.level < 1 else ct

    def _made(self, raw, level: int, depth: int) -> Ct:
        self.stats.depth = max(self.stats.depth, depth)
        return Ct(raw, level, depth)

    def add(self, a: Ct, b: Ct) -> Ct:
        a, b = self._align(a, b)
        self.stats.work["add", a.level] += 1
        return Ct(self._add(a.raw, b.raw), a.level, max(a.depth, b.depth))

    def sub(self, a: Ct, b: Ct) -> Ct:
        a, b = self._align(a, b)
        self.stats.work["add", a.level] += 1
        return Ct(self._sub(a.raw, b.raw), a.level, max(a.depth, b.depth))

    def add_plain(self, a: Ct, values: np.ndarray) -> Ct:
        return Ct(self._add_plain(a.raw, self._pad(values), a.level), a.level, a.depth)

    def mul_plain(self, a: Ct, values: np.ndarray, key: object = None) -> Ct:
        return self.dot_plain([a], [values], [key])

    def dot_plain(self, cts: list[Ct], vectors: list, keys: list) -> Ct:
        """sum_i cts[i] * vectors[i] with one rescale (`keys` name cacheable plaintexts: weights)."""
        cts = [self._ready(c) for c in cts]
        low = min(c.level for c in cts)
        cts = [self._at(c, low) for c in cts]
        self.stats.work["mul_plain", low] += len(cts)
        self.stats.work["rescale", low] += 1
        raw = self._dot_plain([c.raw for c in cts], [self._pad(v) for v in vectors], low, keys)
        return self._made(raw, low - 1, max(c.depth for c in cts) + 1)

    def mul(self, a: Ct, b: Ct) -> Ct:
        a, b = self._align(self._ready(a), self._ready(b))
        self.stats.work["mul", a.level] += 1
        return self._made(self._mul(a.raw, b.raw, a.level), a.level - 1, max(a.depth, b.depth) + 1)

    def rotate(self, a: Ct, steps: int) -> Ct:
        """Left rotation by `steps` (negative: right), cyclic over all slots. With `keyed` set,
        a step without a key is composed of keyed signed powers of two (its non-adjacent form)."""
        steps %= self.slots
        if not steps:
            return a
        if steps > self.slots // 2:
            steps -= self.slots
        parts = [steps] if self.keyed is None or steps in self.keyed else signed_powers(steps)
        for part in parts:
            part = (
                part - self.slots if part > self.slots // 2 else part + self.slots if part <= -self.slots // 2 else part
            )
            self.stats.rotations += 1
            self.stats.work["rotate", a.level] += 1
            self.stats.steps[part] += 1
            a = Ct(self._rotate(a.raw, part), a.level, a.depth)
        return a

    def _encrypt(self, values): ...
    def _decrypt(self, raw): ...
    def _mod_switch(self, raw, level): ...
    def _add(self, a, b): ...
    def _sub(self, a, b): ...
    def _add_plain(self, a, values, level): ...
    def _dot_plain(self, raws, vectors, level, keys): ...
    def _mul(self, a, b, level): ...
    def _rotate(self, a, steps): ...
    def _bootstrap(self, raw): ...


class DryEngine(Engine):
    """Exact numpy twin: same levels, rotations and refreshes, no noise, no keys. `boot_extent`:
    the slots the bootstrapped ciphertexts use (a sparse bootstrapper must cover them)."""

    boot_extent = 0

    def _encrypt(self, values):
        return values.copy()

    def _decrypt(self, raw):
        return raw.copy()

    def _mod_switch(self, raw, level):
        return raw

    def _add(self, a, b):
        return a + b

    def _sub(self, a, b):
        return a - b

    def _add_plain(self, a, values, level):
        return a + values

    def _dot_plain(self, raws, vectors, level, keys):
        for values, key in zip(vectors, keys, strict=True):
            if key is not None:
                self.plains[(key, level)] = values
        return sum(r * v for r, v in zip(raws, vectors, strict=True))

    def _mul(self, a, b, level):
        return a * b

    def _rotate(self, a, steps):
        return np.roll(a, -steps)

    def _bootstrap(self, raw):
        used = np.flatnonzero(raw)
        self.boot_extent = max(self.boot_extent, int(used[-1]) + 1 if used.size else 0)
        return raw.copy()
