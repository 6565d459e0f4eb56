"""The report's layout in a real browser: no table's first column (the cell label) runs over the next column.

Labels are as long as the cells' variant lists: a multi-switch workload's `[softmax=...,norm=...,gelu=...]`
has no space to wrap at. Headless Chromium lays the page out; a probe script measures every first-column
cell and writes what it found into the DOM, which `--dump-dom` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote

import pytest

from bench.report.page import build

RUN_ID = "20261122-073709"
RUN = Path(__file__).parent / "golden" / "results" / RUN_ID
# what the hand-made cells' variant becomes in the long-label copy: four switches, as the block workload has
LONG_VARIANT = "{},norm=exact,gelu=poly,head_merge=2"
BROWSER = shutil.which("chromium")

# For the first cell of every row of every table: does its content reach past the cell's right edge (its own
# scroll overflow, or a line of its text ending right of the cell, i.e. over the next column)?
PROBE = """<script>window.addEventListener('load', () => {
  const found = [];
  document.querySelectorAll('table').forEach((table, t) => {
    for (const row of table.rows) {
      const cell = row.cells[0];
      const range = document.createRange();
      range.selectNodeContents(cell);
      const right = cell.getBoundingClientRect().right;
      const text = Math.max(right - 1, ...[...range.getClientRects()].map(r => r.right));
      found.push({table: t, label: cell.textContent, scroll: cell.scrollWidth, client: cell.clientWidth,
                  text_right: text, cell_right: right,
                  next_left: row.cells[1] ? row.cells[1].getBoundingClientRect().left : null});
    }
  });
  const out = document.createElement('pre');
  out.id = 'layout-probe';
  out.textContent = encodeURIComponent(JSON.stringify(found));
  document.body.appendChild(out);
});</script></body>"""


def long_label_run(tmp: Path) -> Path:
    """A copy of the golden run whose hand-made cells (tenseal, concrete, crypten) carry four variant switches."""
    run = tmp / "results" / RUN_ID
    shutil.copytree(RUN, run)
    rows_file = run / "handmade" / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    for row in rows:
        if row.get("workload") == "attention_head" and row.get("variant"):
            row["variant"] = LONG_VARIANT.format(row["variant"])
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def first_column_cells(page: Path, width: int) -> list[dict]:
    """Lay `page` out in a window `width` pixels wide; the probe's findings."""
    probe = page.with_name("layout-probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},3000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    probe.unlink()
    found = re.search(r"<pre id=\"layout-probe\">([^<]*)</pre>", out.stdout)
    assert found, f"the probe did not run; chromium said: {out.stderr[-2000:]}"
    return json.loads(unquote(found.group(1)))


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="needs chromium (apt-get install chromium)")
@pytest.mark.parametrize("width", [1300, 800])
@pytest.mark.parametrize("labels", ["golden", "long"])
def test_first_column_labels_stay_inside_their_cells(tmp_path, labels, width):
    run = RUN if labels == "golden" else long_label_run(tmp_path)
    page = build(run, tmp_path / "reports") / "index.html"
    cells = first_column_cells(page, width)
    text = page.read_text(encoding="utf-8")
    assert len({c["table"] for c in cells}) == text.count("<table>") > 5  # every table was measured
    if labels == "long":  # 13 cliff rows, the insecure cell, 9 tenseal + concrete rows in each pivot, 2 failures
        assert sum("gelu=poly,head_merge=2" in c["label"] for c in cells) >= 13 + 1 + 2 * 9 + 2
    overflowing = dict.fromkeys(  # one line per table and label
        f"table {c['table']}: {c['label']!r} (content {c['scroll']} px in a {c['client']} px cell; text ends at "
        f"{c['text_right']:.0f}, the cell at {c['cell_right']:.0f}, the next column starts at {c['next_left']})"
        for c in cells
        if c["scroll"] > c["client"] or c["text_right"] > c["cell_right"] + 0.5
    )
    assert not overflowing, "first-column labels run over the next column:\n" + "\n".join(overflowing)
