"""CKKS parameters: the HE standard's security table, depth -> parameters, and serialized sizes.

Security: homomorphicencryption.org's standard (Albrecht et al. 2018), table for uniform ternary
secrets, classical security: the largest total coefficient modulus (bits, the special prime
included) for each ring dimension at 128 / 192 / 256 bits. Below the 128-bit row the table says
nothing, so such parameters report `security_bits = 0` and are refused unless allowed.

Sizes are SEAL's *uncompressed* payload, 8 bytes per residue: deterministic, unlike SEAL's default
zstd output, whose size depends on the random data. The formulas (tested against real
serializations, which they bound from above by 0-25%):
- a ciphertext with k primes left: 2 polys * N * k * 8;
- public key: 2 * N * K * 8 with K primes in the key modulus (special prime included);
- a key-switching key (relinearization, or one Galois element): (K - 1) * 2 * N * K * 8.
"""

from __future__ import annotations

from dataclasses import dataclass

from workloads.base import ConfigError

# poly_modulus_degree -> max total log2(q) for 128 / 192 / 256-bit classical security.
SECURITY_TABLE: dict[int, tuple[int, int, int]] = {
    1024: (27, 19, 14),
    2048: (54, 37, 29),
    4096: (109, 75, 58),
    8192: (218, 152, 118),
    16384: (438, 305, 237),
    32768: (881, 611, 476),
}
LEVELS = (128, 192, 256)


def security_bits(n: int, total_bits: int) -> int:
    """Classical security (128, 192 or 256) of (N, total modulus bits); 0 if below 128."""
    if n not in SECURITY_TABLE:
        raise ConfigError(f"backend.poly_modulus_degree={n} must be one of {', '.join(map(str, SECURITY_TABLE))}")
    best = 0
    for bits, limit in zip(LEVELS, SECURITY_TABLE[n], strict=True):
        if total_bits <= limit:
            best = bits
    return best


@dataclass(frozen=True)
class Params:
    """One CKKS parameter set; `levels` is how many rescales a fresh ciphertext allows."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def levels(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def security_bits(self) -> int:
        return security_bits(self.poly_modulus_degree, self.total_bits)

    def ct_bytes(self, level: int) -> int:
        """A ciphertext with `level` rescales left (level + 1 primes)."""
        return 2 * self.poly_modulus_degree * (level + 1) * 8

    def key_bytes(self, galois_steps: int) -> dict[str, int]:
        n, k = self.poly_modulus_degree, len(self.coeff_mod_bit_sizes)
        switch_key = (k - 1) * 2 * n * k * 8
        return {"public": 2 * n * k * 8, "relin": switch_key, "galois": galois_steps * switch_key}


def chain(levels: int, scale_bits: int, edge_bits: int) -> tuple[int, ...]:
    return (edge_bits, *([scale_bits] * levels), edge_bits)


def max_levels(n: int, scale_bits: int, edge_bits: int) -> int:
    """The most levels N allows at 128-bit security with this scale."""
    return max((SECURITY_TABLE[n][0] - 2 * edge_bits) // scale_bits, 0)


POLICIES = ("small", "depth")


def choose(depth: int, slots: int, scale_bits: int, edge_bits: int, max_n: int, policy: str = "depth") -> Params:
    """`depth`: the smallest secure N holding `slots` with `depth` levels; failing that, the largest
    allowed N with as many levels as it holds securely (the rest is client-aided refresh).
    `small`: the smallest N holding the slots, with min(depth, what it holds) levels: each op is
    ~10x cheaper at N=8192 than at 16384 here, paid for in refreshes (round trips)."""
    fits = [n for n in SECURITY_TABLE if n // 2 >= slots and n <= max_n and max_levels(n, scale_bits, edge_bits) >= 1]
    if not fits:
        raise ConfigError(
            f"no poly_modulus_degree <= backend.max_poly_modulus_degree={max_n} holds {slots} slots with a level at "
            f"128 bits; raise backend.max_poly_modulus_degree or shrink workload.seq_len / d_model"
        )
    if policy == "small":
        n = fits[0]
        return Params(
            n, chain(max(min(depth, max_levels(n, scale_bits, edge_bits)), 1), scale_bits, edge_bits), scale_bits
        )
    for n in fits:
        if max_levels(n, scale_bits, edge_bits) >= depth:
            return Params(n, chain(max(depth, 1), scale_bits, edge_bits), scale_bits)
    n = fits[-1]
    return Params(n, chain(max_levels(n, scale_bits, edge_bits), scale_bits, edge_bits), scale_bits)


def explicit(n: int, coeff_mod_bit_sizes: list[int], scale_bits: int) -> Params:
    """Given parameters, checked for shape (not security: see `check_security`)."""
    if len(coeff_mod_bit_sizes) < 3:
        raise ConfigError("backend.coeff_mod_bit_sizes needs >= 3 primes: [first, scale..., special]")
    if any(not 20 <= b <= 60 for b in coeff_mod_bit_sizes):
        raise ConfigError("backend.coeff_mod_bit_sizes: each prime must be 20..60 bits (SEAL's limit)")
    if coeff_mod_bit_sizes[0] <= scale_bits:
        raise ConfigError(
            f"backend.coeff_mod_bit_sizes[0]={coeff_mod_bit_sizes[0]} must exceed backend.scale_bits={scale_bits}"
        )
    security_bits(n, 0)  # N is a table entry
    return Params(n, tuple(coeff_mod_bit_sizes), scale_bits)


def check_security(params: Params, allow_insecure: bool) -> None:
    """ConfigError for parameters under 128 bits unless explicitly allowed."""
    if params.security_bits < 128 and not allow_insecure:
        limit = SECURITY_TABLE[params.poly_modulus_degree][0]
        raise ConfigError(
            f"CKKS parameters N={params.poly_modulus_degree}, {params.total_bits} modulus bits are under 128-bit "
            f"security (limit {limit} bits): lower backend.coeff_mod_bit_sizes, raise backend.poly_modulus_degree, "
            f"or set backend.allow_insecure=true"
        )
