"""Compiled TFHE programs: each circuit compiled once, kept on disk, loaded by every cell that needs it.

A cache entry, `<ENCBENCH_CACHE or ~/.cache/encbench>/concrete/<key>/`, holds Concrete's compiled
server (`server.zip`), the calibrated scheme (`scheme.pkl`: its scales and the rounders Concrete
adjusted, so that the clear model reproduces the circuit), `info.json` (what compiling measured),
and, once an executing cell made them, the keys (`keys`: gigabytes; `keygen.json` keeps how long
making them took). `key` hashes everything that shapes the circuit (see `cache_key`), including
the source of the modules that build it, so a code change never reuses a stale circuit. Entries
are written to a temporary directory and renamed, so parallel jobs never see half an entry.
Delete the directory to reclaim the space (`make clean-cache`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import numpy as np

import workloads
from backends.base import CACHE_ROOT, report_activity
from backends.concrete.blocks import concrete_fhe
from workloads.base import ConfigError

CACHE = CACHE_ROOT / "concrete"


class Scheme(Protocol):
    """How a workload becomes integers: what `fused.FusedScheme` and `demo.DemoScheme` do."""

    inputs: tuple[str, ...]  # names of the encrypted inputs, in the circuit's argument order

    def calibrate(self, samples: list[dict[str, Any]]) -> None:
        """Fix every scale from float runs on `samples` (inputs other than the measured one)."""

    def encode(self, inputs: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """The client's quantized inputs."""

    def circuit(self, *encrypted, tag) -> Any:
        """The computation on Concrete tracers, each op's steps inside `tag(name, fn)`."""

    def clear(self, *ints) -> Any:
        """The same integers without encryption: the quantized-clear model."""

    def decode(self, out) -> Any:
        """The client's float64 output(s) from the circuit's integers."""

    def decode_inputs(self, ints) -> dict[str, Any]:
        """The inputs as the client quantized them, dequantized (float64)."""

    def op_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Every op's output in the quantized-clear model, dequantized (per-op errors)."""


@dataclass
class Program:
    """A compiled circuit loaded from its cache entry: server, client and the scheme it computes."""

    server: Any
    client: Any
    name: str
    scheme: Scheme
    info: dict[str, Any]
    directory: Path

    @property
    def simulated(self) -> bool:
        return self.server.is_simulated

    @property
    def key_bytes(self) -> int:
        """Bootstrap + key-switch keys, as Concrete sizes them in memory."""
        return self.server.size_of_bootstrap_keys + self.server.size_of_keyswitch_keys

    def keygen(self) -> dict[str, Any]:
        """Load the entry's keys, or make and save them; what making them cost, and whether they were cached."""
        record = self.directory / "keygen.json"
        hit = record.exists()
        report_activity(
            f"{'loading' if hit else 'generating'} {self.key_bytes / 1e9:.1f} GB of TFHE keys ({self.directory.name})"
        )
        start = perf_counter()
        self.client.keys.load_if_exists_generate_and_save_otherwise(self.directory / "keys")
        spent = perf_counter() - start
        if not hit:
            record.write_text(json.dumps({"keygen_s": spent}))
        return {"keygen_s": json.loads(record.read_text())["keygen_s"], "keys_cached": hit, "keys_load_s": spent}

    def encrypt(self, *ints):
        if self.simulated:
            return self.client.simulate_encrypt(*ints, function_name=self.name)
        return self.client.encrypt(*ints, function_name=self.name)

    def run(self, args):
        args = args if isinstance(args, tuple) else (args,)
        if self.simulated:
            return self.server.run(*args, function_name=self.name)
        return self.server.run(*args, evaluation_keys=self.client.evaluation_keys, function_name=self.name)

    def time_runs(self, inputs, runs: int) -> list[float]:
        """Seconds of `runs` runs on `inputs`, after one untimed warm-up (the first run of a fresh
        program pays one-off costs: about twice a steady run)."""
        args = self.encrypt(*self.scheme.encode(inputs))
        self.run(args)
        seconds = []
        for _ in range(runs):
            start = perf_counter()
            self.run(args)
            seconds.append(perf_counter() - start)
        return seconds

    def decrypt(self, result):
        result = result if isinstance(result, tuple) else (result,)
        if self.simulated:
            return self.client.simulate_decrypt(*result, function_name=self.name)
        return self.client.decrypt(*result, function_name=self.name)


def cache_key(*shapers: Any) -> str:
    """A hash of `shapers` (configs, as plain data), Concrete's version and the source of every
    module that builds circuits (the workloads and the TFHE modules)."""
    sources = sorted([*Path(workloads.__file__).parent.glob("*.py"), *Path(__file__).parent.glob("*.py")])
    digest = hashlib.sha256(repr((shapers, concrete_fhe().__version__)).encode())
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def load_or_compile(key: str, scheme: Scheme, samples, measured, configuration, max_tlu_bits: int, label: str):
    """The program of cache entry `key`, compiling it first when the entry does not exist. Scales
    come from the calibration `samples`; Concrete sizes the integers on them and the `measured`
    inputs (so that the measured run cannot overflow a bit-width). `label` names the circuit in
    progress reports. Returns (program, cache hit)."""
    directory = CACHE / key
    hit = (directory / "info.json").exists()
    if not hit:
        compile_entry(directory, scheme, samples, measured, configuration, max_tlu_bits, label)
    return load(directory), hit


def compile_entry(directory: Path, scheme: Scheme, samples, measured, configuration, max_tlu_bits: int, label: str):
    fhe = concrete_fhe()
    start = perf_counter()
    report_activity(f"calibrating and tracing {label}")
    scheme.calibrate(samples)
    inputset = [inputset_entry(scheme.encode(s)) for s in [*samples, measured]]
    compiler = fhe.Compiler(circuit_function(scheme), dict.fromkeys(scheme.inputs, "encrypted"))
    graph = compiler.trace(inputset, configuration)
    check_widths(graph, max_tlu_bits)
    report_activity(f"compiling {label}: {graph.maximum_integer_bit_width()}-bit values, {widest_lookup(graph)}")
    try:
        compiled = compiler.compile(inputset, configuration)
    except RuntimeError as exc:
        if "NoParametersFound" not in str(exc):
            raise
        raise ConfigError(
            f"concrete: no TFHE parameters fit this circuit ({graph.maximum_integer_bit_width()}-bit values); "
            "set backend.rounding=exact, lower backend.n_bits or backend.out_proj_bits, or "
            "backend.fuse_linear_requant=false"
        ) from None
    info = {"compile_s": perf_counter() - start, "max_bit_width": graph.maximum_integer_bit_width()}
    info["name"] = compiled._name
    runtime = compiled._module.execution_runtime if configuration.fhe_execution else compiled._module.simulation_runtime
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".staging-"))
    runtime.val.server.save(staging / "server.zip")
    (staging / "scheme.pkl").write_bytes(pickle.dumps(scheme))
    (staging / "info.json").write_text(json.dumps(info))
    try:
        staging.rename(directory)
    except OSError:  # another job made the same entry meanwhile: keep theirs
        shutil.rmtree(staging, ignore_errors=True)


def load(directory: Path) -> Program:
    fhe = concrete_fhe()
    server = fhe.Server.load(directory / "server.zip")
    client = fhe.Client(server.client_specs, is_simulated=server.is_simulated)
    info = json.loads((directory / "info.json").read_text())
    scheme = pickle.loads((directory / "scheme.pkl").read_bytes())
    return Program(server, client, info["name"], scheme, info, directory)


def inputset_entry(args: tuple):
    """One inputset entry as Concrete takes it: the array itself for a one-input circuit."""
    return args[0] if len(args) == 1 else args


def circuit_function(scheme: Scheme):
    """`scheme.circuit` as a function whose parameters are named after the encrypted inputs (what
    Concrete's compiler reads), with every op inside its `fhe.tag`."""
    fhe = concrete_fhe()

    def tagged(name, fn):
        with fhe.tag(name):
            return fn()

    def circuit(*args, **named):  # Concrete calls it both ways
        return scheme.circuit(*(args or [named[n] for n in scheme.inputs]), tag=tagged)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    circuit.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in scheme.inputs])
    return circuit


def lookup_widths(graph) -> list[tuple[int, str]]:
    """(bits read, op) for every lookup of a traced graph (a rounded input counts the bits it keeps)."""
    return [
        (max(kept_bits(p) for p in graph.ordered_preds_of(node)), node.tag or "?")
        for node in graph.graph.nodes
        if node.converted_to_table_lookup and node.properties.get("name") != "round_bit_pattern"
    ]


def check_widths(graph, limit: int) -> None:
    """Refuse a circuit with a lookup wider than Concrete supports, naming the op and the width."""
    for width, op in lookup_widths(graph):
        if width > limit:
            raise ConfigError(
                f"concrete: op {op} needs a {width}-bit lookup, over the {limit} bits Concrete supports; "
                "set backend.rounding=exact or lower backend.rounding_bits / backend.n_bits"
            )


def widest_lookup(graph) -> str:
    widths = lookup_widths(graph)
    if not widths:
        return "no lookups"
    bits, op = max(widths)
    return f"widest lookup {bits} bits in {op}"


def kept_bits(node) -> int:
    lsbs = node.properties.get("kwargs", {}).get("lsbs_to_remove", 0)
    return node.output.dtype.bit_width - (lsbs if isinstance(lsbs, int) else 0)
