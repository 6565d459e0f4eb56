"""`lattigo`: non-interactive CKKS with bootstrapping (Lattigo v6, shipped by `orion-fhe`): the
client encrypts its input once, the server computes every op, bootstrapping included, and the
client decrypts the output: one round trip.

Packing and approximations are `tenseal`'s (`backends.ckks`: rows in slot blocks, diagonal
products, rotations for Llama's head ops, Chebyshev / Goldschmidt stand-ins on stated ranges), so
the two CKKS execution models compare cell for cell; where `tenseal` sends a ciphertext back to
the client when its chain runs out, this backend bootstraps it on the server.

Bootstrapping is placed by a dry run of the cell on the numpy twin (`DryEngine` with the
bootstrap policy): a ciphertext is bootstrapped when the next product needs a level it lacks, so
the predicted `bootstraps` and `depth` are the executed ones. The bootstrapper refreshes the
smallest power-of-two slot count holding every bootstrapped ciphertext's data, as the dry run
finds it (sparse-slot bootstrapping), and a mask clears the copies it leaves in the other slots
(one level). Sparse slots matter for memory more than for time: at LogN 16 the bootstrapping keys
take 8.5 / 11.5 / 14.1 / 21.6 / 18.6 GiB for 2^10 / 2^12 / 2^13 / 2^14 / 2^15 slots (measured,
`reference_cost.json`), so sparse slots are used up to 2^13.

Parameters (`params`): Lattigo's documented 128-bit set `N16QP1546H192H32` by default; anything
else has no security figure here and is refused unless `allow_insecure`. Keys are made per cell
(the library's bindings serialize no bootstrapping key), after a memory guard that refuses cells
whose keys (bootstrapping keys as measured before) and plaintexts would not fit `max_memory_gb`.

Modes: `execute` runs the cell; `count` runs only the dry run (the numpy twin stands in for the
ciphertexts: exact outputs, the executed counts) and prices it with the cost model (`cost`),
rows marked `estimated`. The quick sweep uses `count`: keys alone take 1-3 minutes at LogN 16.
Not supported (skipped): relu softmax / GELU / SiLU, erf GELU and exact SiLU (no polynomial form
here), lora_update (transposes of private activations), cells whose packing does not fit a
ciphertext's slots (`packing_why_not`: a row's block, or one head's rows for the attention products).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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
from backends.ckks.engine import DryEngine, Stats, power_of_two_steps, signed_powers
from backends.ckks.tensor import pow2
from backends.lattigo import cost
from backends.lattigo import params as lp
from workloads.base import ConfigError

MODES = ("execute", "count")
COLUMNS = (
    DEPTH, ROUNDS, COMM_BYTES, COMM_BYTES_SPLIT, CT_BYTES, KEY_BYTES, SECURITY_BITS, KEYGEN_S, APPROX, *CKKS_COLUMNS,
    Column("bootstraps", "count", "op", "server-side bootstraps (placed by the dry run where levels run out)", True),
    Column("est_he_s", "s", "row", "the cost model's seconds for the op (or the cell): its dry run's primitive "
           "counts priced per level", kind="estimate"),
    Column("rotation_keys", "count", "cell", "rotation keys made: the steps used and the library's powers of two",
           True, "size"),
    Column("rotation_key_bytes", "bytes", "cell", "their size, part of `key_bytes`", True, "size"),
    Column("relin_key_bytes", "bytes", "cell", "the relinearization key, part of `key_bytes`", True, "size"),
    Column("boot_key_bytes", "bytes", "cell", "resident memory the bootstrapping keys took in this run (measured: "
           "the bindings cannot serialize them; counting mode: the reference machine's); `key_bytes` counts the "
           "reference machine's figure",
           kind="size"),
    Column("boot_keygen_s", "s", "cell", "making the bootstrapping keys, part of `keygen_s`", kind="setup"),
    Column("log_n", "count", "cell", "log2 of the ring degree N (N/2 slots)", True, "parameter"),
    Column("param_set", "text", "cell", "the parameter set (`N16QP1546H192H32`: Lattigo's documented default)",
           kind="parameter"),
    Column("boot_slots", "count", "cell", "slots the bootstrapper refreshes (sparse when below N/2)", True,
           "parameter"),
    Column("he_mode", "text", "cell", "`execute` or `count` (dry run priced by the cost model)", kind="parameter"),
    Column("he_cost_model", "text", "cell", "seconds per unit of each primitive, and whose machine measured them",
           kind="parameter"),
)  # fmt: skip


@dataclass
class LattigoConfig(CkksConfig):
    name: str = "lattigo"
    mode: str = "execute"  # execute | count
    log_n: int = 16
    log_q: list[int] = field(default_factory=lambda: list(lp.DEFAULT["log_q"]))
    log_p: list[int] = field(default_factory=lambda: list(lp.DEFAULT["log_p"]))
    boot_log_p: list[int] = field(default_factory=lambda: list(lp.DEFAULT["boot_log_p"]))
    hamming_weight: int = 192


class LattigoBackend(PackedCkks):
    name = "lattigo"
    Config = LattigoConfig
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
    default_tolerance = 5e-3  # as tenseal's: the approximations dominate; bootstrapping adds ~1e-6
    libraries = ("orion-fhe",)
    too_large_hint = "; backend.mode=count estimates it without keys"
    refresh_counter = "bootstraps"
    threat_model = (
        "client holds the secret key, encrypts its input once and decrypts the output; semi-honest server "
        "holds plaintext weights and the evaluation keys (bootstrapping included) and sees only ciphertexts"
    )

    @classmethod
    def unavailable(cls):
        from backends.lattigo.library import library_path

        return None if library_path() else "orion-fhe is not installed (`pip install --no-deps orion-fhe==1.0.2`)"

    @classmethod
    def validate(cls, cfg: LattigoConfig) -> None:
        if cfg.mode not in MODES:
            raise ConfigError(f"backend.mode={cfg.mode}; allowed: {', '.join(MODES)}")
        lp.validate(cfg)
        if len(cfg.log_q) - 2 < 2:
            raise ConfigError(
                f"backend.log_q has {len(cfg.log_q) - 1} levels: after a sparse bootstrap's mask a ciphertext "
                "needs >= 2 for one product step; use >= 4 primes"
            )
        lp.check_security(lp.make(cfg, 1 << (cfg.log_n - 1)), cfg.allow_insecure)
        validate_approx(cfg)

    def __init__(self, cfg: LattigoConfig):
        super().__init__(cfg)
        self.per_op: dict[str, dict[str, Any]] = {}  # op -> its work on the dry run, priced
        self.unit: dict | None = None  # the cost model's prices

    def max_slots(self) -> int:
        return 1 << (self.cfg.log_n - 1)

    def setup(self, workload, weights):
        _, block, _ = cell_shape(workload)
        params = lp.make(self.cfg, self.max_slots())
        lp.check_security(params, self.cfg.allow_insecure)
        dry = self._dry_run(params, workload, weights)
        sparse = pow2(max(dry.boot_extent, MIN_BOOT_SLOTS))
        if sparse <= params.slots // 4:  # measured: half the slots take as much key memory as all of them
            # the sparse mask costs a level, which may move bootstraps: keep it only if they still fit
            again = self._dry_run(lp.make(self.cfg, sparse), workload, weights)
            if again.boot_extent <= sparse:
                params, dry = lp.make(self.cfg, sparse), again
        # counting mode prices the plan with every key; executing, keys beyond memory become compositions
        keyed = self._keyed_steps(params, dry) if self.cfg.mode == "execute" else None
        if keyed is not None:
            dry = self._dry_run(params, workload, weights, keyed)
        self._price_ops(cost.model(params))
        steps = set(dry.stats.steps) | library_steps(params)
        self.info = {
            "security_bits": params.security_bits,
            "log_n": params.log_n,
            "param_set": params.name,
            "levels": params.levels,
            "boot_slots": params.boot_slots,
            "cell_depth": dry.stats.depth,
            "slot_block": block,
            "he_mode": self.cfg.mode,
            "approx": self.approx_text(workload),
            "rotation_keys": len(steps),
            "rotation_key_bytes": len(steps) * params.switch_key_bytes(),
            "relin_key_bytes": params.switch_key_bytes(),
            # deterministic: the bootstrapping keys as the reference machine measured them
            "key_bytes": cost.boot_key_bytes(params, here=False) + (len(steps) + 1) * params.switch_key_bytes(),
        }
        if self.cfg.mode == "count":  # a fresh twin stands in for the ciphertexts
            self.info["boot_key_bytes"] = cost.boot_key_bytes(params, here=False)
            self._start(DryEngine(params, bootstrap=True, keyed=keyed), workload)
        else:
            self._start(self._execute_engine(params, steps, keyed, dry.plains), workload)
        self.info["he_cost_model"] = cost.text(self.unit)
        return self._weights(weights)

    def _key_room(self, params) -> int:
        """Bytes left for rotation keys and plaintexts: the memory limit less the bootstrapping keys
        (as measured before), the relinearization key and `WORKING_BYTES` of live ciphertexts."""
        return self.memory_limit() - cost.boot_key_bytes(params) - params.switch_key_bytes() - WORKING_BYTES

    def _keyed_steps(self, params, dry) -> set[int] | None:
        """The rotation steps that get keys: all the cell uses if they fit beside the bootstrapping
        keys (None), else the signed powers of two and, within the room left, the steps whose
        composition would cost the most rotations; the rest are composed of powers of two."""
        per_key, base = params.switch_key_bytes(), power_of_two_steps(params.slots)
        room = self._key_room(params) // per_key
        if len(set(dry.stats.steps) | library_steps(params)) <= room:
            return None
        if len(base) > room:
            need = cost.boot_key_bytes(params) + (len(base) + 1) * per_key + WORKING_BYTES
            self.check_memory(need)  # raises: not even the powers of two fit
        saved = {s: uses * (len(signed_powers(s)) - 1) for s, uses in dry.stats.steps.items() if s not in base}
        return base | set(sorted(saved, key=saved.get, reverse=True)[: room - len(base)])

    def _execute_engine(self, params, steps, keyed, plains):
        from backends.lattigo.engine import LattigoEngine

        keys = cost.boot_key_bytes(params) + (len(steps) + 1) * params.switch_key_bytes() + WORKING_BYTES
        self.check_memory(keys)
        start = perf_counter()
        engine = LattigoEngine(params, steps, keyed)
        boot_start, rss = perf_counter(), resident_bytes()
        engine.make_bootstrapper()
        boot_s, boot_bytes = perf_counter() - boot_start, max(resident_bytes() - rss, 0)
        self.info.update(
            keygen_s=perf_counter() - start,
            boot_keygen_s=boot_s,
            boot_key_bytes=boot_bytes,
        )
        # the weights' encodings as far as memory allows (a server keeps its model encoded); the rest on the fly
        engine.preload(plains, self.memory_limit() - keys)
        if self.unit is None or self.unit["source"] != "this machine":  # not measured here at these slots
            self._price_ops(cost.calibrate(engine, boot_bytes))
            engine.stats, engine.depth_total = Stats(), 0  # the calibration's uses are not the cell's
        return engine

    def _dry_run(self, params, workload, weights, keyed: set[int] | None = None) -> DryEngine:
        """The cell on the numpy twin (its depth, rotation steps, bootstraps and plaintexts), each
        op's primitive work recorded on the way (`protect` and `reveal`, the client's encryptions
        and decryptions, included) for `_price_ops`."""
        engine = DryEngine(params, bootstrap=True, keyed=keyed)
        self._bind(engine, workload)
        self.per_op = {}

        def rec(name, fn):
            before = Counter(engine.stats.work)
            out = fn()
            self.per_op[name] = {"_work": engine.stats.work - before}
            return out

        x = rec("protect", lambda: self.protect(workload.inputs()))
        out = workload.forward(self.ops, rec, x, self._weights(weights))
        rec("reveal", lambda: self.reveal(out))
        return engine

    def _price_ops(self, unit: dict | None) -> None:
        """Each op's estimated seconds from its work (the op's latency too in counting mode)."""
        self.unit = unit
        for row in self.per_op.values():
            row["est_he_s"] = cost.estimate(row["_work"], unit)
            if self.cfg.mode == "count":
                row.update(latency_s=row["est_he_s"], latency_iqr_s=float("nan"), estimated=True)

    def op_counters(self):
        return {op: {k: v for k, v in row.items() if not k.startswith("_")} for op, row in self.per_op.items()}

    def metrics(self):
        total = sum(row["est_he_s"] for row in self.per_op.values())
        counted = self.cfg.mode == "count"  # the total's latency is the cost model's
        return {**super().metrics(), "est_he_s": total, "estimated": counted}


MIN_BOOT_SLOTS = 16
WORKING_BYTES = 2**30  # live ciphertexts and the process itself, beside keys and plaintexts


def library_steps(params) -> set[int]:
    """The rotation keys the library makes anyway: every positive power of two below the slots."""
    return {s for s in power_of_two_steps(params.slots) if s > 0}


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


BACKEND = LattigoBackend
