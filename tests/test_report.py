"""encbench-report on the stored golden run (tests/golden/README.md): files, images, plot kinds, tables."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bench.report.page import build, main
from bench.report.plots import KINDS
from bench.results import load

RUN_ID = "20261122-073709"
GOLDEN = Path(__file__).parent / "golden" / "results"
RUN = GOLDEN / RUN_ID
PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The bits of the report page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.classes: list[tuple[str, str]] = []  # (css class, text) of marked table cells
        self.links: list[str] = []
        self._tag, self._class = "", ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])
        self._tag, self._class = tag, attrs.get("class", "")

    def handle_data(self, data):
        if self._tag in ("h1", "h2", "h3") and data.strip():
            self.headings.append(data.strip())
        if self._tag == "td" and self._class:
            self.classes.append((self._class, data))

    def handle_endtag(self, tag):
        self._tag, self._class = "", ""


def is_image(path: Path) -> bool:
    head = path.read_bytes()[:512]
    return head.startswith(PNG) or (b"<svg" in head and head.lstrip()[:1] == b"<")


def copy_run(tmp: Path, with_handmade: bool = True) -> Path:
    target = tmp / "results" / RUN_ID
    shutil.copytree(RUN, target, ignore=None if with_handmade else shutil.ignore_patterns("handmade"))
    if not with_handmade:
        shutil.rmtree(target / "handmade", ignore_errors=True)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build(RUN, tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def page(built) -> Page:
    return Page((built / "index.html").read_text(encoding="utf-8"))


def test_build_writes_html_and_markdown_under_the_run_id(built):
    assert built.name == RUN_ID
    assert (built / "index.html").stat().st_size > 0
    assert (built / "report.md").stat().st_size > 0


def test_every_image_exists_and_is_a_real_image(built, page):
    assert page.images
    for src in page.images:
        assert not src.startswith(("http:", "https:", "/")), src  # opens from disk, relative to the page
        assert is_image(built / src), src
    assert sorted(p.name for p in built.glob("*.png")) == sorted(page.images)  # nothing stale or unreferenced


def test_page_is_self_contained(built):
    text = (built / "index.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "<script" not in text
    assert all(not link.startswith(("http:", "https:", "//")) for link in page.links)


def test_golden_run_has_data_for_every_plot_kind(page):
    assert len(page.images) == len(KINDS)
    assert [src.split("-", 2)[2].removesuffix(".png") for src in page.images] == [k.name for k in KINDS]
    for kind in KINDS:
        assert kind.title in page.headings


def test_kinds_without_data_are_left_out(tmp_path):
    """Plaintext only: no counters, no other backend, zero errors -> breakdown, scaling, setup only."""
    out = build(copy_run(tmp_path, with_handmade=False), tmp_path / "reports")
    page = Page((out / "index.html").read_text(encoding="utf-8"))
    assert [src.split("-", 2)[2].removesuffix(".png") for src in page.images] == ["breakdown", "scaling", "setup"]
    for title in ("Overhead against plaintext", "Communication", "PBS and depth per op", "Accuracy"):
        assert title not in page.headings
    assert all(is_image(out / src) for src in page.images)


def test_rebuild_removes_stale_figures(tmp_path):
    run = copy_run(tmp_path, with_handmade=False)
    stale = tmp_path / "reports" / RUN_ID / "fig-4-communication.png"  # as if an earlier build had drawn it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG)
    out = build(run, tmp_path / "reports")
    assert not stale.exists() and len(list(out.glob("*.png"))) == 3


def test_manifest_is_on_top(built, page):
    first = json.loads((RUN / "0" / "manifest.json").read_text())
    assert page.headings.index("Run manifest") < page.headings.index("Summary") < page.headings.index("Plots")
    html = (built / "index.html").read_text(encoding="utf-8")
    assert first["git_commit"] in html and first["cpu_model"] in html
    assert "HAND-MADE FIXTURE" in html  # the hand-made job says what it is
    md = (built / "report.md").read_text(encoding="utf-8")
    assert md.index("## Run manifest") < md.index("## Plots") < md.index("## Tables")


def test_accuracy_cliffs_cannot_be_missed(built, page):
    frame = load(RUN)
    n_cliffs = int((frame["accurate"] == False).sum())  # noqa: E712 (None is neither)
    assert n_cliffs == 13
    html = (built / "index.html").read_text(encoding="utf-8")
    assert f"ACCURACY CLIFF: {n_cliffs} op row(s)" in html
    assert html.index("ACCURACY CLIFF") < html.index("<h2>Plots</h2>")  # above the plots
    cliff_cells = [text for cls, text in page.classes if "cliff" in cls]
    assert len(cliff_cells) >= 2 * n_cliffs  # the cliff table and the latency pivot
    assert any(text.startswith("⚠CLIFF") for text in cliff_cells)
    md = (built / "report.md").read_text(encoding="utf-8")
    assert "**⚠CLIFF 8.1 s**" in md  # tenseal seq_len 32 softmax, bold in the markdown pivot


def test_insecure_cells_are_marked_wherever_they_appear(built, page):
    insecure = [text for cls, text in page.classes if "insecure" in cls]
    assert any("⚠INSECURE" in text for text in insecure)
    md = (built / "report.md").read_text(encoding="utf-8")
    assert "⚠ INSECURE: 1 cell(s)" in md
    rows_with_8192 = [line for line in md.splitlines() if "poly_modulus_degree=8192" in line]
    assert rows_with_8192 and all("⚠INSECURE" in line for line in rows_with_8192)


def test_tables_per_workload_and_failures_with_messages(built):
    md = (built / "report.md").read_text(encoding="utf-8")
    assert "### attention_head: latency per op (median over repeats)" in md
    assert "### attention_head: counters per op" in md
    assert "pbs 8,192" in md and "rounds 82" in md and "depth 5" in md
    failures = md[md.index("## Failed, skipped and timed-out cells") :]
    for status, message in (("skipped", "softmax=exact is not supported"), ("timeout", "harness.timeout_s=900"),
                            ("error", "rsqrt input outside the Newton range")):  # fmt: skip
        assert f"**{status}**" in failures and message in failures
    for line in md.splitlines():  # no stray pipes breaking markdown table columns
        if line.startswith("| cell | op |"):
            assert line.count("|") == 6


def test_results_dir_with_several_runs_uses_the_named_or_latest_run(tmp_path):
    copy_run(tmp_path, with_handmade=False)
    later = tmp_path / "results" / "20261123-000000"
    later.mkdir()
    rows = [json.loads(line) for line in (RUN / "0" / "rows.jsonl").read_text().splitlines()]
    text = "".join(json.dumps({**r, "run_id": later.name, "finished_at": "2026-11-23T00:00:01+00:00"}) + "\n"
                   for r in rows)  # fmt: skip
    (later / "rows.jsonl").write_text(text)
    assert build(tmp_path / "results", tmp_path / "r").name == later.name
    assert build(tmp_path / "results" / RUN_ID, tmp_path / "r").name == RUN_ID


def test_a_run_where_every_cell_failed_still_reports(tmp_path):
    rows = [json.loads(line) for line in (RUN / "handmade" / "rows.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r.get("status") not in (None, "ok")]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in failed))
    out = build(tmp_path / "run", tmp_path / "r")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "No plot has data in this run." in md and not list(out.glob("*.png"))
    assert "timeout" in md and "No manifest.json was found" in md


def test_main_prints_both_paths_and_never_reruns_cells(tmp_path, capsys, monkeypatch):
    import bench.cells

    def forbidden(*args, **kwargs):
        raise AssertionError("the report must not run cells")

    monkeypatch.setattr(bench.cells, "run_cell", forbidden)
    job = RUN / "0"  # a single job directory of the run is a valid PATH too
    assert main([str(job), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / RUN_ID / "index.html"), str(tmp_path / RUN_ID / "report.md")]
    assert "BasicLauncher" in (tmp_path / RUN_ID / "report.md").read_text(encoding="utf-8")  # its manifest


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])  # no such path; a dir without rows
def test_main_exits_2_on_unusable_path(tmp_path, capsys, make):
    assert main([str(make(tmp_path)), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("encbench-report: error:") and "\n" not in err


SHOW_LOADED = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.title = 'loaded ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length;
});</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_every_plot_loads_in_a_headless_browser(built):
    """A copy of the page with a probe script: the browser reports how many images actually decoded."""
    probe = built / "probe.html"
    probe.write_text((built / "index.html").read_text(encoding="utf-8").replace("</body>", SHOW_LOADED))
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    probe.unlink()
    assert f"<title>loaded {len(KINDS)}/{len(KINDS)}</title>" in out.stdout


@pytest.fixture(scope="module")
def frame():
    from bench.report.frame import read_run

    return read_run(RUN)[0]


def visible_axes(fig):
    return [ax for ax in fig.get_axes() if ax.get_visible()]


def test_scaling_has_a_panel_per_swept_size_with_fitted_slopes_and_backend_colours(frame):
    from matplotlib import pyplot as plt

    from bench.report.plots_latency import scaling
    from bench.report.style import colour

    fig = scaling(frame)
    try:
        axes = visible_axes(fig)
        assert [ax.get_title(loc="left").split(" (")[0] for ax in axes] == [
            "attention_head: latency vs seq_len", "attention_head: latency vs d_model"]  # fmt: skip
        assert axes[0].get_xscale() == "log" and axes[0].get_yscale() == "log"
        lines = {line.get_label().replace("\n", " "): line for line in axes[0].get_lines()}
        concrete = next(label for label in lines if label.startswith("concrete"))
        tot = frame[(frame["op"] == "total") & (frame["backend"] == "concrete") & (frame["n_bits"] == 6)]
        lat = tot.sort_values("seq_len")["latency_s"].to_numpy()
        assert concrete.endswith(f"slope {np.log(lat[1] / lat[0]) / np.log(2):.2f}")
        for label, line in lines.items():
            assert line.get_color() == colour(label.split()[0])
    finally:
        plt.close(fig)


def test_accuracy_plot_shows_cliffs_at_every_size(frame):
    from matplotlib import pyplot as plt

    from bench.report.plots_counters import accuracy

    fig = accuracy(frame)
    try:
        per_op, n_bits = visible_axes(fig)
        assert "13 ABOVE TOLERANCE" in per_op.get_title(loc="left")
        labels = [t.get_text().replace("\n", " ") for t in per_op.get_legend().get_texts()]
        assert any(label.startswith("tenseal") and "seq=32" in label for label in labels)  # not the main size
        assert n_bits.get_xlabel().startswith("n_bits")
    finally:
        plt.close(fig)
