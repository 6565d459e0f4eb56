"""Lattigo CKKS parameters with bootstrapping: the default set, its security, sizes, memory.

Default: Lattigo v6's documented bootstrapping set `N16QP1546H192H32`: LogN 16 (2^15 slots),
residual chain LogQ 60 + 9 x 40, key-switching LogP 3 x 61, a sparse ternary secret of Hamming
weight 192, scale 2^40, and the bootstrapping circuit's own moduli (LogP 4 x 61, Lattigo's
defaults for the rest): log QP = 1546 bits, which Lattigo documents as 128-bit secure. A sparse
secret is outside the HE standard's uniform-ternary table, so no other set gets a security figure
here: any other ring, chain or weight reports `security_bits = 0` and is refused unless
`allow_insecure` (the tests' LogN 13 ring is such a set).

Sizes, 8 bytes per residue (Lattigo's uncompressed binary form): a ciphertext at level l is
2 x N x (l + 1) x 8; a key-switching key (relinearization, one rotation) is
dnum x 2 x N x (|Q| + |P|) x 8 with dnum = ceil(|Q| / |P|) digits. Bootstrapping keys are not
exposed by the library's bindings: their size is measured as the resident memory their generation
adds (`boot_key_bytes`, not deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workloads.base import ConfigError

DEFAULT_NAME = "N16QP1546H192H32"
DEFAULT = dict(log_n=16, log_q=(60,) + (40,) * 9, log_p=(61,) * 3, boot_log_p=(61,) * 4, hamming_weight=192)
SOURCE = f"Lattigo v6 documented default bootstrapping set {DEFAULT_NAME} (log QP 1546, H=192): 128 bits"


@dataclass(frozen=True)
class Params:
    log_n: int
    log_q: tuple[int, ...]
    log_p: tuple[int, ...]
    boot_log_p: tuple[int, ...]
    hamming_weight: int
    scale_bits: int
    boot_slots: int  # slots the bootstrapper refreshes (sparse below N/2)

    @property
    def n(self) -> int:
        return 1 << self.log_n

    @property
    def slots(self) -> int:
        return self.n // 2

    @property
    def levels(self) -> int:
        """Rescales a fresh ciphertext allows."""
        return len(self.log_q) - 1

    @property
    def sparse(self) -> bool:
        return self.boot_slots < self.slots

    @property
    def boot_levels(self) -> int:
        """Levels left after a bootstrap: the residual top, less the mask that clears the copies a
        sparse bootstrap leaves outside its slots."""
        return self.levels - self.sparse

    @property
    def name(self) -> str:
        return DEFAULT_NAME if self.is_default else f"N{self.log_n}H{self.hamming_weight}"

    @property
    def is_default(self) -> bool:
        mine = dict(log_n=self.log_n, log_q=self.log_q, log_p=self.log_p, boot_log_p=self.boot_log_p,
                    hamming_weight=self.hamming_weight)  # fmt: skip
        return mine == DEFAULT and self.scale_bits == 40

    @property
    def security_bits(self) -> int:
        return 128 if self.is_default else 0

    def ct_bytes(self, level: int) -> int:
        return 2 * self.n * (level + 1) * 8

    def switch_key_bytes(self) -> int:
        q, p = len(self.log_q), len(self.log_p)
        return math.ceil(q / p) * 2 * self.n * (q + p) * 8


def make(cfg, boot_slots: int) -> Params:
    return Params(cfg.log_n, tuple(cfg.log_q), tuple(cfg.log_p), tuple(cfg.boot_log_p), cfg.hamming_weight,
                  cfg.scale_bits, boot_slots)  # fmt: skip


def validate(cfg) -> None:
    """Checks the library would otherwise answer with a panic that ends the process."""
    if not 12 <= cfg.log_n <= 16:
        raise ConfigError(f"backend.log_n={cfg.log_n}: use 12..16 (16 is the secure default)")
    if len(cfg.log_q) < 2 or not cfg.log_p or not cfg.boot_log_p:
        raise ConfigError("backend.log_q needs >= 2 primes, backend.log_p and backend.boot_log_p >= 1 each")
    if not all(20 <= b <= 61 for b in (*cfg.log_q, *cfg.log_p, *cfg.boot_log_p)):
        raise ConfigError("backend.log_q / log_p / boot_log_p: every prime between 20 and 61 bits")
    if not 20 <= cfg.scale_bits <= min(cfg.log_q[1:]):
        raise ConfigError(f"backend.scale_bits={cfg.scale_bits} must be >= 20 and <= the chain's primes")
    if cfg.log_q[0] < cfg.scale_bits + 10:
        raise ConfigError(
            f"backend.log_q[0]={cfg.log_q[0]} must exceed scale_bits by >= 10 bits (the output's headroom)"
        )
    if not 0 < cfg.hamming_weight <= (1 << cfg.log_n):
        raise ConfigError(f"backend.hamming_weight={cfg.hamming_weight} must be in 1..N")


def check_security(params: Params, allow_insecure: bool) -> None:
    if params.security_bits < 128 and not allow_insecure:
        raise ConfigError(
            f"lattigo parameters {params.name} (log_n={params.log_n}, log_q={list(params.log_q)}) have no "
            f"documented 128-bit security (only {DEFAULT_NAME} does): use the defaults, or set "
            "backend.allow_insecure=true for a test-only run"
        )
