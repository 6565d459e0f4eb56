"""The conformance suite every backend passes: adding a backend is one module, one config, one class here.

A subclass names the backend, the sizes it can afford, and the cells it is expected to skip.
Every supported workload and variant must run with status ok, every op's error must be within the
backend's tolerance, and every counter the backend declares must be present (not NaN) in its rows.
"""

import functools
import math
from dataclasses import asdict

import pytest

import backends
import bench
import workloads
from bench.cells import Cell, measure_job
from bench.measure import HarnessConfig

HARNESS = HarnessConfig(warmup=0, repeats=2)


def variant_cells(sizes):
    for name, cls in workloads.REGISTRY.items():
        defaults = cls.Config()
        combos = [{}] + [{s: v} for s, vals in cls.variants.items() for v in vals if v != getattr(defaults, s)]
        for combo in combos:
            yield {"name": name, **sizes, **combo}


def round_trip(workload_cfg, backend):
    workload = Cell({}, workload_cfg, {}).make_workload()
    backend.setup(workload, workload.weights())
    return backend.reveal(backend.protect(workload.inputs())), backend.default_tolerance


class BackendConformance:
    backend: str
    config: dict = {}
    sizes = {"seq_len": 4, "d_model": 16, "n_heads": 2, "d_ff": 32, "lora_rank": 2}
    round_trip_workload = "layernorm"  # one the backend supports

    @pytest.fixture(scope="class")
    @classmethod
    def results(suite):
        cls = backends.get(suite.backend)
        if cls.unavailable():
            pytest.skip(cls.unavailable())
        found = {}
        config = cls.Config(**suite.config)
        for wl in variant_cells(suite.sizes):
            cell = Cell(asdict(config), wl, asdict(HARNESS))
            workload = cell.make_workload()
            found[(workload.name, workload.variant)] = cls.execute(config, functools.partial(measure_job, cell))
        return cls, found

    def test_every_supported_cell_runs_within_tolerance(self, results):
        cls, found = results
        for (name, variant), rows in found.items():
            total = rows[-1]
            if total["status"] == "skipped":
                continue
            assert total["status"] == "ok", (name, variant, total)
            for row in rows:
                err = row["max_abs_error"]
                assert math.isnan(err) or err <= row["tolerance"], (name, variant, row["op"], err)

    def test_skips_only_what_capabilities_exclude(self, results):
        cls, found = results
        for (name, variant), rows in found.items():
            workload = Cell({}, {"name": name, **dict(kv.split("=") for kv in variant.split(",") if kv)}, {})
            expected = cls.capabilities.why_not(workload.make_workload())
            assert (rows[-1]["status"] == "skipped") == (expected is not None), (name, variant)

    def test_declared_counters_are_reported(self, results):
        cls, found = results
        for rows in found.values():
            if rows[-1]["status"] == "ok":
                for counter in cls.capabilities.counters:
                    assert rows[-1].get(counter) is not None and not math.isnan(rows[-1][counter]), counter

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
