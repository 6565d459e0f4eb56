"""Lattigo's CKKS as an `Engine`: server-side bootstrapping instead of the client's refresh.

Scales are tracked exactly as in SEAL's engine: a plaintext factor is encoded at the scale of the
prime its rescale drops (the product keeps the ciphertext's scale). Lattigo aligns the levels of
two operands itself (the lower wins), so the engine's level bookkeeping needs no explicit
modulus switch. A sparse bootstrap (fewer slots than N/2) leaves copies of its slots in the rest:
one 0/1 mask clears them, so every ciphertext keeps the full-slot meaning the packing relies on.
"""

from __future__ import annotations

import numpy as np

from backends.ckks.engine import Engine
from backends.lattigo import library
from backends.lattigo.params import Params

BOOT_MASK = "boot-mask"  # the plaintext key of the mask after a sparse bootstrap


class Handle:
    """A ciphertext in the library's heap, freed when Python drops it."""

    __slots__ = ("id", "lib")

    def __init__(self, lib, ct_id: int):
        self.lib, self.id = lib, ct_id

    def __del__(self):
        self.lib.DeleteCiphertext(self.id)


class LattigoEngine(Engine):
    """One scheme per process (the library's global): keys, rotation keys for `steps` and a
    bootstrapper for `params.boot_slots`, made here (the cell's key generation)."""

    def __init__(self, params: Params, steps: set[int], keyed: set[int] | None = None):
        super().__init__(params, bootstrap=True, keyed=keyed)
        self.lib = lib = library.load()
        lib.DeleteScheme()
        q, p = library.ints(params.log_q), library.ints(params.log_p)
        lib.NewScheme(params.log_n, *q, *p, params.scale_bits, params.hamming_weight, b"standard", b"", b"none")
        for step in (
            "NewKeyGenerator",
            "GenerateSecretKey",
            "GeneratePublicKey",
            "GenerateRelinearizationKey",
            "GenerateEvaluationKeys",
            "NewEncoder",
            "NewEncryptor",
            "NewDecryptor",
            "NewEvaluator",
        ):
            getattr(lib, step)()  # fmt: skip
        for step in sorted(steps):
            lib.AddRotationKey(step)
        self.primes = [float(q) for q in library.moduli(lib)]
        self.plain_cache: dict[tuple[object, int], int] = {}

    def make_bootstrapper(self) -> None:
        p = self.params
        self.lib.NewBootstrapper(*library.ints(p.boot_log_p), p.boot_slots)
        if p.sparse:
            mask = np.zeros(p.slots)
            mask[: p.boot_slots] = 1.0
            self.plain_cache[(BOOT_MASK, p.levels)] = self._encode(mask, p.levels, self.primes[p.levels])

    def preload(self, plains: dict[tuple[object, int], np.ndarray], budget: float = float("inf")) -> None:
        """Encode the server's plaintexts (weight diagonals, masks) once, at the levels the dry run
        used them, as far as `budget` bytes go: a deployed server does this when it loads the model.
        The others are encoded when used."""
        for (key, level), values in plains.items():
            budget -= self.params.n * (level + 1) * 8
            if budget < 0:
                return
            self.plain_cache[(key, level)] = self._encode(values, level, self.primes[level])

    def _encode(self, values, level: int, scale: float) -> int:
        ptr, size, _keep = library.floats(values)
        return self.lib.Encode(ptr, size, level, int(round(scale)))

    def _wrap(self, ct_id: int) -> Handle:
        return Handle(self.lib, ct_id)

    def _encrypt(self, values):
        pt = self._encode(values, self.params.levels, 2.0**self.params.scale_bits)
        ct = self._wrap(self.lib.Encrypt(pt))
        self.lib.DeletePlaintext(pt)
        return ct

    def _decrypt(self, raw):
        pt = self.lib.Decrypt(raw.id)
        out = library.decoded(self.lib, self.lib.Decode(pt))
        self.lib.DeletePlaintext(pt)
        return out

    def _mod_switch(self, raw, level):
        return raw  # the library aligns levels in every binary op

    def _add(self, a, b):
        return self._wrap(self.lib.AddCiphertextNew(a.id, b.id))

    def _sub(self, a, b):
        return self._wrap(self.lib.SubCiphertextNew(a.id, b.id))

    def _scale(self, raw) -> float:
        return float(self.lib.GetCiphertextScale(raw.id))

    def _add_plain(self, a, values, level):
        pt = self._encode(values, level, self._scale(a))
        out = self._wrap(self.lib.AddPlaintextNew(a.id, pt))
        self.lib.DeletePlaintext(pt)
        return out

    def _plain(self, values, level, key) -> tuple[int, bool]:
        """(plaintext, owned): a cached one is kept, a one-off is deleted after use."""
        cached = self.plain_cache.get((key, level)) if key is not None else None
        if cached is not None:
            return cached, False
        return self._encode(values, level, self.primes[level]), True

    def _dot_plain(self, raws, vectors, level, keys):
        acc, first = None, self._scale(raws[0])
        for raw, values, key in zip(raws, vectors, keys, strict=True):
            scale = self._scale(raw)
            if scale == first:
                pt, owned = self._plain(values, level, key)
            else:  # bring every term to the first one's scale
                pt, owned = self._encode(values, level, self.primes[level] * first / scale), True
            term = self.lib.MulPlaintextNew(raw.id, pt)
            if owned:
                self.lib.DeletePlaintext(pt)
            if acc is None:
                acc = self._wrap(term)
            else:
                self.lib.AddCiphertext(acc.id, term)
                self.lib.DeleteCiphertext(term)
        self.lib.Rescale(acc.id)
        return acc

    def _mul(self, a, b, level):
        out = self._wrap(self.lib.MulRelinCiphertextNew(a.id, b.id))
        self.lib.Rescale(out.id)
        return out

    def _rotate(self, a, steps):
        return self._wrap(self.lib.RotateNew(a.id, steps))

    def _bootstrap(self, raw):
        out = self._wrap(self.lib.Bootstrap(raw.id, self.params.boot_slots))
        if not self.params.sparse:
            return out
        return self._dot_plain([out], [None], self.params.levels, [BOOT_MASK])
