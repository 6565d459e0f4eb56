"""The column registry: every results column with its unit, scope, kind and meaning, in one place.

The harness's own columns are here; each backend declares the columns it fills in its
`Capabilities.columns` (`backends.base.Column`). The results store, the report's tables and plots,
the regression gate and docs/metrics.md all read `registry()`, so a backend adding a counter adds
one declaration and nothing in `bench/`.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Iterable

import backends
import backends.base
from backends.base import Column

TOTAL = "total"  # the op name of a cell's summary row


def _of_kind(kind: str, *columns: tuple[str, str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, unit, scope, meaning, kind=kind) for name, unit, scope, meaning in columns)


HARNESS = (
    *_of_kind(
        "identity",
        ("run_id", "text", "row", "the run (`YYYYmmdd-HHMMSS`, or as given by `run_id=`); a sweep's jobs share it"),
        ("cell_id", "text", "row", "12 hex digits hashing the backend, workload and harness config"),
        ("schema_version", "count", "row", "version of this row layout (`bench.load` reads older ones)"),
        ("backend", "text", "row", "backend name"),
        ("workload", "text", "row", "workload name"),
        ("variant", "text", "row", "the workload's variant switches (`softmax=power`); empty if it has none"),
        ("seq_len", "count", "row", "tokens"),
        ("d_model", "count", "row", "model width"),
        ("n_heads", "count", "row", "attention heads"),
        ("d_ff", "count", "row", "MLP width (4 d_model unless set)"),
        ("lora_rank", "count", "row", "LoRA rank"),
        ("backend_cfg", "text", "row", "the backend's full config (JSON), so rows describe themselves"),
        ("workload_cfg", "text", "row", "the workload's full config (JSON)"),
        ("op", "text", "row", "`protect` (encrypt / share), a workload op (`qk_matmul`, `attn.softmax`, ...), "
         "`reveal` (decrypt / reconstruct), or `total` (the cell)"),
        ("finished_at", "text", "row", "when the cell's rows were written (ISO time); `load` keeps a cell's latest "
         "attempt"),
        ("status", "text", "row", "`ok`, `skipped` (the backend cannot run the cell or is not installed), `error` "
         "(it raised or crashed) or `timeout` (over `harness.timeout_s`)"),
        ("error", "text", "cell", "the one-line reason for any status but `ok`"),
    ),
    *_of_kind(
        "latency",
        ("latency_s", "s", "row", "median over repeats of the op's time; on `total`, of the whole online run "
         "(protect + ops + reveal)"),
        ("latency_iqr_s", "s", "row", "inter-quartile range over repeats; empty with one repeat"),
        ("first_run_s", "s", "row", "the op's time in the first warm-up run, before any timed one: with the "
         "one-time work a backend does lazily (compiling the op's program, Cheetah's HE keys and OT set-up); "
         "`first_run_s - latency_s` is that work; on `total`, the whole first run; empty without warm-up and "
         "where the latency is not that run's (a cost model's, or the op's own circuit's)"),
        ("repeats", "count", "row", "timed repeats behind the median (fewer than `harness.repeats` when "
         "`harness.budget_s` ran out)"),
        ("setup_s", "s", "cell", "keygen / compile / party start / weight loading, once per cell, outside `latency_s`"),
        ("cell_wall_s", "s", "cell", "wall time of the whole cell: setup, warm-ups, repeats, error run"),
    ),
    *_of_kind(
        "accuracy",
        ("max_abs_error", "value", "row", "max |revealed - float64 reference| over the op's output; on `total`, the "
         "final output's, worst over all repeats"),
        ("max_rel_error", "ratio", "row", "`max_abs_error / max |reference|`"),
        ("tolerance", "value", "row", "bound on `max_abs_error`: `workload.tolerance`, else the backend's default"),
        ("accurate", "bool", "row", "`max_abs_error <= tolerance`; false marks an accuracy cliff"),
        ("top1_agreement", "ratio", "cell", "share of the final output's rows whose largest entry is where the "
         "reference's is (a next-token proxy), worst over repeats; empty unless the output is one matrix"),
        ("inaccurate_repeats", "count", "cell", "timed repeats whose output error exceeded the tolerance (MPC "
         "truncation failures are per run: 1 of 5 is a flaky cell, 5 of 5 a broken one)"),
    ),
    *_of_kind(
        "flag",
        ("insecure", "bool", "cell", "`security_bits` below 128 (allowed only by the backend's `allow_insecure`)"),
        ("estimated", "bool", "row", "the row's latency is modelled (a cost model), not a measured execution"),
        ("simulated", "bool", "cell", "the MPC parties ran as threads of the harness's process (`backend.mode="
         "simulator`, for debugging), not as processes: traffic in total only; marked `(simulator)` in reports"),
        ("isolated", "bool", "row", "the op's latency comes from the op compiled (and run) as a circuit of its own, "
         "not a slice of the fused run"),
    ),
    *_of_kind(
        "estimate",
        ("est_*_s", "s", "row", "estimated online time on network `*` (`conf/network/`): `latency_s + rounds * rtt "
         "+ busiest_bytes * 8 / bandwidth`, busiest_bytes the largest `comm_bytes_*` (else `comm_bytes`); only on "
         "rows with rounds and bytes"),
    ),
)  # fmt: skip


class Catalogue:
    """Columns by name, families (`comm_bytes_*`) matched by pattern."""

    def __init__(self, columns: Iterable[Column]):
        self.columns = {c.name: c for c in columns}
        self.families = [c for c in self.columns.values() if "*" in c.name]

    def __iter__(self):
        return iter(self.columns.values())

    def lookup(self, name: str) -> Column | None:
        """The column `name` is (a family member like `comm_bytes_p0` included), or None if unknown."""
        if name in self.columns:
            return self.columns[name]
        return next((c for c in self.families if fnmatch.fnmatch(name, c.name)), None)

    def select(self, names: Iterable[str], **criteria: object) -> list[str]:
        """The names among `names` whose column has every attribute given (`scope="op"`,
        `deterministic=True`, ...); unknown names never match."""
        found = [(name, self.lookup(name)) for name in names]
        return [n for n, c in found if c is not None and all(getattr(c, k) == v for k, v in criteria.items())]

    def named(self, name: str) -> bool:
        """Declared under its own name (`comm_bytes`), not a member of a family (`comm_bytes_p0`)."""
        return name in self.columns

    def numeric(self, name: str) -> bool:
        c = self.lookup(name)
        return c is not None and c.unit not in ("text", "bool")


SHARED = tuple(v for v in vars(backends.base).values() if isinstance(v, Column))  # PBS, ROUNDS, ...


def for_backend(backend: type[backends.Backend]) -> Catalogue:
    """The harness's columns, the shared ones and what `backend` declares: all its cells may hold
    (the shared ones known, so that one at the wrong scope is recognized as such)."""
    return Catalogue([*HARNESS, *SHARED, *backend.capabilities.columns])


def registry() -> Catalogue:
    """Every known column: the harness's, then each backend's declarations (out-of-tree backends in
    `ENCBENCH_BACKENDS` included). Two different declarations of one name are a programming error,
    named here."""
    return _registry(os.environ.get(backends.PLUGINS_ENV, ""))


def filled_by() -> dict[str, tuple[str, ...]]:
    """The backends declaring each column (harness columns: none, every backend has them)."""
    return _filled_by(os.environ.get(backends.PLUGINS_ENV, ""))


@functools.cache
def _registry(plugins: str) -> Catalogue:
    found = {c.name: c for c in (*HARNESS, *SHARED)}
    for name, column in _declared(plugins):
        if found.get(column.name, column) != column:
            raise ValueError(f"backend {name} declares column {column.name} unlike its other declaration")
        found[column.name] = column
    return Catalogue(found.values())


@functools.cache
def _filled_by(plugins: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for name, column in _declared(plugins):
        found.setdefault(column.name, []).append(name)
    return {column: tuple(names) for column, names in found.items()}


def _declared(plugins: str) -> list[tuple[str, Column]]:
    """(backend, column) for every declaration; `plugins` only keys the caches."""
    return [(name, column) for name in backends.names() for column in backends.get(name).capabilities.columns]
