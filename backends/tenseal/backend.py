"""`tenseal`: CKKS (SEAL through TenSEAL): the client encrypts, the server computes with its
plaintext weights on ciphertexts, the client decrypts.

Packing (details and rotation counts in `tensor`): one ciphertext per matrix, rows in slot
blocks and heads in column windows. `linear` is a baby-step giant-step diagonal product (rotations
~2 sqrt(d_in), whatever seq and d_out), `qk_matmul` / `av_matmul` are seq shifted ciphertext x
ciphertext products with scores in a diagonal layout, row sums are rotate-and-add.

Parameters: a dry run of the cell on a numpy twin of the engine (`DryEngine`) gives its depth and
the rotation steps; N is the smallest ring holding the slots with that many 128-bit-secure levels
(up to `max_poly_modulus_degree`); deeper cells get as many levels as that N holds and refresh
ciphertexts through the client when the chain runs out (counted in `refreshes`, their bytes in
`comm_bytes_*`, their round trips in `rounds`). Galois keys are made for exactly the steps used.
Explicit `poly_modulus_degree` + `coeff_mod_bit_sizes` override the choice; either way, parameters
under 128 bits (HE standard table, `params`) are refused unless `allow_insecure=true`, and
rows then carry `insecure=true`.

Sizes (`key_bytes`, `ct_bytes`, `comm_bytes`) are SEAL's uncompressed payload sizes from the
parameters (deterministic; formulas in `params`), not the zstd output, whose size varies.

Accuracy: CKKS noise at scale 2^40 is ~1e-6..1e-5 on these outputs (16-19 bits below their largest
value, reported as `output_precision_bits`); the approximations dominate where they are used (LayerNorm's
rsqrt: 3e-4). `default_tolerance` 5e-3 is ~10x the worst error seen; inputs outside the stated
ranges (exp_*, recip_*, rsqrt_*, recorded per row) fail it loudly rather than silently.
Not supported (skipped): relu softmax / GELU and erf GELU (no polynomial form here), lora_update
(transposes of private activations), multi-head layouts with seq_len > head_dim or head_dim not a
power of two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch

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
    Backend,
    BackendConfig,
    Capabilities,
    Column,
    map_values,
)
from backends.tenseal import approx
from backends.tenseal import params as cp
from backends.tenseal.engine import DryEngine, Engine, translate
from backends.tenseal.ops import CkksOps
from backends.tenseal.tensor import Packer, Weight, pow2
from workloads.base import ConfigError, Workload, run_op

SOFTMAX = ("exact", "power", "gaussian", "quad2")
# 1/x input range (the softmax row sums) per variant, for seq_len <= 8; the upper end scales with
# seq_len / 8. Row sums seen in the seeded workloads (seq 4-32, d_model 16-256): exact 0.45-72,
# power 1e-12-627 (a row whose only score is near 0: below any usable range), quad2 17-916.
# Below `lo` the result loses accuracy; above 2 * hi Goldschmidt diverges.
RECIP_RANGES = {"exact": (0.25, 32.0), "power": (0.1, 512.0), "quad2": (8.0, 512.0), "gaussian": (0.25, 32.0)}
COLUMNS = (
    DEPTH, ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, CT_BYTES, KEY_BYTES, SECURITY_BITS, KEYGEN_S, APPROX,
    Column("rotations", "count", "op", "Galois rotations", True),
    Column("refreshes", "count", "op", "client-aided refreshes: decrypt and re-encrypt at the client when the "
           "modulus chain runs out (one round trip each)", True),
    Column("galois_keys", "count", "cell", "rotation keys made (one per step used)", True, "size"),
    Column("galois_key_bytes", "bytes", "cell", "their size, part of `key_bytes`", True, "size"),
    Column("poly_modulus_degree", "count", "cell", "CKKS ring degree N (N/2 slots)", True, "parameter"),
    Column("coeff_mod_bit_sizes", "text", "cell", "the modulus chain's primes, in bits", True, "parameter"),
    Column("coeff_mod_bits", "bits", "cell", "the whole modulus, in bits", True, "parameter"),
    Column("scale_bits", "bits", "cell", "CKKS scale", kind="parameter"),
    Column("levels", "levels", "cell", "rescales a fresh ciphertext allows before a refresh", True, "parameter"),
    Column("cell_depth", "levels", "cell", "multiplicative depth of the whole cell (dry run)", True, "parameter"),
    Column("slot_block", "count", "cell", "slots per matrix row in the packing", True, "parameter"),
    Column("param_policy", "text", "cell", "how the parameters were chosen: `small`, `depth` or `explicit`",
           kind="parameter"),
    Column("encode_weights_s", "s", "cell", "encoding the weights as plaintexts, part of `setup_s`", kind="setup"),
    Column("output_precision_bits", "bits", "cell", "observed precision of the output: log2(max |reference| / "
           "max error)", kind="accuracy"),
)  # fmt: skip


@dataclass
class TensealConfig(BackendConfig):
    name: str = "tenseal"
    poly_modulus_degree: int | None = None  # None: chosen from the cell's depth
    coeff_mod_bit_sizes: list[int] | None = None  # with poly_modulus_degree: [first, scale..., special]
    scale_bits: int = 40
    edge_bits: int = 60  # first and special primes when chosen from depth
    max_poly_modulus_degree: int = 16384
    param_policy: str = "small"  # small: smallest ring, refresh often; depth: a ring whose chain holds the depth
    allow_insecure: bool = False
    exp_lo: float = -40.0  # exp input range: scores + the -30 causal mask, gaussian exponents
    exp_hi: float = 4.0
    exp_degree: int = 7
    exp_squarings: int = 5
    recip_lo: float | None = None  # None: per softmax variant (RECIP_RANGES)
    recip_hi: float | None = None
    recip_bits: int = 12  # Goldschmidt factors for 2^-recip_bits relative error at the range ends
    rsqrt_lo: float = 0.25  # LayerNorm norm=exact: variance + eps range
    rsqrt_hi: float = 4.0
    rsqrt_degree: int = 3
    rsqrt_newton: int = 2


def flatten(value) -> torch.Tensor:
    """A revealed value (tensor, tuple or dict of them) as one float64 vector."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).double()
    parts = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value)
    return torch.cat([flatten(v) for v in parts])


def cell_shape(workload: Workload) -> tuple[int, int, int]:
    """(rows, block B, slots needed): B holds a row replicated for the widest product."""
    cfg = workload.cfg
    dims = [cfg.d_model, cfg.seq_len] + ([workload.d_ff] if workload.name == "block" else [])
    block = pow2(2 * max(pow2(d) for d in dims))
    shifts_rows = workload.name in ("attention_head", "block")
    doubled = 2 if shifts_rows and cfg.seq_len != pow2(cfg.seq_len) else 1
    return cfg.seq_len, block, doubled * cfg.seq_len * block


class TensealBackend(Backend):
    name = "tenseal"
    Config = TensealConfig
    capabilities = Capabilities(
        workloads={
            "attention_head": {"softmax": SOFTMAX},
            "layernorm": ALL,
            "block": {"softmax": SOFTMAX, "gelu": ("poly", "quad")},
        },
        columns=COLUMNS,
    )
    default_tolerance = 5e-3  # ~10x the worst error seen (4.3e-4, block: the rsqrt approximation); noise ~1e-5
    libraries = ("tenseal",)
    threat_model = (
        "client holds the secret key and encrypts its input; semi-honest server holds plaintext weights "
        "and sees only ciphertexts (and refreshed ciphertexts, re-encrypted by the client)"
    )

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
        if not cfg.exp_lo < cfg.exp_hi or min(cfg.exp_degree, cfg.rsqrt_degree, cfg.recip_bits) < 1:
            raise ConfigError("backend.exp_lo < exp_hi and exp_degree, rsqrt_degree, recip_bits >= 1 are required")
        if (cfg.recip_lo is None) != (cfg.recip_hi is None) or (
            cfg.recip_lo is not None and not 0 < cfg.recip_lo < cfg.recip_hi
        ):
            raise ConfigError("backend.recip_lo / recip_hi: set both (0 < lo < hi) or neither")
        if cfg.param_policy not in cp.POLICIES:
            raise ConfigError(f"backend.param_policy={cfg.param_policy}; allowed: {', '.join(cp.POLICIES)}")
        if not 0 < cfg.rsqrt_lo < cfg.rsqrt_hi:
            raise ConfigError("backend.rsqrt_lo / rsqrt_hi: need 0 < lo < hi")

    def __init__(self, cfg: TensealConfig):
        self.cfg = cfg
        self.engine: Engine | None = None
        self.last = {"up": 0, "down": 0}
        self.rounds = 0
        self.info: dict[str, Any] = {}
        self.out, self.reference = None, None

    def why_not(self, workload):
        reason = super().why_not(workload)
        if reason or workload.name not in ("attention_head", "block"):
            return reason
        cfg = workload.cfg
        heads = cfg.n_heads // getattr(cfg, "head_merge", 1) if workload.name == "block" else 1
        hd = workload.head_dim if heads == 1 else cfg.d_model // heads
        if heads > 1 and (hd != pow2(hd) or cfg.seq_len > hd):
            return f"head_dim={hd} must be a power of two >= seq_len={cfg.seq_len} (heads share a ciphertext)"
        return None

    def _recip_range(self, workload) -> tuple[float, float]:
        if self.cfg.recip_lo is not None:
            return self.cfg.recip_lo, self.cfg.recip_hi
        lo, hi = RECIP_RANGES[getattr(workload.cfg, "softmax", "exact")]
        return lo, hi * max(workload.cfg.seq_len, 8) / 8

    def _dry(self, params, workload, weights, rows, block) -> DryEngine:
        engine = DryEngine(params)
        self._bind(engine, workload, rows, block)
        x = self.protect(workload.inputs())
        self.reveal(workload.forward(self.ops, run_op, x, self._weights(weights)))
        return engine

    def _bind(self, engine, workload, rows, block) -> None:
        self.engine, self.packer = engine, Packer(engine, rows, block)
        self.ops = CkksOps(self.packer, self.cfg, self._recip_range(workload))

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
        from backends.tenseal.engine import SealEngine

        rows, block, slots = cell_shape(workload)
        probe = cp.Params(
            pow2(2 * slots), cp.chain(10_000, self.cfg.scale_bits, self.cfg.edge_bits), self.cfg.scale_bits
        )
        depth = self._dry(probe, workload, weights, rows, block).stats.depth
        params = self._params(depth, slots)
        dry = self._dry(params, workload, weights, rows, block)
        steps = dry.stats.steps
        try:
            start = perf_counter()
            engine = SealEngine(params, steps, self.cfg.allow_insecure)
            keygen_s, start = perf_counter() - start, perf_counter()
            engine.preload(dry.plains)
        except (ValueError, RuntimeError) as exc:
            raise translate(exc) from exc
        self._bind(engine, workload, rows, block)
        self.rounds, self.last, self.out = 0, {"up": 0, "down": 0}, None
        self.reference = flatten(workload.reference()[0])
        self.info = self._describe(params, depth, len(steps), block, workload)
        self.info.update(keygen_s=keygen_s, encode_weights_s=perf_counter() - start, output_precision_bits=math.nan)
        return self._weights(weights)

    def _weights(self, weights):
        return {k: Weight(k, v.double().numpy()) for k, v in weights.items()}

    def _describe(self, params, depth, n_steps, block, workload) -> dict[str, Any]:
        c, keys = self.cfg, params.key_bytes(n_steps)
        lo, hi = self._recip_range(workload)
        steps = approx.goldschmidt_steps(lo, hi, c.recip_bits)
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
            "approx": f"exp=[{c.exp_lo:g},{c.exp_hi:g}]/deg{c.exp_degree}/sq{c.exp_squarings},"
            f"recip=[{lo:g},{hi:g}]/goldschmidt{steps},"
            f"rsqrt=[{c.rsqrt_lo:g},{c.rsqrt_hi:g}]/deg{c.rsqrt_degree}/newton{c.rsqrt_newton}",
        }

    def protect(self, inputs):
        self.engine.new_run()
        before = self.engine.stats.bytes_up
        out = {k: self._guard(self.packer.encrypt, v.double().numpy()) for k, v in inputs.items()}
        self.last["up"] = self.engine.stats.bytes_up - before
        return out

    def run(self, workload, rec, x, w):
        try:
            self.out = workload.forward(self.ops, rec, x, w)
        except (ValueError, RuntimeError) as exc:
            raise translate(exc) from exc
        return self.out

    def reveal(self, value):
        before = self.engine.stats.bytes_down
        out = self._open(value)
        self.last["down"] = self.engine.stats.bytes_down - before
        self.rounds += 1
        if value is self.out and self.reference is not None:  # the cell's output: its precision in bits
            err = float((flatten(out) - self.reference).abs().max())
            scale = float(self.reference.abs().max())
            self.info["output_precision_bits"] = math.log2(scale / err) if err > 0 and scale > 0 else math.inf
        return out

    def _open(self, value):
        return map_values(lambda mat: torch.from_numpy(self._guard(self.packer.decrypt, mat).copy()), value)

    @staticmethod
    def _guard(fn, *args):
        try:
            return fn(*args)
        except (ValueError, RuntimeError) as exc:
            raise translate(exc) from exc

    def counters(self):
        if self.engine is None:
            return {}
        s = self.engine.stats
        return {
            "depth": self.engine.depth_total + s.depth,
            "rotations": s.rotations,
            "refreshes": s.refreshes,
            "rounds": self.rounds + s.round_trips,
            "comm_bytes_up": s.bytes_up,
            "comm_bytes_down": s.bytes_down,
            "comm_bytes": s.bytes_up + s.bytes_down,
        }

    def metrics(self):
        return {**self.info, "ct_bytes": self.last["up"] + self.last["down"]}

    def close(self):
        self.engine = None


BACKEND = TensealBackend
