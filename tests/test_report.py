"""tinykd.report: figures, the self-contained report.html and the summary table."""
from __future__ import annotations

import copy
import json
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tinykd.report import FIGURE_KEYS, format_bytes, format_count, make_figures, summary_rows, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_metrics.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECIPE_ATTACK = "# note: <script>alert('x')</script> & friends\n"


def load_run() -> tuple[dict, list[dict], str]:
    """A fresh copy of the realistic fake run: metrics, history rows (string values, as from CSV) and recipe."""
    data = json.loads(FIXTURE.read_text())
    return copy.deepcopy(data["metrics"]), data["history"], data["recipe"]


class TableCells(HTMLParser):
    """Collects the text of each <td> of each <tbody> row."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_body = self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append([])
        elif self.in_body and tag == "td":
            self.in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        elif tag == "td":
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data


def table_rows(page: str) -> list[list[str]]:
    """The summary table's body rows as lists of cell texts."""
    parser = TableCells()
    parser.feed(page)
    return parser.rows


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return struct.unpack(">II", path.read_bytes()[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """report.html written from the fixture run with a hostile recipe line; (run_dir, page text)."""
    metrics, history, recipe = load_run()
    run_dir = tmp_path_factory.mktemp("run")
    path = write_report(run_dir, metrics, history, recipe + RECIPE_ATTACK)
    assert path == run_dir / "report.html"
    return run_dir, path.read_text(encoding="utf-8")


def test_report_embeds_the_five_figures(report):
    _, page = report
    assert page.count('src="data:image/png;base64,') == 5
    assert page.startswith("<!DOCTYPE html>")
    assert "default" in page and "mnist5k" in page


def test_report_is_self_contained(report):
    _, page = report
    for outside in ("http://", "https://", "<link", "<script", "@import", "url("):
        assert outside not in page


def test_figure_files_are_valid_pngs(report):
    run_dir, _ = report
    for key in FIGURE_KEYS:
        path = run_dir / "figures" / f"{key}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), key
        assert 10_000 < len(data) < 1_000_000, key
        width, height = png_size(path)
        assert 500 <= width <= 1100 and 300 <= height <= 1100, (key, width, height)


def test_writes_leave_no_temp_files(report):
    run_dir, _ = report
    assert sorted(p.name for p in run_dir.iterdir()) == ["figures", "report.html"]
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(f"{k}.png" for k in FIGURE_KEYS)


def test_summary_table_has_a_formatted_row_per_variant(report):
    _, page = report
    rows = table_rows(page)
    assert [row[0] for row in rows] == ["Teacher (fp32)cnn · pytorch",
                                       "Student from scratch (fp32)tiny_cnn · pytorch",
                                       "Distilled student (fp32)tiny_cnn · pytorch",
                                       "Distilled student (int8, ORT)tiny_cnn · ort_int8"]
    teacher, _, _, int8 = rows
    assert teacher[1:] == ["98.4", "0.984", "100.0", "422k", "1.7 MB", "4.2M", "0.41", "0.459", "5.1"]
    assert int8[1:] == ["96.7", "0.967", "96.9", "30.9k", "35.1 KB", "301k", "0.045", "0.0504", "0.48"]


def test_best_value_per_column_is_highlighted(report):
    _, page = report
    assert page.count('class="num best"') >= 9
    assert '<td class="num best">98.4</td>' in page  # teacher is the most accurate
    assert '<td class="num best">0.045</td>' in page  # int8 student is the fastest
    assert '<td class="num best">100.0</td>' not in page  # the teacher agreeing with itself does not count


def test_recipe_and_names_are_escaped(report):
    _, page = report
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    assert "<script" not in page


def test_findings_compare_with_the_claims(report):
    _, page = report
    assert "48× smaller" in page and "9.1× faster" in page
    assert "keeps 98.3 % of the teacher&#x27;s accuracy" in page
    assert "is above the claimed 2–3.3×" in page and "above the claimed 90–97 %" in page


def test_variant_with_missing_metrics_renders_dashes(tmp_path):
    metrics, history, recipe = load_run()
    keys = ("accuracy", "macro_f1", "params", "file_bytes", "macs", "latency_ms_b1", "latency_ms_b1_p90",
            "latency_ms_b32", "agreement_with_teacher", "per_class_accuracy", "confusion", "latency")
    metrics["variants"]["student_pruned"] = {"label": "Pruned <student>", **{k: None for k in keys}}
    metrics["variants"]["student_int8"].update(latency_ms_b1=None, latency_ms_b1_p90=None, latency=None)
    page = write_report(tmp_path, metrics, history, recipe).read_text(encoding="utf-8")
    rows = table_rows(page)
    assert rows[-1] == ["Pruned <student>"] + ["—"] * 9
    assert rows[3][7:9] == ["—", "—"]
    assert "Pruned &lt;student&gt;" in page
    assert page.count('src="data:image/png;base64,') == 5


def test_sparse_run_still_renders(tmp_path):
    metrics = {"run": {"name": "bare", "dataset": "toy"},
               "variants": {"teacher": {"label": "Teacher", "accuracy": None}}}
    page = write_report(tmp_path, metrics, [], "").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 5
    assert "no ratios were measured" in page
    assert table_rows(page) == [["Teacher"] + ["—"] * 9]


def test_make_figures_returns_paths_by_key(tmp_path):
    metrics, history, _ = load_run()
    history = [row for row in history if row["model"] != "student"]  # falls back to another model's curves
    paths = make_figures(metrics, history, tmp_path / "figs")
    assert list(paths) == list(FIGURE_KEYS)
    assert all(p == tmp_path / "figs" / f"{k}.png" and p.read_bytes().startswith(PNG_MAGIC) for k, p in paths.items())


def test_summary_rows_order_and_values():
    metrics, _, _ = load_run()
    variants = metrics["variants"]
    metrics["variants"] = {"extra": {"label": "Extra", "accuracy": 0.5}, **dict(reversed(list(variants.items())))}
    rows = summary_rows(metrics)
    assert [r["variant"] for r in rows] == ["teacher", "student_scratch", "student", "student_int8", "extra"]
    assert rows[0] == {"variant": "teacher", "label": "Teacher (fp32)", "accuracy": 0.984, "macro_f1": 0.9839,
                       "agreement": 1.0, "params": 421642, "file_bytes": 1690112, "macs": 4210000,
                       "latency_ms_b1": 0.41, "latency_ms_b1_p90": 0.4592, "latency_ms_b32": 5.1}
    assert rows[-1]["accuracy"] == 0.5 and rows[-1]["latency_ms_b1"] is None and rows[-1]["agreement"] is None


@pytest.mark.parametrize("n, text", [(None, "—"), (0, "0 B"), (512, "512 B"), (35_068, "35.1 KB"),
                                     (126_540, "127 KB"), (999_999, "1.0 MB"), (1_690_112, "1.7 MB"),
                                     (2_500_000_000, "2.5 GB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("n, text", [(None, "—"), (0, "0"), (950, "950"), (30_938, "30.9k"), (421_642, "422k"),
                                     (4_210_000, "4.2M"), (1_500_000_000, "1.5G")])
def test_format_count(n, text):
    assert format_count(n) == text


def test_findings_say_within_and_below_the_claims(tmp_path):
    metrics, _, _ = load_run()
    metrics["ratios"].update(speedup_b1=3.0, accuracy_retention=0.85)
    page = write_report(tmp_path, metrics, [], "").read_text(encoding="utf-8")
    assert "batch-1 speed-up (3.0×) is within the claimed 2–5×" in page
    assert "accuracy retention (85.0 %) is below the claimed 90–97 %" in page


def test_malformed_metrics_give_a_placeholder_figure(tmp_path):
    metrics, history, _ = load_run()
    metrics["variants"]["student"]["confusion"] = [[1, 2, 3], [4, 5]]  # ragged
    paths = make_figures(metrics, history, tmp_path)
    assert paths["confusion"].read_bytes().startswith(PNG_MAGIC)
    assert png_size(paths["confusion"])[1] < 300  # the small placeholder, not a matrix


def test_ratios_of_the_fp32_student_when_there_is_no_int8_variant(tmp_path):
    metrics, history, _ = load_run()
    del metrics["variants"]["student_int8"]
    metrics["ratios"]["compared"] = "student vs teacher"
    page = write_report(tmp_path, metrics, history, "").read_text(encoding="utf-8")
    assert "The distilled student is 48× smaller" in page
    assert "(98.4 % → 97.2 %)" in page
    assert len(table_rows(page)) == 3
