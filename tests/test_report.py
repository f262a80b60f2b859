"""tinykd.report: figures, the self-contained report.html and the summary table."""
from __future__ import annotations

import copy
import json
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tinykd.report import FIGURE_KEYS, format_bytes, format_count, make_figures, summary_rows, write_report
from tinykd.report.figures import (confusion_figure, deployed_variant, improvement_figure, size_points,
                                   training_figure, transfer_figure)
from tinykd.report.narrative import energy_sentence, mcu_sentence
from tinykd.report.summary import deployment_rows, format_kib, pareto_front

FIXTURE = Path(__file__).parent / "fixtures" / "report_metrics.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECIPE_ATTACK = "# note: <script>alert('x')</script> & friends\n"


def load_run() -> tuple[dict, list[dict], str]:
    """A fresh copy of the realistic fake run: metrics, history rows (string values, as from CSV) and recipe."""
    data = json.loads(FIXTURE.read_text())
    return copy.deepcopy(data["metrics"]), data["history"], data["recipe"]


class TableCells(HTMLParser):
    """Collects the text of each <td> of each <tbody> row, one list of rows per table body."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.in_body = self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self.in_body = True
            self.tables.append([])
        elif self.in_body and tag == "tr":
            self.tables[-1].append([])
        elif self.in_body and tag == "td":
            self.in_cell = True
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        elif tag == "td":
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.tables[-1][-1][-1] += data


def all_tables(page: str) -> list[list[list[str]]]:
    """Every table's body rows as lists of cell texts, in page order."""
    parser = TableCells()
    parser.feed(page)
    return parser.tables


def table_rows(page: str) -> list[list[str]]:
    """The summary table's (the first table's) body rows as lists of cell texts."""
    return all_tables(page)[0]


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


def test_report_embeds_every_figure(report):
    _, page = report
    assert page.count('src="data:image/png;base64,') == len(FIGURE_KEYS) == 6
    assert page.startswith("<!DOCTYPE html>")
    assert "default" in page and "mnist5k" in page


def test_report_is_self_contained(report):
    _, page = report
    for outside in ("http://", "https://", "<link", "<script", "@import", "url("):
        assert outside not in page


OVERFLOW_PROBE = """<script>window.addEventListener("load", () => { const p = document.createElement("pre");
p.id = "probe"; p.textContent = [...document.querySelectorAll(".scroll")].map(d => d.scrollWidth - d.clientWidth)
.concat([document.documentElement.scrollWidth - document.documentElement.clientWidth]).join(" ");
document.body.appendChild(p); });</script>"""


def test_tables_fit_an_800px_window(report, tmp_path):
    """In a real browser 800 px wide (785 inside the scroll bar) no table scrolls and the page does not either."""
    import re
    import shutil
    import subprocess
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless chromium to lay the page out")
    run_dir, page = report
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", OVERFLOW_PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=785,1200",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    excess = [int(v) for v in re.search(r'<pre id="probe">([-\d ]+)</pre>', dom).group(1).split()]
    assert len(excess) >= 2 and all(v <= 0 for v in excess), excess


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


def test_plain_run_has_no_deployment_section(report):
    _, page = report
    assert 'id="deployment"' not in page and "<h2>Deployment</h2>" not in page
    for part in ("mark met", "Parity", "microcontroller", "estimate", "Training energy", "Compression details"):
        assert part not in page, part
    assert page.count("<p>", page.index('class="findings"'), page.index("<h2>Summary</h2>")) == 4


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
    assert page.count('src="data:image/png;base64,') == len(FIGURE_KEYS)
    assert 'id="deployment"' in page  # a variant beyond the standard four brings the section


def test_sparse_run_still_renders(tmp_path):
    metrics = {"run": {"name": "bare", "dataset": "toy"},
               "variants": {"teacher": {"label": "Teacher", "accuracy": None}}}
    page = write_report(tmp_path, metrics, [], "").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(FIGURE_KEYS)
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
    metrics["variants"]["student_int8"]["confusion"] = [[1, 2, 3], [4, 5]]  # ragged, in the deployed variant
    paths = make_figures(metrics, history, tmp_path)
    assert paths["confusion"].read_bytes().startswith(PNG_MAGIC)
    assert png_size(paths["confusion"])[1] < 300  # the small placeholder, not a matrix


def test_deployed_variant_is_named_else_int8_else_fp32():
    metrics, _, _ = load_run()
    assert deployed_variant(metrics) == "student_int8"
    metrics["deploy"] = {"variant": "student"}
    assert deployed_variant(metrics) == "student"
    del metrics["deploy"], metrics["variants"]["student_int8"]
    assert deployed_variant(metrics) == "student"


def test_per_class_and_confusion_figures_show_the_deployed_variant():
    import matplotlib.pyplot as plt
    metrics, _, _ = load_run()
    metrics["variants"]["student_int8"]["confusion"][0][0] += 7  # tell its matrix from the fp32 student's
    transfer = transfer_figure(metrics)
    labels = [t.get_text() for t in transfer.axes[0].get_legend().get_texts()]
    assert labels[0] == "Teacher (fp32)" and labels[1].startswith("Student from scratch (fp32), ")
    assert labels[2].startswith("Distilled student (int8, ORT), ") and len(labels) == 3
    assert "int8 student" in transfer.axes[0].get_title(loc="left")
    confusion = confusion_figure(metrics)
    assert confusion.axes[0].get_title(loc="left").startswith("Distilled student (int8, ORT): confusion matrix")
    assert confusion.axes[0].get_images()[0].get_array().shape == (10, 10)
    int8 = sum(map(sum, metrics["variants"]["student_int8"]["confusion"]))
    assert f"({int8} samples)" in confusion.axes[0].get_title(loc="left")
    metrics["deploy"] = {"variant": "student"}
    assert confusion_figure(metrics).axes[0].get_title(loc="left").startswith("Distilled student (fp32)")
    plt.close("all")


def test_accuracy_bars_start_at_zero():
    import matplotlib.pyplot as plt
    metrics, _, _ = load_run()
    assert improvement_figure(metrics).axes[1].get_ylim()[0] == 0  # the retention panel
    assert transfer_figure(metrics).axes[0].get_ylim()[0] == 0
    plt.close("all")


def test_loss_axis_is_logarithmic_and_symlog_with_a_zero_term():
    import matplotlib.pyplot as plt
    metrics, history, _ = load_run()
    ax = training_figure(metrics, history).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    for row in history:
        if row["model"] == "student" and row["epoch"] == "3":
            row["loss/kd.hard"] = "0"
    ax = training_figure(metrics, history).axes[0]
    assert ax.get_yscale() == "symlog" and "linear within ±" in ax.get_ylabel()
    plt.close("all")


def test_ratios_of_the_fp32_student_when_there_is_no_int8_variant(tmp_path):
    metrics, history, _ = load_run()
    del metrics["variants"]["student_int8"]
    metrics["ratios"]["compared"] = "student vs teacher"
    page = write_report(tmp_path, metrics, history, "").read_text(encoding="utf-8")
    assert "The distilled student is 48× smaller" in page
    assert "(98.4 % → 97.2 %)" in page
    assert len(table_rows(page)) == 3


# --- compression / deployment extras --------------------------------------------------------------

# (key, label, runtime, accuracy, file bytes, params, MACs, batch-1 median ms, agreement with the fp32 student)
EXTRA_VARIANTS = (
    ("teacher_pruned", "Teacher, 60 % pruned", "pytorch", 0.979, 1_690_112, 421_642, 4_210_000, 0.40, None),
    ("student_pruned", "Pruned student (fp32)", "pytorch", 0.965, 126_540, 30_938, 301_000, 0.12, None),
    ("student_pruned_int8", "Pruned student (int8)", "ort_int8", 0.958, 35_068, 30_938, 301_000, 0.044, None),
    ("student_lowrank", "Low-rank student (fp32)", "pytorch", 0.961, 80_000, 19_500, 220_000, 0.10, None),
    ("student_lowrank_int8", "Low-rank student (int8)", "ort_int8", 0.955, 23_000, 19_500, 220_000, 0.04, None),
    ("student_qat", "QAT student (int8)", "ort_int8", 0.970, 35_100, 30_938, 301_000, 0.045, None),
    ("student_fp16", "Student (fp16, ORT)", "ort_fp16", 0.972, 64_000, 30_938, 301_000, 0.07, 0.999),
    ("student_dynamic_int8", "Student (dynamic int8)", "ort_dynamic_int8", 0.969, 34_000, 30_938, 301_000, 0.09,
     0.992),
    ("student_tflite", "Student (TFLite)", "tflite", 0.972, 125_000, 30_938, 301_000, 0.05, 1.0),
    ("student_tflite_int8", "Student (TFLite int8)", "tflite_int8", 0.951, 36_500, 30_938, 301_000, 0.03, 0.962),
    ("student_pte", "Student (ExecuTorch)", "executorch", 0.972, 130_000, 30_938, 301_000, 0.08, 1.0),
)
# size-vs-accuracy Pareto front of the fixture plus EXTRA_VARIANTS, smallest first
EXPECTED_FRONT = ["student_lowrank_int8", "student_dynamic_int8", "student_qat", "student_fp16", "teacher"]
KB = 1024


def energy(macs: int, weight_bytes: int, activation_bytes: int, dtype: str) -> dict:
    """An energy estimate shaped like tinykd.measure.energy.inference_energy's (45 nm constants, 1 MB SRAM)."""
    mac_pj = {"int8": 0.2 + 0.1, "fp16": 1.1 + 0.4, "fp32": 3.7 + 0.9}[dtype]
    compute, weights, activations = macs * mac_pj, weight_bytes * 12.5, activation_bytes * 12.5
    total = compute + weights + activations
    return {"label": "estimate", "source": "Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, 0.9 V)",
            "dtype": dtype, "memory": "sram_1mb", "compute_pj": compute, "weight_pj": weights,
            "activation_pj": activations, "total_pj": total, "total_uj": total * 1e-6}


def fit(board: str, flash: int, sram: int, model_bytes: int = 35_068, peak: int = 12_544) -> dict:
    """A fit row shaped like tinykd.deploy.mcu.Fit.as_dict() with the TFLM allowances (64 KB flash, 16 KB SRAM)."""
    need_flash, need_sram = model_bytes + 64 * KB, peak + 16 * KB
    return {"board": board, "model_bytes": model_bytes, "peak_sram_bytes": peak, "flash_needed": need_flash,
            "sram_needed": need_sram, "flash_available": flash, "sram_available": sram,
            "runtime_flash_bytes": 64 * KB, "runtime_sram_bytes": 16 * KB, "flash_margin": flash - need_flash,
            "sram_margin": sram - need_sram, "fits_flash": flash >= need_flash, "fits_sram": sram >= need_sram,
            "fits": flash >= need_flash and sram >= need_sram}


def with_deployment(metrics: dict) -> dict:
    """The fixture run extended with everything the compression and deployment stages add to metrics.json."""
    variants = metrics["variants"]
    for key, label, runtime, acc, size, params, macs, b1, parity in EXTRA_VARIANTS:
        variant = copy.deepcopy(variants["student_int8"])
        variant.update(label=label, runtime=runtime, accuracy=acc, macro_f1=acc - 0.001, params=params,
                       file_bytes=size, macs=macs, artifact=f"artifacts/{key}.bin", latency_ms_b1=b1,
                       latency_ms_b1_p90=b1 * 1.12, latency_ms_b32=b1 * 10,
                       latency={runtime: {"b1": {"median_ms": b1, "p90_ms": b1 * 1.12},
                                          "b32": {"median_ms": b1 * 10, "p90_ms": b1 * 11}}})
        if parity is not None:
            variant.update(agreement_with_fp32_student=parity, parity_flag=parity < 0.99)
        variants[key] = variant
    variants["teacher_pruned"]["sparsity"] = variants["student_pruned"]["sparsity"] = 0.6
    variants["teacher"]["energy"] = energy(4_210_000, 1_686_568, 200_000, "fp32")
    variants["student"]["energy"] = energy(301_000, 123_752, 60_000, "fp32")
    variants["student_int8"]["energy"] = energy(301_000, 30_938, 15_000, "int8")
    variants["student_fp16"]["energy"] = energy(301_000, 61_876, 30_000, "fp16")
    metrics["mcu"] = {
        "variant": "student_int8", "artifact": "artifacts/student.int8.onnx", "flash_bytes": 35_068,
        "peak_sram_bytes": 12_544, "peak_node": "/features/conv1/Conv", "runtime_flash_bytes": 64 * KB,
        "runtime_sram_bytes": 16 * KB, "target_board": "nano33ble",
        "boards": {"nano33ble": fit("nano33ble", 1024 * KB, 256 * KB), "pico": fit("pico", 2048 * KB, 264 * KB),
                   "tiny": fit("tiny", 64 * KB, 24 * KB)},
        "notes": {"nano33ble": "Arduino Nano 33 BLE Sense, nRF52840: 1 MB flash, 256 KB SRAM",
                  "pico": "Raspberry Pi Pico, RP2040: 2 MB external QSPI flash; 264 KB SRAM",
                  "tiny": "user-defined"}}
    metrics["training_energy"] = {
        "teacher": {"label": "teacher", "energy_kwh": 0.0031, "emissions_kg_co2eq": 0.0012, "duration_s": 540.2,
                    "method": "cpu_load", "estimate": True, "source": "CodeCarbon (offline)"},
        "student_scratch": {"label": "student_scratch", "energy_kwh": 0.00041, "emissions_kg_co2eq": 0.00016,
                            "duration_s": 71.0, "method": "cpu_load", "estimate": True,
                            "source": "CodeCarbon (offline)"},
        "student": {"label": "student", "energy_kwh": 0.00124, "emissions_kg_co2eq": 0.00048, "duration_s": 212.9,
                    "method": "cpu_load", "estimate": True, "source": "CodeCarbon (offline)"}}
    prune_row = {"step": 0, "sparsity": 0.0, "macs": 301_000, "params": 30_938, "nonzero_params": 30_938,
                 "val_accuracy": 0.9725}
    metrics["compression"] = {
        "prune_teacher": [{**prune_row, "macs": 4_210_000, "params": 421_642, "nonzero_params": 421_642},
                          {"step": 1, "sparsity": 0.6, "macs": 4_210_000, "params": 421_642,
                           "nonzero_params": 168_657, "val_accuracy": 0.98}],
        "prune_student": [prune_row] + [{**prune_row, "step": k, "sparsity": s, "nonzero_params": int(30_938 * (1 - s)),
                                         "val_accuracy": a} for k, s, a in ((1, 0.35, 0.97), (2, 0.53, 0.968),
                                                                            (3, 0.6, 0.9675))],
        "lowrank": {"layers": [{"layer": "features.2", "type": "Conv2d", "shape": [32, 16, 3, 3], "rank": 9,
                                "full_rank": 32, "energy": 0.91, "params_before": 4640, "params_after": 1616,
                                "factorized": True},
                               {"layer": "head.fc", "type": "Linear", "shape": [10, 64], "rank": 10, "full_rank": 10,
                                "energy": 1.0, "params_before": 650, "params_after": 650, "factorized": False}],
                    "params_before": 30_938, "params_after": 19_500, "energy": 0.9},
        "qat": {"epochs": 2, "lr": 0.0001, "fold_bn": True, "val_accuracy": 0.9712}}
    return metrics


@pytest.fixture(scope="module")
def deployment_report(tmp_path_factory) -> tuple[Path, str, dict]:
    """report.html of the fixture run with every compression / deployment extra; (run_dir, page, metrics)."""
    metrics, history, recipe = load_run()
    metrics = with_deployment(metrics)
    run_dir = tmp_path_factory.mktemp("deploy")
    page = write_report(run_dir, copy.deepcopy(metrics), history, recipe).read_text(encoding="utf-8")
    return run_dir, page, metrics


def find_table(page: str, first_cell: str) -> list[list[str]]:
    """The body rows of the table whose first row starts with ``first_cell``."""
    return next(rows for rows in all_tables(page) if rows and rows[0][0].startswith(first_cell))


@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(10, 0.5)], [0]),
    # 50 KB at 85 % beats 50 KB at 80 %; 120 KB at 89 % is beaten by 100 KB at 90 %; of two identical points
    # only the first counts; 400 KB at 95 % is beaten by 200 KB at 95 %; unusable sizes and accuracies are skipped
    ([(100, 0.90), (50, 0.85), (200, 0.95), (120, 0.89), (50, 0.80), (None, 0.99), (30, None), (400, 0.95),
      (200, 0.95), (0, 0.99), (float("nan"), 1.0)], [1, 0, 2]),
    ([(3, 0.7), (2, 0.8), (1, 0.9)], [2]),  # the smallest is also the most accurate: it beats everything
    ([(1, 0.7), (2, 0.8), (3, 0.9)], [0, 1, 2]),  # each step up in size buys accuracy
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_pareto_front_of_the_deployment_run():
    metrics = with_deployment(load_run()[0])
    points = size_points(metrics)
    assert len(points) == 4 + len(EXTRA_VARIANTS)
    front = pareto_front([(p["size"], p["accuracy"]) for p in points])
    assert [points[i]["variant"] for i in front] == EXPECTED_FRONT


def test_claims_are_met_at_their_lower_bound():
    teacher = {"accuracy": 0.8, "file_bytes": 1000, "macs": 100, "latency_ms_b1": 1.0}
    metrics = {"claims": {"accuracy_retention": [0.9, 0.97], "size_reduction_pct": [50, 70], "speedup": [2, 5]},
               "variants": {"teacher": teacher, "student_scratch": dict(teacher),
                            "at_bounds": {"accuracy": 0.72, "file_bytes": 500, "macs": 50, "latency_ms_b1": 0.5},
                            "beyond": {"accuracy": 0.8, "file_bytes": 100, "macs": 10, "latency_ms_b1": 0.1},
                            "short": {"accuracy": 0.719, "file_bytes": 501, "macs": 100, "latency_ms_b1": 0.51},
                            "unmeasured": {"accuracy": None}}}
    rows = {row["variant"]: row for row in deployment_rows(metrics)}
    assert list(rows) == ["at_bounds", "beyond", "short", "unmeasured"]  # no teacher, no scratch baseline
    assert rows["at_bounds"]["met"] == {"retention": True, "size_pct": True, "speedup_b1": True}
    assert rows["beyond"]["met"] == {"retention": True, "size_pct": True, "speedup_b1": True}  # above the range
    assert rows["short"]["met"] == {"retention": False, "size_pct": False, "speedup_b1": False}
    assert rows["unmeasured"]["met"] == {"retention": None, "size_pct": None, "speedup_b1": None}
    assert rows["at_bounds"]["size_pct"] == pytest.approx(50) and rows["at_bounds"]["size_factor"] == 2
    assert rows["beyond"]["macs_factor"] == 10 and rows["beyond"]["speedup_b1"] == pytest.approx(10)
    del metrics["claims"]
    assert all(set(row["met"].values()) == {None} for row in deployment_rows(metrics))


def test_deployment_report_adds_the_size_figure(deployment_report):
    run_dir, page, _ = deployment_report
    assert page.count('src="data:image/png;base64,') == len(FIGURE_KEYS)
    numbered = [f"Figure {i}. {title}." for i, title in enumerate(
        ("Improvement over the teacher vs the claims", "Latency vs accuracy", "File size vs accuracy", "Training",
         "Knowledge transfer per class", "Where the deployed student errs"), 1)]
    assert [page.index(n) for n in numbered] == sorted(page.index(n) for n in numbered)
    for key in FIGURE_KEYS:
        width, height = png_size(run_dir / "figures" / f"{key}.png")
        assert 500 <= width <= 1100 and 300 <= height <= 1100, (key, width, height)


def test_deployment_section_has_every_part(deployment_report):
    _, page, _ = deployment_report
    assert page.index("<h2>Figures</h2>") < page.index("<h2>Deployment</h2>") < page.index("<h2>Run facts</h2>")
    section = page[page.index('<section id="deployment">'):page.index("<h2>Run facts</h2>")]
    for heading in ("Against the seed claims", "Parity warnings", "Does it fit a microcontroller?",
                    "Energy per inference", "Training energy", "Compression details", "Pruning the teacher",
                    "Pruning the distilled student", "Low-rank factorisation", "Quantization-aware training"):
        assert heading in section, heading
    for outside in ("http://", "https://", "<link", "<script", "@import", "url("):
        assert outside not in page


def test_claims_table_marks_each_variant(deployment_report):
    _, page, _ = deployment_report
    rows = {row[0]: row[1:] for row in find_table(page, "Distilled student (fp32)")}
    assert len(rows) == 2 + len(EXTRA_VARIANTS)  # every student variant and the pruned teacher, not the scratch
    assert rows["Distilled student (int8, ORT)tiny_cnn · ort_int8"] == [
        "98.3 ✓ met", "97.9 % · 48× ✓ met", "14×", "9.1× ✓ met", "—"]
    assert rows["Teacher, 60 % prunedtiny_cnn · pytorch · 60 % of weights zero"] == [
        "99.5 ✓ met", "0.0 % · 1.0× ✗ not met", "1.0×", "1.0× ✗ not met", "—"]
    assert rows["Student (TFLite int8)tiny_cnn · tflite_int8"][-1] == "96.2"
    assert '<td class="num warn">96.2</td>' in page
    assert "claim ≥ 90 %" in page and "claim ≥ 50 %" in page and "claim ≥ 2×" in page


def test_microcontroller_table(deployment_report):
    _, page, _ = deployment_report
    rows = find_table(page, "Arduino Nano 33 BLE Sense")
    assert rows[0] == ["Arduino Nano 33 BLE Sense targetnano33ble", "98.2", "1,024", "926", "28.2", "256", "228",
                       "✓ fits"]
    assert rows[2] == ["tinyuser-defined", "98.2", "64.0", "−34.2", "28.2", "24.0", "−4.2", "✗ flash and SRAM"]
    assert page.count('<tr class="target">') == 1
    assert "Arduino Nano 33 BLE Sense" in page[page.index('<tr class="target">'):][:200]
    assert "+ 64.0 KB runtime allowance" in page and "+ 16.0 KB runtime allowance" in page
    assert "at /features/conv1/Conv" in page and "1 KB = 1024 bytes" in page


def test_energy_tables(deployment_report):
    _, page, _ = deployment_report
    rows = {row[0]: row[1:] for row in find_table(page, "Teacher (fp32)fp32 arithmetic")}
    assert rows["Teacher (fp32)fp32 arithmetic · memory sram_1mb"] == [
        "42.9", "19.4 (45 %)", "21.1 (49 %)", "2.50 (6 %)", "—"]
    assert rows["Distilled student (int8, ORT)int8 arithmetic · memory sram_1mb"][0::4] == ["0.665", "65×"]
    assert '<span class="tag estimate">estimate</span>' in page and "Horowitz" in page
    training = next(rows for rows in all_tables(page) if rows[0][1:3] == ["0.00310", "1.20"])
    assert training[0] == ["Teacher (fp32)", "0.00310", "1.20", "540", "cpu_load", "estimate"]
    assert [row[0] for row in training] == ["Teacher (fp32)", "Student from scratch (fp32)", "Distilled student (fp32)"]
    assert ("Student vs teacher: training the distilled student used 0.00124 kWh, 2.5× less than training the "
            "teacher (0.00310 kWh).") in page


def test_compression_tables(deployment_report):
    _, page, _ = deployment_report
    prune = next(rows for rows in all_tables(page) if len(rows) == 4 and rows[0][0] == "0")
    assert prune[-1] == ["3", "60.0", "30.9k", "12.4k", "301k", "96.8"]
    lowrank = find_table(page, "features.2")
    assert lowrank == [["features.2Conv2d", "32×16×3×3", "9 of 32", "91.0", "4.6k", "1.6k"],
                       ["head.fcLinear", "10×64", "10 of 10 (kept)", "100.0", "650", "650"]]
    assert "from 30.9k to 19.5k parameters (1.6× fewer)" in page
    assert "<dt>fold bn</dt><dd>True</dd>" in page


def test_deployment_findings(deployment_report):
    _, page, _ = deployment_report
    findings = page[page.index('class="findings"'):page.index("<h2>Summary</h2>")]
    assert "The int8 student fits the Arduino Nano 33 BLE Sense with 926 KB flash and 228 KB SRAM to spare" in findings
    # the summary table counts 1 KB = 1000 bytes; the board margins are binary, and the sentence says so
    assert "to spare (runtime allowance included; here 1 KB = 1024 bytes, as in the board" in findings
    assert "Estimated energy per inference: teacher 42.9 µJ vs int8 student 0.665 µJ, 65× less" in findings
    assert "Student (TFLite int8) agrees with the fp32 student on only 96.2 % of test inputs" in findings


def test_mcu_sentence_without_a_fit_or_a_target():
    metrics = with_deployment(load_run()[0])
    metrics["mcu"]["target_board"] = "tiny"
    assert mcu_sentence(metrics) == ("The int8 student does not fit the tiny: it overflows flash by 34.2 KB and "
                                     "SRAM by 4.2 KB (1 KB = 1024 bytes).")
    metrics["mcu"]["target_board"] = None
    assert mcu_sentence(metrics) == ("The int8 student fits 2 of the 3 microcontroller boards checked "
                                     "(Arduino Nano 33 BLE Sense and Raspberry Pi Pico).")
    del metrics["mcu"]
    assert mcu_sentence(metrics) == ""
    del metrics["variants"]["teacher"]["energy"]
    assert energy_sentence(metrics) == ""


@pytest.mark.parametrize("n, text", [(None, "—"), (35_068, "34.2"), (102_297, "99.9"), (102_400, "100"),
                                     (1_048_576, "1,024"), (-4352, "−4.2")])
def test_format_kib(n, text):
    assert format_kib(n) == text


def test_sparse_deployment_data_renders(tmp_path):
    metrics = {"run": {"name": "sparse", "dataset": "toy"},
               "variants": {"teacher": {"accuracy": 0.9, "energy": {"total_uj": None}},
                            "student_qat": {"accuracy": None, "parity_flag": True,
                                            "energy": {"total_uj": 1.5, "label": "estimate"}}},
               "mcu": {"target_board": "x", "boards": {"x": {}, "y": {"flash_needed": 10, "flash_available": 5}}},
               "training_energy": {"teacher": {"energy_kwh": float("nan")}, "odd": None},
               "compression": {"prune_student": [{}], "lowrank": {"layers": [{}]}, "qat": {"history": [{"a": 1}]}}}
    page = write_report(tmp_path, metrics, [], "").read_text(encoding="utf-8")
    section = page[page.index('<section id="deployment">'):]
    assert "Student (ExecuTorch)" not in section and "QAT student (int8)" in section
    assert "agree" in section and "Parity warnings" in section
    assert "✗ flash" in section and '<tr class="target">' in section
    assert "Training energy" in section and "Low-rank factorisation" in section and "1 entries" in section


def _with_speedups(metrics: dict, *, noisy: bool) -> dict:
    """The fixture run with what the measure stage adds: labelled speed-ups, the artifact to deploy, noise facts."""
    v = metrics["variants"]
    v["student_int8"]["latency"]["ort_int8"]["b1"]["noisy"] = noisy
    metrics["speedups"] = {"same_runtime": {"what": "teacher vs distilled student, both fp32 in ONNX Runtime", "b1": 3.5},
                           "int8_vs_fp32": {"what": "int8 vs fp32 distilled student, both in ONNX Runtime", "b1": 0.88},
                           "deployed": {"what": "teacher in its fastest runtime (ort_fp32) vs the artifact to deploy",
                                        "b1": 5.9}}
    metrics["deploy"] = {"variant": "student", "runtime": "ort_fp32", "artifact": "artifacts/student.onnx",
                         "latency_ms_b1": 0.05, "agreement": 1.0, "rule": "fastest at batch 1 that passes parity"}
    v["teacher"]["best_runtime"] = "ort_fp32"
    metrics["latency_quality"] = {"rounds": 5, "repeats": 400, "threads": 1, "max_p90_over_median": 2.1 if noisy else 1.1,
                                  "max_round_spread": 1.1, "noisy": ["student_int8 in ort_int8 at b1"] if noisy else []}
    metrics["health"] = {"dead_units": {"teacher": {"epoch": 1, "warning": "81 of 128 units of 'head.fc1' output 0"}}}
    return metrics


def test_findings_label_each_speedup_and_name_the_artifact_to_deploy():
    from tinykd.report.narrative import findings

    text = " ".join(findings(_with_speedups(load_run()[0], noisy=False)))
    assert "on the same runtime (both fp32 in ONNX Runtime) the distilled student is 3.5× faster" in text
    assert "int8 makes it 1.1× slower than its fp32 ONNX model" in text
    assert "the teacher in ort_fp32, the student as artifacts/student.onnx in ort_fp32" in text and "5.9×" in text
    assert "Deploy artifacts/student.onnx (ort_fp32, 0.05 ms at batch 1" in text
    assert "Latency warning" not in text
    assert "Training health: teacher: 81 of 128 units" in text
    assert "Latency warning: 1 timing(s) were noisy" in " ".join(findings(_with_speedups(load_run()[0], noisy=True)))


def test_deployment_section_times_every_variant_in_every_runtime():
    from tinykd.report.deploy import latency_block

    metrics = _with_speedups(load_run()[0], noisy=True)
    html = latency_block(metrics)
    rows = all_tables(html)[0]
    runtimes = sum(len(v["latency"]) for v in metrics["variants"].values())
    assert len(rows) == runtimes  # one row per variant and runtime
    assert sum("deploy this" in r[0] for r in rows) == 1 and "ORT fp32" in next(r[0] for r in rows if "deploy this" in r[0])
    assert html.count("noisy</span>") == 1
    assert "5 rounds" in html and "teacher vs distilled student, both fp32 in ONNX Runtime" in html


def test_run_facts_say_where_each_split_came_from_what_did_not_apply_and_both_thread_counts():
    from tinykd.report.page import render_page, run_facts

    metrics = load_run()[0]
    old = run_facts(metrics)
    assert "train 3,600 · val 400 · test 1,000" in old and "measurement threads: 1" in old  # a run from before
    run = metrics["run"]
    run["split_sizes"] = {"train": 51300, "val": 2700, "test": 10000}
    run["data_info"] = {"splits": {"train": "the rest of train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz",
                                   "val": "stratified 0.05 of train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz",
                                   "test": "predefined: t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz"},
                        "not_applied": ["test_fraction 0.2: the test split is the data's own (t10k-images-idx3-ubyte.gz"
                                        " + t10k-labels-idx1-ubyte.gz)"]}
    run["machine"] = {"cpu": "x86_64", "available_cores": 2, "train_threads": 2, "measure_threads": 1}
    run["spec"]["class_names"] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                  "Bag", "Ankle boot"]
    facts = run_facts(metrics)
    assert "<dt>Splits</dt><dd>train 51,300: the rest of train-images" in facts
    assert "<br>test 10,000: predefined: t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz</dd>" in facts
    assert "<dt>Not applied</dt><dd>test_fraction 0.2: the test split is the data&#x27;s own" in facts
    assert "training threads: 2<br>measurement threads: 1" in facts and "<br>threads:" not in facts
    assert "10 classes (T-shirt/top, Trouser, Pullover" in facts
    page = render_page(metrics, {}, "data:\n  test_fraction: 0.2\n")
    recipe = page[page.index("<h2>Recipe</h2>"):]
    assert recipe.index("Data settings below that did not apply: data.test_fraction 0.2") < recipe.index("<pre>")
