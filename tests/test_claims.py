"""The Claims section from hand-made (NOT measured) results: each claim's cells as `encbench` would
store them, with figures chosen so that every verdict occurs, then the report built from them."""

import json
import math
from dataclasses import asdict

import pytest

from bench import claims
from bench.claims import NOT_MEASURABLE, NOT_REPRODUCED, REPRODUCED, Finding
from bench.measure import HarnessConfig
from bench.report.claims import CLAIMS_FILE
from bench.report.frame import read_run
from bench.report.page import build
from workloads.base import ConfigError

RUN_ID = "20261203-000000"


def cell_rows(cell, figures: dict, status: str = "ok", error: str = "") -> list[dict]:
    """A cell's rows: `figures` maps op -> {column: value}; `total` is among them."""
    identity = {**cell.columns(), "run_id": RUN_ID, "finished_at": "2026-12-03T00:00:00+00:00"}
    if status != "ok":
        return [{**identity, "op": "total", "status": status, "error": error}]
    return [{**identity, "op": op, "status": "ok", **values} for op, values in figures.items()]


def golden_rows() -> list[dict]:
    """zama_pbs reproduced (11,772 PBS, 1.3% off), power_softmax not reproduced (1.24x against
    2.75x) and partly not measurable, ef_llm's lattigo fine-tuning skipped (not measurable)."""
    cells = {c.id: c for c in claims.cells(["zama_pbs", "power_softmax", "ef_llm"], HarnessConfig())}
    rows = []
    for cell in cells.values():
        b, w = cell.backend, cell.workload
        if b["name"] == "concrete":
            pbs = 11772 if b["scheme"] == "demo" else 5523
            rows += cell_rows(cell, {"total": {"pbs": pbs, "latency_s": 1.0}})
        elif w["name"] == "attention_head":
            softmax = {"exact": (262.0, 40), "power": (211.0, 32)}[w["softmax"]]
            rows += cell_rows(
                cell,
                {
                    "softmax": {"latency_s": softmax[0], "bootstraps": softmax[1]},
                    "total": {"latency_s": 800.0, "bootstraps": 200},
                },
            )
        elif w["name"] == "block":
            rows += cell_rows(
                cell, {"attn.softmax": {"latency_s": 1000.0}, "total": {"latency_s": 13000.0 if w["softmax"] else 0}}
            )
        elif b["name"] == "lattigo":  # finetune: the capability says why not
            rows += cell_rows(cell, {}, "skipped", "lattigo: workload finetune is not supported: transposes")
        else:
            t = 7.0 if w["adapter"] == "full" else 1.0
            ops = {"attn.softmax": 0.2 * t, "mlp.fc1": 0.3 * t, "grad.mlp.fc2": 0.5 * t, "total": t}
            rows += cell_rows(cell, {op: {"latency_s": v} for op, v in ops.items()})
    return rows


@pytest.fixture
def run_dir(tmp_path):
    job = tmp_path / "results" / RUN_ID / "0"
    job.mkdir(parents=True)
    (job / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in golden_rows()) + "\n")
    ids = ["zama_pbs", "power_softmax", "ef_llm"]
    manifest = {"run_id": RUN_ID, "argv": ["encbench", f"claims=[{','.join(ids)}]"], "config": {"claims": ids},
                "overrides": ["hand-made rows"]}  # fmt: skip
    (job / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "results" / RUN_ID


def test_findings_judge_every_verdict_from_the_rows(run_dir):
    frame, _ = read_run(run_dir)
    found = {f.claim: f for f in claims.findings(frame, ["zama_pbs", "power_softmax", "ef_llm"])}
    assert found["zama_pbs"].measured == 11772 and found["zama_pbs"].verdict == REPRODUCED
    assert "fused head: 5,523 PBS" in found["zama_pbs"].measured_conditions
    square = found["power_softmax.square"]
    assert square.measured == pytest.approx(262 / 211) and square.verdict == NOT_REPRODUCED
    assert square.ratio == pytest.approx((262 / 211) / (7.42 / 2.7))
    assert "40 exact, 32 power" in square.reason  # the measured reason
    assert found["power_softmax.taylor"].verdict == NOT_MEASURABLE
    lattigo_ft = found["ef_llm.finetune.lattigo"]
    assert lattigo_ft.verdict == NOT_MEASURABLE and "not supported: transposes" in lattigo_ft.reason
    crypten_ft = found["ef_llm.finetune.crypten"]
    assert crypten_ft.measured == pytest.approx(7.0) and crypten_ft.verdict == REPRODUCED  # 7.0 within 25% of 6.94
    assert "softmax 20%, other forward ops 30%, backward 50%" in crypten_ft.reason
    inference = found["ef_llm.inference"]
    assert inference.verdict == NOT_REPRODUCED and "no kernel speeds the block up past" in inference.reason


def test_report_has_a_claims_section_and_claims_jsonl(run_dir, tmp_path):
    out = build(run_dir, tmp_path / "reports")
    records = [json.loads(line) for line in (out / CLAIMS_FILE).read_text().splitlines()]
    verdicts = {r["claim"]: r["verdict"] for r in records}
    assert {REPRODUCED, NOT_REPRODUCED, NOT_MEASURABLE} <= set(verdicts.values())
    assert set(records[0]) >= {"claim", "published", "measured", "unit", "ratio", "verdict", "measured_conditions"}
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "not reproduced (margin 25%)" in report
    assert "Power softmax is 2.75x faster" in report and "(Zama, concrete-ml" in report


def test_a_range_claim_counts_the_margin_on_both_ends():
    def finding(measured):
        return Finding("m", "s", "src", (3.6, 11.3), "", measured, "", "x", 0.25)

    assert finding(3.6 / 1.25).verdict == REPRODUCED and finding(11.3 * 1.25).verdict == REPRODUCED
    assert finding(2.8).verdict == NOT_REPRODUCED and finding(15.0).verdict == NOT_REPRODUCED
    assert finding(None).verdict == NOT_MEASURABLE and finding(math.nan).verdict == NOT_MEASURABLE


def test_every_claim_names_valid_cells_and_unknown_ids_are_refused():
    for claim in claims.CLAIMS.values():
        cells = claims.cells([claim.id], HarnessConfig())
        assert cells and all(c.harness.keys() == asdict(HarnessConfig()).keys() for c in cells)
    with pytest.raises(ConfigError, match="claims=\\['nope'\\] unknown; choose among zama_pbs"):
        claims.cells(["nope"], HarnessConfig())
