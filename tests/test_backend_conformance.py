"""The conformance suite every backend passes: adding a backend is one module, one config, one class here.

A subclass names the backend, the sizes it can afford, and cells its instance is expected to skip
(`extra_workloads`). Every supported workload and variant must run with status ok and a finite error
within the backend's tolerance on every op the reference has; every column its rows carry must be
declared (the harness's or the backend's `Capabilities.columns`) and sit at its scope: no cell-level
figure on an op row, and the total of every per-op column the sum over its ops; every deterministic
column the backend declares must be filled.
"""

import functools
import math
from dataclasses import asdict

import pytest

import backends
import bench
import workloads
from bench import columns
from bench.cells import Cell, measure_job
from bench.columns import TOTAL, Catalogue, for_backend
from bench.measure import HarnessConfig

HARNESS = HarnessConfig(warmup=0, repeats=2)


def variant_cells(sizes):
    for name, cls in workloads.REGISTRY.items():
        defaults = cls.Config()
        combos = [{}] + [{s: v} for s, vals in cls.variants.items() for v in vals if v != getattr(defaults, s)]
        for combo in combos:
            yield {"name": name, **sizes, **combo}


def why_nots(workload_cfgs, backend):
    """What the live backend (its instance, with its config) says about each cell."""
    return [backend.why_not(Cell({}, cfg, {}).make_workload()) for cfg in workload_cfgs]


def round_trip(workload_cfg, backend):
    workload = Cell({}, workload_cfg, {}).make_workload()
    backend.setup(workload, workload.weights())
    return backend.reveal(backend.protect(workload.inputs())), backend.default_tolerance


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class BackendConformance:
    backend: str
    config: dict = {}
    sizes = {"seq_len": 4, "d_model": 16, "n_heads": 2, "d_ff": 32, "lora_rank": 2}
    extra_workloads: list[dict] = []  # cells beyond every variant at `sizes`, e.g. ones the instance skips
    round_trip_workload = "layernorm"  # one the backend supports

    @pytest.fixture(scope="class")
    @classmethod
    def results(suite):
        """(backend class, {workload config as a tuple: (rows, the instance's why_not, reference op names)})."""
        cls = backends.get(suite.backend)
        if cls.unavailable():
            pytest.skip(cls.unavailable())
        config = cls.Config(**suite.config)
        cfgs = [*variant_cells(suite.sizes), *suite.extra_workloads]
        reasons = cls.execute(config, functools.partial(why_nots, cfgs))
        found = {}
        for wl, reason in zip(cfgs, reasons, strict=True):
            cell = Cell(asdict(config), wl, asdict(HARNESS))
            workload = cell.make_workload()
            rows = cls.execute(config, functools.partial(measure_job, cell))
            found[tuple(sorted(wl.items()))] = (rows, reason, set(workload.reference()[1]))
        return cls, found

    def ok_cells(self, results):
        _, found = results
        return [(key, rows, ops) for key, (rows, _, ops) in found.items() if rows[-1]["status"] == "ok"]

    def test_every_supported_cell_runs_within_tolerance(self, results):
        cls, found = results
        for key, (rows, reason, ops) in found.items():
            if reason is not None:
                continue
            assert rows[-1]["status"] == "ok", (key, rows[-1])
            for row in rows:
                if row["op"] in ops | {"protect", "reveal", TOTAL}:  # `circuit` (a fused run) reveals nothing
                    assert finite(row["max_abs_error"]), (key, row["op"], row["max_abs_error"])
                    assert row["max_abs_error"] <= row["tolerance"], (key, row["op"], row["max_abs_error"])

    def test_skips_exactly_what_the_instance_refuses(self, results):
        cls, found = results
        for key, (rows, reason, _) in found.items():
            assert (rows[-1]["status"] == "skipped") == (reason is not None), (key, rows[-1])
            if reason is not None:
                assert rows[-1]["error"] == f"{cls.name}: {reason}"

    def test_every_column_is_declared(self, results):
        cls, _ = results
        catalogue = Catalogue([*columns.HARNESS, *cls.capabilities.columns])
        for key, rows, _ in self.ok_cells(results):
            unknown = {k for row in rows for k in row if catalogue.lookup(k) is None}
            assert not unknown, f"{key}: undeclared columns {sorted(unknown)}; declare them in Capabilities.columns"

    def test_op_rows_hold_only_what_their_op_did(self, results):
        cls, _ = results
        catalogue = for_backend(cls)
        for key, rows, _ in self.ok_cells(results):
            ops, total = rows[:-1], rows[-1]
            for row in ops:
                assert not catalogue.select(row, scope="cell"), (key, row["op"], catalogue.select(row, scope="cell"))
            for column in catalogue.select({k for row in ops for k in row}, scope="op"):
                summed = sum(row[column] for row in ops if column in row)
                assert total[column] == pytest.approx(summed, rel=1e-9), (key, column)

    def test_declared_deterministic_columns_are_filled(self, results):
        cls, _ = results
        catalogue = for_backend(cls)
        declared = [c for c in cls.capabilities.columns if c.deterministic]
        for key, rows, _ in self.ok_cells(results):
            ops, total = rows[:-1], rows[-1]
            for column in declared:
                names = catalogue.select(total, name=column.name) if "*" in column.name else [column.name]
                assert names and all(total.get(n) is not None for n in names), (key, column.name)
                if column.scope == "op":  # counted per op, not only for the cell
                    assert any(n in row for row in ops for n in names), (key, column.name)

    def test_protect_reveal_round_trip(self, results):
        cls, _ = results
        workload = {"name": self.round_trip_workload, **self.sizes}
        out, tolerance = cls.execute(cls.Config(**self.config), functools.partial(round_trip, workload))
        inputs = Cell({}, workload, {}).make_workload().inputs()
        assert bench.accuracy.errors(out, inputs)[0] <= tolerance


class TestPlaintext(BackendConformance):
    backend = "plaintext"


class TestPlaintextFloat32(BackendConformance):
    backend = "plaintext"
    config = {"dtype": "float32"}
