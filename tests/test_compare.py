"""tinykd compare: runs of the tiny recipe side by side, folders that are not runs skipped with a note."""
import json

import pytest

from tinykd.cli import main
from tinykd.compare import compare, pareto, read_run
from tinykd.pipeline import run
from tinykd.recipe import load_recipe

TINY = {
    "data": {"name": "digits"},
    "teacher": {"model": "cnn", "kwargs": {"widths": [8, 16], "hidden": 32},
                "train": {"epochs": 1, "batch_size": 64, "lr": 0.005, "device": "cpu"}},
    "student": {"model": "cnn", "kwargs": {"widths": [4, 8], "hidden": 16},
                "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "device": "cpu"}},
    "quantize": {"calibration_samples": 64, "keep_fp32": "none"},
    "measure": {"warmup": 1, "repeats": 5, "rounds": 1, "batch_sizes": [1]},
    "report": {"enabled": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, hidden in (("narrow", 8), ("wide", 32)):
        run(load_recipe(TINY, [f"output_dir={root}", f"name={name}", f"student.kwargs.hidden={hidden}"]),
            progress=False)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    (root / "stopped").mkdir()
    (root / "stopped" / "status.json").write_text(json.dumps({"status": "failed"}))
    (root / "readme.txt").write_text("a file")
    return root


def test_compare_prints_a_table_and_writes_a_page(runs, capsys):
    code = main(["compare", *sorted(str(p) for p in runs.iterdir())])
    out = capsys.readouterr().out
    assert code == 0
    assert "narrow" in out and "wide" in out and "int8 %" in out
    assert "skipped" in out and "notes: not a tinykd run (no metrics.json)" in out
    assert "stopped: a run that did not finish (failed" in out and "readme.txt: not a folder" in out
    page = runs / "compare.html"
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1 and "narrow" in html and "wide" in html
    # the wider student has more parameters: each run's own numbers, read from its metrics.json
    rows = {r: read_run(runs / r) for r in ("narrow", "wide")}
    assert rows["wide"].params > rows["narrow"].params and rows["narrow"].variant == "student_int8"
    m = json.loads((runs / "wide" / "metrics.json").read_text())
    assert rows["wide"].accuracy == m["variants"]["student_int8"]["accuracy"]
    assert rows["wide"].file_bytes == m["variants"]["student_int8"]["file_bytes"]


def test_compare_to_a_chosen_page(runs, tmp_path, capsys):
    out = tmp_path / "cmp" / "two.html"
    assert compare([runs / "narrow", runs / "wide"], out=out) == out and out.is_file()


def test_no_run_among_the_paths_is_an_error(runs, capsys):
    code = main(["compare", str(runs / "notes"), str(runs / "readme.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 2 path(s) given is a finished tinykd run" in err and "fix:" in err


def test_pareto_of_runs():
    class R:
        def __init__(self, size, acc):
            self.file_bytes, self.accuracy = size, acc
    rows = [R(10, 0.9), R(20, 0.95), R(30, 0.93), R(5, 0.5), R(None, 0.99)]
    assert pareto(rows, "file_bytes") == {0, 1, 3}
