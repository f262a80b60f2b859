"""tinykd search: the search section's checks (each error before anything trains), trials that reuse one teacher,
pruning, constraints, the Pareto report, the best recipe, and two workers sharing one study."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinykd.cli import main
from tinykd.errors import RecipeError
from tinykd.recipe import load_recipe
from tinykd.search import METRICS, parse_search, search
from tinykd.search.space import check_space
from tinykd.search.study import ReportToTrial

optuna = pytest.importorskip("optuna")

# A trial of this recipe takes a few seconds on one thread: digits (8×8), one-epoch teacher, two-epoch students,
# int8 without parity fallbacks, one short timing round.
TINY = {
    "name": "tiny",
    "data": {"name": "digits"},
    "teacher": {"model": "cnn", "kwargs": {"widths": [8, 16], "hidden": 32},
                "train": {"epochs": 1, "batch_size": 64, "lr": 0.005, "device": "cpu"}},
    "student": {"model": "cnn", "kwargs": {"widths": [4, 8], "hidden": 16},
                "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "device": "cpu"}},
    "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
    "quantize": {"calibration_samples": 64, "keep_fp32": "none"},
    "measure": {"warmup": 1, "repeats": 5, "rounds": 1, "batch_sizes": [1]},
    "search": {
        "trials": 3,
        "space": {"distill.losses.0.temperature": {"float": [1, 8], "log": True},
                  "distill.losses.0.alpha": {"float": [0.1, 0.9]},
                  "student.kwargs.hidden": {"int": [8, 24], "step": 8}},
    },
}


def tiny(tmp_path: Path, **search) -> dict:
    recipe = json.loads(json.dumps(TINY))
    recipe["output_dir"] = str(tmp_path / "runs")
    recipe["search"].update(search)
    return recipe


def write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- errors, each before the search folder exists -----------------------------------------------------------------

ERRORS = [
    ({"search": None}, "the recipe has no search section"),
    ({"space": {}}, "search.space: the search space is empty"),
    ({"space": {"studnet.kwargs.hidden": {"int": [8, 16]}}}, "'studnet' is not in the recipe"),
    ({"space": {"student.train.lrr": {"float": [1e-3, 1e-2]}}}, "did you mean 'lr'?"),
    ({"space": {"distill.losses.2.alpha": {"float": [0.1, 0.9]}}}, "'distill.losses' is a list of 1 item(s)"),
    ({"space": {"seed.x": {"int": [0, 3]}}}, "'seed' is a value (0), not a section"),
    ({"space": {"distill.losses.0.alpha": {"float": [0.9, 0.1]}}}, "low must be below high"),
    ({"space": {"distill.losses.0.alpha": {"uniform": [0.1, 0.9]}}}, "exactly one of float, int, choice"),
    ({"space": {"distill.losses.0.alpha": {"float": [0.1, 0.9], "int": [1, 2]}}}, "float and int together"),
    ({"space": {"distill.losses.0.temperature": {"float": [0, 8], "log": True}}}, "a log range needs low > 0"),
    ({"space": {"student.kwargs.hidden": {"int": [8, 60], "step": 8}}}, "use [8, 56] or [8, 64]"),
    ({"space": {"student.kwargs.hidden": {"int": [8.5, 60]}}}, "int takes whole-number bounds"),
    ({"space": {"student.kwargs.widths": {"choice": []}}}, "choice takes a non-empty list"),
    ({"space": {"student.kwargs.widths": {"choice": [[4, 8]], "log": True}}}, "log and step apply to float and int"),
    ({"space": {"output_dir": {"choice": ["a", "b"]}}}, "'output_dir' cannot be searched"),
    ({"pruning": True, "objectives": ["accuracy", "int8_size_kb"]}, "search.pruning: pruning stops trials"),
    ({"pruning": True, "objectives": ["int8_size_kb"]}, "make accuracy the objective"),
    ({"objectives": [{"metric": "acc"}]}, "unknown metric 'acc'"),
    ({"objectives": ["test_accuracy"]}, "the test split is kept for the report"),
    ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, "direction must be maximize or minimize"),
    ({"objectives": ["accuracy", "accuracy"]}, "a metric is named twice"),
    ({"constraints": {"max_latency": 5}}, "unknown constraint 'max_latency'"),
    ({"constraints": {"max_latency_ms": "fast"}}, "a bound is a number"),
    ({"constraints": {"board": "nano34"}}, "search.constraints.board: unknown board 'nano34'"),
    ({"storage": "runs/study.db"}, "is not an SQLAlchemy URL"),
    # probe values are built before any trial: a temperature the kd term refuses, a kwarg the model does not take
    ({"space": {"distill.losses.0.temperature": {"float": [-1, 2]}}},
     "search.space.distill.losses.0.temperature: with -1.0 the recipe is invalid"),
    ({"space": {"student.kwargs.width": {"int": [8, 16]}}}, "search.space.student.kwargs.width: with 8 the recipe"),
    ({"space": {"distill.losses.0.name": {"choice": ["kd", "nope"]}}}, "with 'nope' the recipe is invalid"),
]


@pytest.mark.parametrize("change, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_search_errors_name_the_key_before_anything_runs(tmp_path, capsys, change, message):
    recipe = tiny(tmp_path)
    if change.get("search", 1) is None:
        recipe.pop("search")
    else:
        recipe["search"].update(change)
    code, _, err = _cli(capsys, "search", str(write(tmp_path, recipe)))
    assert code == 2, err
    assert message in err and "fix:" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "search-tiny").exists()


def test_unknown_metric_lists_the_valid_ones(tmp_path):
    recipe = load_recipe(tiny(tmp_path, objectives=[{"metric": "size"}]))
    with pytest.raises(RecipeError) as err:
        parse_search(recipe)
    assert all(f"{m} ({METRICS[m][0]})" in err.value.fix for m in METRICS)
    assert err.value.where == "search.objectives[0]"


def test_a_free_mapping_takes_new_keys_and_structured_choices(tmp_path):
    recipe = load_recipe(tiny(tmp_path, space={
        "student.kwargs.dropout": {"float": [0.0, 0.3]},  # not in the recipe's kwargs, a key of the model's
        "student.kwargs.widths": {"choice": [[4, 8], [8, 16], [4, 8, 16]]},  # width and depth
        "distill.losses": {"choice": [[{"name": "kd", "temperature": 4.0, "alpha": 0.9}],
                                      [{"name": "kd", "temperature": 2.0, "alpha": 0.5}, {"name": "ce", "weight": 0.5}]]},
    }))
    plan = parse_search(recipe)
    check_space(recipe, plan)
    d = plan.dimension("student.kwargs.widths")
    assert d.labels == ("[4, 8]", "[8, 16]", "[4, 8, 16]")
    assert d.value("[8, 16]") == [8, 16] and d.param([4, 8, 16]) == "[4, 8, 16]" and d.param([1]) is None


def test_one_objective_by_name_and_direction_default(tmp_path):
    plan = parse_search(load_recipe(tiny(tmp_path, objectives={"metric": "int8_size_kb"})))
    assert [(o.metric, o.direction) for o in plan.objectives] == [("int8_size_kb", "minimize")]
    assert plan.sampler == "tpe" and not plan.multi


# --- pruning hook ---------------------------------------------------------------------------------------------------


class _Trial:
    def __init__(self, prune: bool):
        self.prune, self.reported = prune, []

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.prune


def test_report_to_trial_reports_val_accuracy_and_prunes_when_asked():
    keep, stop = _Trial(False), _Trial(True)
    ReportToTrial(keep).on_epoch_end(None, 1, None, {"val_accuracy": 0.5})
    assert keep.reported == [(1, 0.5)]
    with pytest.raises(optuna.TrialPruned, match="after epoch 2"):
        ReportToTrial(stop).on_epoch_end(None, 2, None, {"val_accuracy": 0.25})


# --- studies ------------------------------------------------------------------------------------------------------


def _trial_recipes(folder: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("trials/trial-*/recipe.yaml"))]


def test_single_objective_study_reuses_one_teacher_and_writes_the_best_recipe(tmp_path, capsys):
    recipe = load_recipe(tiny(tmp_path, trials=3, pruning=True, objectives=["accuracy"]))
    result = search(recipe, progress=True)
    folder = result.folder
    assert folder == tmp_path / "runs" / "search-tiny"
    assert len(result.trials) == 3 == result.ran
    assert {t.state.name for t in result.trials} <= {"COMPLETE", "PRUNED"}
    # the recipe as written is the first trial
    first = result.trials[0]
    assert first.user_attrs["baseline"] and first.params == {"distill.losses.0.temperature": 4.0,
                                                             "distill.losses.0.alpha": 0.9, "student.kwargs.hidden": 16}
    # one teacher, trained once, loaded by every trial from its checkpoint
    teachers = [p for p in (folder / "teachers").iterdir() if p.is_dir()]
    assert len(teachers) == 1
    ckpt = str((teachers[0] / "teacher" / "best.safetensors").resolve())
    assert {r["teacher"]["checkpoint"] for r in _trial_recipes(folder)} == {ckpt}
    assert all(not (p / "teacher").exists() for p in (folder / "trials").iterdir())
    # what each complete trial measured, in its metrics.json too
    for t in result.trials:
        if t.state.name == "COMPLETE":
            m = json.loads((Path(t.user_attrs["folder"]) / "metrics.json").read_text())["search"]
            assert m["measured"]["accuracy"] == t.values[0] and 0 < m["measured"]["int8_size_kb"] < 100
            assert set(m["test"]) == {"accuracy", "int8_accuracy"}
    # the best trial's recipe runs as it is: no search section, the trial's values, the study's teacher
    best = result.best[0]
    assert result.best_recipe == folder / "best.yaml"
    again = load_recipe(result.best_recipe)
    assert again.search is None and again.teacher.checkpoint == ckpt
    assert again.student.kwargs["hidden"] == best.params["student.kwargs.hidden"]
    assert again.distill.losses[0].params()["temperature"] == pytest.approx(best.params["distill.losses.0.temperature"])
    out = capsys.readouterr().out
    assert out.count("trial ") >= 3 and "(1/3)" in out and "(3/3)" in out and "best so far" in out
    html = (folder / "report.html").read_text()
    assert "tinykd search report" in html and html.count("data:image/png;base64,") == 1
    # a second worker later finds the study full and runs nothing
    assert search(recipe, progress=False).ran == 0


def test_multi_objective_study_with_constraints_in_sqlite(tmp_path):
    db = tmp_path / "study.db"
    recipe = load_recipe(tiny(tmp_path, trials=3, objectives=[{"metric": "accuracy", "direction": "maximize"},
                                                              {"metric": "int8_size_kb", "direction": "minimize"}],
                              constraints={"board": "nano33ble", "max_latency_ms": 1000}, storage=f"sqlite:///{db}"))
    result = search(recipe, study_name="pareto", progress=False)
    assert db.is_file() and not (result.folder / "study.journal").exists()
    complete = [t for t in result.trials if t.state.name == "COMPLETE"]
    assert complete and all(set(t.constraints) == {"max_latency_ms", "board"} for t in complete)
    assert all(t.constraints["board"] < 0 for t in complete)  # tiny students fit the board
    # the Pareto front: recipes for each of its trials, the figure in the report
    assert result.best and {p.name for p in (result.folder / "pareto").iterdir()} == {
        f"trial-{t.number:04d}.yaml" for t in result.best}
    assert (result.folder / "figures" / "pareto_accuracy_int8_size_kb.png").is_file()
    assert "Pareto front" in (result.folder / "report.html").read_text()
    # a study is bound to its recipe and space: another space under the same name is refused
    other = load_recipe(tiny(tmp_path, space={"distill.losses.0.alpha": {"float": [0.2, 0.8]}},
                             objectives=["accuracy", "int8_size_kb"], storage=f"sqlite:///{db}"))
    with pytest.raises(RecipeError, match="study 'pareto' in .* was made for another recipe"):
        search(other, study_name="pareto", progress=False)


def test_a_board_the_student_cannot_fit_is_infeasible_before_training(tmp_path):
    board = {"name": "crumb", "flash_bytes": 70_000, "sram_bytes": 17_500, "clock_mhz": 16}
    recipe = load_recipe(tiny(tmp_path, trials=1, baseline=False, constraints={"board": board}))
    result = search(recipe, progress=False)
    (t,) = result.trials
    assert t.state.name == "PRUNED" and "cannot fit crumb" in t.user_attrs["infeasible"]
    assert not (Path(t.user_attrs["folder"]) / "student").exists() and result.best_recipe is None


def test_two_workers_share_one_study_and_run_the_trials_once(tmp_path):
    path = write(tmp_path, tiny(tmp_path, trials=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tinykd.cli", "search", str(path), "--study", "shared", "--trials", "4"]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    folder = tmp_path / "runs" / "search-shared"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(p.name for p in (folder / "trials").iterdir()) == [f"trial-{n:04d}" for n in range(4)]
    lines = [line for out in outs for line in out.splitlines() if line.startswith("trial ") and "/4)" in line]
    assert len(lines) == 4, outs  # one progress line per trial, over both workers
    assert sum(out.count("training the study's teacher") for out in outs) == 1, outs
    assert (folder / "report.html").is_file() and (folder / "best.yaml").is_file()
