"""`tenseal`: CKKS (SEAL through TenSEAL): the client encrypts, the server computes with its
plaintext weights on ciphertexts, the client decrypts.

Packing (`backends.ckks.tensor`, shared with `lattigo`: details and rotation counts there): rows
in slot blocks, heads in column windows, matrices wider than a ciphertext tiled over several.
`linear` is a baby-step giant-step diagonal product, `qk_matmul` / `av_matmul` are seq shifted
ciphertext x ciphertext products with scores in a diagonal layout, row sums are rotate-and-add,
Llama's rotary embedding is two rotations and one plaintext product, its grouped-query K/V heads
masked copies rotated into place (`backends.ckks.heads`).

Parameters: a dry run of the cell on a numpy twin of the engine (`DryEngine`) gives its depth and
the rotation steps; N is the smallest ring holding the slots with that many 128-bit-secure levels
(up to `max_poly_modulus_degree`); deeper cells get as many levels as that N holds, and as its keys
allow in half of the memory limit (`max_memory_gb`), and refresh ciphertexts through the client when the chain runs
out (counted in `refreshes`, their bytes in `comm_bytes_*`, their round trips in `rounds`). Galois
keys are made for exactly the steps used.
Explicit `poly_modulus_degree` + `coeff_mod_bit_sizes` override the choice; either way, parameters
under 128 bits (HE standard table, `params`) are refused unless `allow_insecure=true`, and
rows then carry `insecure=true`.

Sizes (`key_bytes`, `ct_bytes`, `comm_bytes`) are SEAL's uncompressed payload sizes from the
parameters (deterministic; formulas in `params`), not the zstd output, whose size varies.

Accuracy: CKKS noise at scale 2^40 is ~1e-6..1e-5 on these outputs (16-19 bits below their largest
value, reported as `output_precision_bits`); the approximations dominate where they are used (LayerNorm's
rsqrt: 3e-4). `default_tolerance` 5e-3 is ~10x the worst error seen; inputs outside the stated
ranges (exp_*, recip_*, rsqrt_*, recorded per row) fail it loudly rather than silently.
Not supported (skipped): relu softmax / GELU / SiLU, erf GELU and exact SiLU (no polynomial form
here), lora_update (transposes of private activations), cells whose packing does not fit the largest
ring (`packing_why_not`).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any

from backends.base import (
    ALL,
    APPROX,
    COMM_BYTES,
    COMM_BYTES_SPLIT,
    CT_BYTES,
    DEPTH,
    KEY_BYTES,
    KEYGEN_S,
    ROUNDS,
    SECURITY_BITS,
    Capabilities,
    Column,
)
from backends.ckks.backend import COLUMNS as CKKS_COLUMNS
from backends.ckks.backend import FINETUNE_WHY, SOFTMAX, CkksConfig, PackedCkks, cell_shape, validate_approx
from backends.ckks.tensor import pow2
from backends.tenseal import params as cp
from backends.tenseal.seal import translate
from workloads.base import ConfigError

COLUMNS = (
    DEPTH, ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, CT_BYTES, KEY_BYTES, SECURITY_BITS, KEYGEN_S, APPROX, *CKKS_COLUMNS,
    Column("refreshes", "count", "op", "client-aided refreshes: decrypt and re-encrypt at the client when the "
           "modulus chain runs out (one round trip each)", True),
    Column("galois_keys", "count", "cell", "rotation keys made (one per step used)", True, "size"),
    Column("galois_key_bytes", "bytes", "cell", "their size, part of `key_bytes`", True, "size"),
    Column("poly_modulus_degree", "count", "cell", "CKKS ring degree N (N/2 slots)", True, "parameter"),
    Column("coeff_mod_bit_sizes", "text", "cell", "the modulus chain's primes, in bits", True, "parameter"),
    Column("coeff_mod_bits", "bits", "cell", "the whole modulus, in bits", True, "parameter"),
    Column("scale_bits", "bits", "cell", "CKKS scale", kind="parameter"),
    Column("param_policy", "text", "cell", "how the parameters were chosen: `small`, `depth` or `explicit`",
           kind="parameter"),
    Column("encode_weights_s", "s", "cell", "encoding the weights as plaintexts, part of `setup_s`", kind="setup"),
)  # fmt: skip


@dataclass
class TensealConfig(CkksConfig):
    name: str = "tenseal"
    poly_modulus_degree: int | None = None  # None: chosen from the cell's depth
    coeff_mod_bit_sizes: list[int] | None = None  # with poly_modulus_degree: [first, scale..., special]
    edge_bits: int = 60  # first and special primes when chosen from depth
    max_poly_modulus_degree: int = 32768
    param_policy: str = "small"  # small: smallest ring, refresh often; depth: a ring whose chain holds the depth


class TensealBackend(PackedCkks):
    name = "tenseal"
    Config = TensealConfig
    capabilities = Capabilities(
        workloads={
            "attention_head": {"softmax": SOFTMAX},
            "layernorm": ALL,
            "block": {"softmax": SOFTMAX, "gelu": ("poly", "quad")},
            "llama_block": {"softmax": SOFTMAX, "silu": ("poly", "quad")},
        },
        unsupported={"finetune": FINETUNE_WHY},
        columns=COLUMNS,
    )
    default_tolerance = 5e-3  # ~10x the worst error seen (4.3e-4, block: the rsqrt approximation); noise ~1e-5
    libraries = ("tenseal",)
    threat_model = (
        "client holds the secret key and encrypts its input; semi-honest server holds plaintext weights "
        "and sees only ciphertexts (and refreshed ciphertexts, re-encrypted by the client)"
    )
    _errors = staticmethod(translate)

    @classmethod
    def unavailable(cls):
        try:
            import tenseal.sealapi  # noqa: F401
        except ImportError as exc:
            return f"tenseal is not installed ({exc})"
        return None

    @classmethod
    def validate(cls, cfg: TensealConfig) -> None:
        if (cfg.poly_modulus_degree is None) != (cfg.coeff_mod_bit_sizes is None):
            raise ConfigError(
                "backend.poly_modulus_degree and backend.coeff_mod_bit_sizes go together: set both or neither"
            )
        if not 20 <= cfg.scale_bits < cfg.edge_bits <= 60:
            raise ConfigError(
                f"backend.scale_bits={cfg.scale_bits}, edge_bits={cfg.edge_bits}: need 20 <= scale < edge <= 60"
            )
        if cfg.max_poly_modulus_degree not in cp.SECURITY_TABLE:
            raise ConfigError(
                f"backend.max_poly_modulus_degree must be one of {', '.join(map(str, cp.SECURITY_TABLE))}"
            )
        if cfg.poly_modulus_degree is not None:
            params = cp.explicit(cfg.poly_modulus_degree, list(cfg.coeff_mod_bit_sizes), cfg.scale_bits)
            cp.check_security(params, cfg.allow_insecure)
        validate_approx(cfg)
        if cfg.param_policy not in cp.POLICIES:
            raise ConfigError(f"backend.param_policy={cfg.param_policy}; allowed: {', '.join(cp.POLICIES)}")

    def max_slots(self) -> int:
        return (self.cfg.poly_modulus_degree or self.cfg.max_poly_modulus_degree) // 2

    def _params(self, depth: int, slots: int) -> cp.Params:
        c = self.cfg
        if c.poly_modulus_degree is not None:
            params = cp.explicit(c.poly_modulus_degree, list(c.coeff_mod_bit_sizes), c.scale_bits)
            if params.slots < slots:
                raise ConfigError(
                    f"backend.poly_modulus_degree={params.poly_modulus_degree} holds {params.slots} slots, the cell "
                    f"needs {slots}; raise it or leave it unset"
                )
        else:
            params = cp.choose(depth, slots, c.scale_bits, c.edge_bits, c.max_poly_modulus_degree, c.param_policy)
        cp.check_security(params, c.allow_insecure)
        return params

    def setup(self, workload, weights):
        from backends.tenseal.seal import SealEngine

        _, block, slots = cell_shape(workload)
        slots = min(slots, self.max_slots())  # wider cells tile over the largest ciphertexts
        probe = cp.Params(
            pow2(2 * slots), cp.chain(10_000, self.cfg.scale_bits, self.cfg.edge_bits), self.cfg.scale_bits
        )
        depth = self.dry(probe, workload, weights).stats.depth
        params = self._params(depth, slots)
        dry = self.dry(params, workload, weights)
        shorter = self._keys_within_memory(params, len(dry.stats.steps))
        if shorter != params:
            params, dry = shorter, self.dry(shorter, workload, weights)
        steps = dry.stats.steps
        plains = sum(params.ct_bytes(level) // 2 for _, level in dry.plains)
        self.check_memory(sum(params.key_bytes(len(steps)).values()) + plains)
        try:
            start = perf_counter()
            engine = SealEngine(params, steps, self.cfg.allow_insecure)
            keygen_s, start = perf_counter() - start, perf_counter()
            engine.preload(dry.plains)
        except (ValueError, RuntimeError) as exc:
            raise translate(exc) from exc
        self.info = self._describe(params, depth, len(steps), block, workload)
        self._start(engine, workload)
        self.info.update(keygen_s=keygen_s, encode_weights_s=perf_counter() - start)
        return self._weights(weights)

    def _keys_within_memory(self, params: cp.Params, n_steps: int) -> cp.Params:
        """A chosen chain shortened until its keys take at most half of `max_memory_gb`: key-switching
        keys grow with the square of the chain, and a large ring with ~100 rotation steps would
        otherwise need tens of GB; the levels given up become client-aided refreshes."""
        budget = self.memory_limit() / 2
        while (
            self.cfg.poly_modulus_degree is None
            and params.levels > 1
            and sum(params.key_bytes(n_steps).values()) > budget
        ):
            params = cp.Params(
                params.poly_modulus_degree,
                cp.chain(params.levels - 1, params.scale_bits, self.cfg.edge_bits),
                params.scale_bits,
            )
        return params

    def _describe(self, params, depth, n_steps, block, workload) -> dict[str, Any]:
        c, keys = self.cfg, params.key_bytes(n_steps)
        return {
            "key_bytes": sum(keys.values()),
            "galois_key_bytes": keys["galois"],
            "galois_keys": n_steps,
            "security_bits": params.security_bits,
            "poly_modulus_degree": params.poly_modulus_degree,
            "coeff_mod_bits": params.total_bits,
            "coeff_mod_bit_sizes": ",".join(map(str, params.coeff_mod_bit_sizes)),
            "scale_bits": params.scale_bits,
            "levels": params.levels,
            "param_policy": c.param_policy if c.poly_modulus_degree is None else "explicit",
            "cell_depth": depth,
            "slot_block": block,
            "approx": self.approx_text(workload),
        }


BACKEND = TensealBackend
