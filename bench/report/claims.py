"""The report's Claims section, and claims.jsonl beside it: each claim of the run's `claims=[...]`
(bench/claims.py) judged on the run's rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.claims import NOT_REPRODUCED, REPRODUCED, Finding, findings
from bench.report.render import Block
from bench.report.tables import Table

CLAIMS_FILE = "claims.jsonl"
NOTE = (
    "Each claim's published figure against this run's, with the conditions of each. Speed-ups are "
    "compared as ratios (published hardware differs: GPUs, other libraries); `reproduced` means "
    "within the stated margin of the published figure or range."
)


def figure(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if unit == "x":
        return f"{value:.2f}x"
    if unit.startswith("share"):
        return f"{value:.0%}"
    return f"{value:,.0f} {unit}"


def published_text(f: Finding) -> str:
    if f.published is None:
        return "–"
    low, high = f.published
    return figure(low, f.unit) if low == high else f"{figure(low, f.unit)}–{figure(high, f.unit)}"


def ratio_text(f: Finding) -> str:
    return f"{f.ratio:.2f}" if f.ratio is not None else "–"


def claims_table(found: list[Finding], commands: list[str] | None = None) -> Table:
    """Claim, published figure and conditions, this suite's, their ratio and the verdict with its
    reason; given the `commands` behind each finding (README), compact: conditions and reasons are
    left to docs/results.md."""
    marks = {REPRODUCED: "", NOT_REPRODUCED: "bad"}

    def row(f: Finding, command: str | None) -> dict[str, str]:
        if command:
            return {"claim": f.statement, "published": published_text(f), "this suite": figure(f.measured, f.unit),
                    "ratio": ratio_text(f), "verdict": f.verdict, "command": f"`{command}`"}  # fmt: skip
        return {
            "claim": f.statement,
            "published": f"{published_text(f)}\n{f.published_conditions}\n({f.source})",
            "this suite": f"{figure(f.measured, f.unit)}\n{f.measured_conditions}",
            "ratio": ratio_text(f),
            "verdict": f"{f.verdict} (margin {f.margin:.0%})" + (f"\n{f.reason}" if f.reason else ""),
        }

    data = pd.DataFrame(
        [row(f, c) for f, c in zip(found, commands or [None] * len(found), strict=True)], index=[f.claim for f in found]
    )
    verdict_marks = pd.DataFrame("", index=data.index, columns=data.columns)
    verdict_marks["verdict"] = [marks.get(f.verdict, "") for f in found]
    return Table(data, marks=verdict_marks, index_name="id", wrap=tuple(data.columns), lines=True)


def claim_ids(manifests: dict[str, dict]) -> list[str]:
    """The claims the run's jobs name (`claims=[...]`), in order, each once."""
    ids = [i for m in manifests.values() for i in (m.get("config") or {}).get("claims") or []]
    return list(dict.fromkeys(ids))


def claim_blocks(frame: pd.DataFrame, manifests: dict[str, dict], out: Path) -> list[Block]:
    ids = claim_ids(manifests)
    if not ids:
        return []
    found = findings(frame, ids)
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(f.record()) for f in found]
    (out / CLAIMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [("h2", "Claims"), ("p", f"{NOTE} The same rows are in {CLAIMS_FILE}."), ("table", claims_table(found))]
