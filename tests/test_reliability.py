"""Hostile inputs (issue 17): every failure is a clean error naming the field or file, nothing is half-written,
nothing is overwritten. Row numbers refer to the issue's table."""
import subprocess
import sys
from pathlib import Path

import pytest

from tinykd.cli import main
from tinykd.errors import RecipeError
from tinykd.io import check_finite, load_tensors
from tinykd.recipe import load_recipe

BOMB = "".join([
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
    *(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg")),
])


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess_cli(*argv, timeout=60, cwd=None):
    """The CLI in its own process, killed after ``timeout`` seconds: a hang fails the test instead of stalling it."""
    return subprocess.run([sys.executable, "-m", "tinykd.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# ----- rows 1-5, 21: one bounded, strict YAML reader --------------------------------------------------------------
def test_latin1_recipe_is_not_utf8(tmp_path, capsys):  # row 1
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"name: caf\xe9\n")
    code, _, err = _cli(capsys, "run", f)
    assert code == 2 and "is not UTF-8 text (byte 0xe9 on line 1)" in err and "Traceback" not in err


def test_deeply_nested_recipe_is_a_clean_error(tmp_path, capsys):  # row 2
    f = tmp_path / "deep.yaml"
    f.write_text("[" * 20000)
    code, _, err = _cli(capsys, "run", f)
    assert code == 2 and "nests too deeply" in err and "Traceback" not in err
    f.write_text("student:\n  kwargs:\n    x: " + "[" * 100 + "]" * 100 + "\n")
    code, _, err = _cli(capsys, "run", f)
    assert code == 2 and "nests more than 64 levels" in err


@pytest.mark.parametrize("where", ["seed: ", "student:\n  kwargs:\n    x: "])
def test_alias_bomb_is_refused_quickly(tmp_path, where):  # rows 3, 4
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB + where + "[" + ",".join(["*g"] * 9) + "]\n")
    proc = _subprocess_cli("run", f, f"output_dir={tmp_path / 'runs'}", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "aliases expand to more than 20,000 values" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr) < 1000
    assert not (tmp_path / "runs").exists()


def test_recursive_alias_is_refused(tmp_path):
    f = tmp_path / "rec.yaml"
    f.write_text("student:\n  kwargs: &k {x: *k}\n")
    with pytest.raises(RecipeError, match="recursive alias"):
        load_recipe(f)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n   \n"])
def test_empty_recipe_is_an_error(tmp_path, capsys, text):  # row 5
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    code, _, err = _cli(capsys, "run", f)
    assert code == 2 and "is empty" in err


def test_duplicate_keys_are_an_error(tmp_path):  # row 21
    f = tmp_path / "dup.yaml"
    f.write_text("name: a\nseed: 1\nstudent: {model: mlp, model: cnn}\n")
    with pytest.raises(RecipeError, match=r"line 3.*key 'model' appears twice in one mapping \(first at line 3\)"):
        load_recipe(f)
    f.write_text("base: &b {epochs: 1}\nname: x\nteacher: {train: {<<: *b, epochs: 2}}\n")
    with pytest.raises(RecipeError, match="unknown key 'base'"):  # a merge key may be overridden; not a duplicate
        load_recipe(f)


def test_override_values_use_the_same_reader():
    with pytest.raises(RecipeError, match="aliases expand"):
        load_recipe(None, ["student.kwargs=" + "{" + BOMB.replace("\n", ", ") + "x: [*g,*g,*g,*g,*g,*g,*g,*g,*g]}"])
    with pytest.raises(RecipeError, match="appears twice"):
        load_recipe(None, ["student.kwargs={a: 1, a: 2}"])


def test_python_tags_still_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(f)


def test_a_folder_is_not_a_recipe(tmp_path, capsys):  # row 21
    code, _, err = _cli(capsys, "run", tmp_path)
    assert code == 2 and "is a folder, not a recipe file" in err
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    code, _, err = _cli(capsys, "run", tmp_path)
    assert code == 2 and f"tinykd run --resume {tmp_path}" in err


def test_resume_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):  # row 21
    code, _, err = _cli(capsys, "run", "--resume", tmp_path / "nope")
    assert code == 2 and "run folder" in err and "does not exist" in err and "recipe.yaml" not in err


# ----- rows 6-8: bounded values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,pattern", [
    ("measure.batch_sizes=[1,100000000]", r"measure\.batch_sizes: latency batch sizes go up to 4096"),
    ("seed=99999999999999999999", r"seed: .*less than or equal to 4294967295"),
    ("seed=-1", r"seed: .*greater than or equal to 0"),
    ("student.train.lr=.inf", r"student\.train\.lr: .*finite"),
    ("distill.losses.0.weight=1.0e+308", r"distill\.losses\[0\]\.weight: .*less than or equal to 1000000"),
])
def test_out_of_range_values_are_rejected(override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_recipe(None, [override])


@pytest.mark.parametrize("override,pattern", [
    ("distill.losses.0.temperature=1e200", r"temperature 1e\+200 is above 1000"),
    ("distill.losses.0.alpha=.nan", r"distill\.losses\[0\]\.alpha: .*finite"),
])
def test_loss_hyper_parameters_are_bounded(override, pattern, tmp_path, capsys):  # row 8
    code, _, err = _cli(capsys, "run", override, f"output_dir={tmp_path}")
    assert code == 2 and __import__("re").search(pattern, err), err
    assert list(tmp_path.iterdir()) == []


def test_error_values_are_shown_short():
    with pytest.raises(RecipeError) as info:
        load_recipe({"seed": list(range(10_000))})
    assert len(str(info.value)) < 400


# ----- a tiny run for the rows that need one -------------------------------------------------------------------------
# data.limit=300: 300 digits in all, 216 of them for training (4 steps an epoch: the huge-lr run needs them to diverge)
TINY = ["data.name=digits", "data.limit=300", "teacher.model=mlp", "teacher.kwargs={hidden: [32]}",
        "student.model=mlp", "student.kwargs={hidden: [8]}", "teacher.train.epochs=1", "student.train.epochs=2",
        "teacher.train.device=cpu", "student.train.device=cpu", "distill.scratch_baseline=false",
        "quantize.calibration_samples=32", "measure.repeats=5", "measure.warmup=0", "measure.batch_sizes=[1]",
        "report.enabled=false", "teacher.train.warmup_epochs=0", "student.train.warmup_epochs=0"]


def _tiny(tmp_path, *extra, name="t"):
    return load_recipe(None, [*TINY, f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra])


def _folders(tmp_path):
    root = tmp_path / "runs"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ----- row 9: output_dir ---------------------------------------------------------------------------------------------
def test_output_dir_that_cannot_hold_runs_is_named(tmp_path, capsys, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    for bad, pattern in [(f, "is a file, not a folder"), (f / "sub", "is a file, not a folder"),
                         ("/proc/tinykd-x", "cannot create the folder")]:
        code, _, err = _cli(capsys, "run", *TINY, f"output_dir={bad}")
        assert code == 2 and err.startswith("error: output_dir: ") and pattern in err, err
    import tinykd.stages.rundir as rundir
    monkeypatch.setattr(rundir.os, "access", lambda *a: False)  # tests run as root, which chmod cannot stop
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'ro'}")
    assert code == 2 and "output_dir: no permission to write in" in err


# ----- rows 10, 18: a failure after the folder exists marks it failed; resume finishes it once the cause is fixed ----
def test_disk_full_is_a_clean_error_and_resume_finishes(tmp_path, capsys, monkeypatch):
    import json

    import tinykd.io as tio
    from safetensors import SafetensorError

    real, calls = tio.save_file, []

    def full(tensors, path):
        calls.append(path)
        if len(calls) > 2:  # the teacher's best and last checkpoints are written, then the disk is full
            raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")
        real(tensors, path)
    monkeypatch.setattr(tio, "save_file", full)
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", "name=full", "--quiet")
    assert code == 2 and "could not write" in err and "No space left on device" in err and "free disk space" in err
    run_dir = tmp_path / "runs" / "full"
    assert "Traceback" not in err and f"tinykd run --resume {run_dir}" in err  # shown with --quiet too
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "No space left" in status["error"]
    assert not list(run_dir.rglob(".*.tmp"))  # no half-written file left
    monkeypatch.setattr(tio, "save_file", real)
    code, out, _ = _cli(capsys, "run", "--resume", run_dir, "--quiet")
    assert code == 0 and json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert (run_dir / "metrics.json").is_file()


# ----- rows 11, 13: resuming a finished run re-runs and overwrites nothing -----------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from tinykd.pipeline import run
    tmp = tmp_path_factory.mktemp("finished")
    return run(_tiny(tmp, name="done"), progress=False).run_dir


def test_resume_of_a_finished_run_says_so_and_overwrites_nothing(finished, capsys, monkeypatch):
    import tinykd.stages.rundir as rundir
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    # a read-only finished folder (row 11): nothing needs writing, so nothing fails
    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", lambda **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    code, out, err = _cli(capsys, "run", "--resume", finished, "--quiet")
    assert code == 0 and "already complete: nothing was re-run or overwritten" in out
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()} == before
    code, _, err = _cli(capsys, "run", "--resume", finished, "measure.repeats=7")
    assert code == 2 and "is complete; measure.repeats=7 would need new results" in err


def test_resume_of_a_read_only_unfinished_run_names_the_permission(finished, tmp_path, capsys, monkeypatch):
    import shutil

    import tinykd.stages.rundir as rundir
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "metrics.json").unlink()
    (copy / "status.json").unlink()

    def denied(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", denied)
    code, _, err = _cli(capsys, "run", "--resume", copy)
    assert code == 2 and "the folder is not writable (Permission denied)" in err and "chmod -R u+w" in err


# ----- row 12: broken checkpoints on resume ---------------------------------------------------------------------------
@pytest.mark.parametrize("content,pattern", [
    ('{"finished": true}', "lacks epoch, best_epoch"),
    ("[]", "holds a list, not a training state"),
    ('{"epoch": 1, "finished": false, "best_epoch": 1, "best_val_accuracy": 0.5, "history": []}', "lacks optimizer"),
    ("{not json", "is not readable JSON"),
])
def test_broken_last_json_is_a_checkpoint_error(finished, tmp_path, capsys, content, pattern):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "metrics.json").unlink()
    (copy / "status.json").unlink()
    (copy / "student" / "last.json").write_text(content)
    code, _, err = _cli(capsys, "run", "--resume", copy)
    assert code == 2 and pattern in err and "Traceback" not in err, err


@pytest.mark.parametrize("which", ["best.safetensors", "last.safetensors"])
def test_checkpoint_of_another_architecture_is_a_checkpoint_error(finished, tmp_path, capsys, which):
    import json
    import shutil

    import torch
    from torch import nn

    from tinykd.io import save_tensors
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    for f in ("metrics.json", "status.json"):
        (copy / f).unlink()
    other = nn.Sequential(nn.Linear(3, 2)).state_dict()
    state = json.loads((copy / "student" / "last.json").read_text())
    if which == "last.safetensors":  # an unfinished stage restores last.safetensors
        state["finished"] = False
        (copy / "student" / "last.json").write_text(json.dumps(state))
        other = {f"model.{k}": v for k, v in other.items()} | {"rng.torch": torch.get_rng_state()}
    save_tensors(copy / "student" / which, other)
    code, _, err = _cli(capsys, "run", "--resume", copy)
    assert code == 2 and "do not fit the model" in err and which in err and "Traceback" not in err, err


# ----- row 14: teacher checkpoints that are not weights ------------------------------------------------------------
@pytest.mark.parametrize("content", [bytes(range(256)) * 20, b"hello: this is text\n", b""])
def test_teacher_checkpoint_that_is_not_weights(tmp_path, capsys, content):
    f = tmp_path / "teacher.pt"
    f.write_bytes(content)
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", f"teacher.checkpoint={f}")
    assert code == 2 and "teacher.checkpoint" in err and "teacher.pt" in err and "Traceback" not in err, err
    assert _folders(tmp_path) == []


def test_raw_pickle_refused_without_torch_warning(tmp_path, recwarn):
    import os
    import pickle

    from tinykd.errors import CheckpointError
    from tinykd.io import load_state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    for protocol in (2, 4, 5):  # 4 and 5 made torch warn "Detected pickle protocol" before the refusal
        f = tmp_path / f"evil{protocol}.pt"
        f.write_bytes(pickle.dumps({"w": Evil()}, protocol=protocol))
        with pytest.raises(CheckpointError, match="refused to load"):
            load_state_dict(f)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_storage_errors_say_what_to_free_or_fix(tmp_path):
    import errno

    from tinykd.io import storage_error
    f = tmp_path / "x" / "last.safetensors"
    cases = [(OSError(errno.ENOSPC, "No space left on device"), "free disk space"),
             (PermissionError(errno.EACCES, "Permission denied"), "make " + str(f.parent) + " writable"),
             (OSError(errno.EROFS, "Read-only file system"), "writable"),
             (OSError(errno.EFBIG, "File too large"), "ulimit -f")]
    for exc, fix in cases:
        err = storage_error(f, exc)
        assert str(f) in err.what and exc.strerror in err.what and fix in err.fix and "resume" in err.fix


def test_summary_shows_a_dash_for_a_missing_ratio(finished, capsys):
    import json

    from rich.console import Console

    from tinykd.cli import print_summary
    metrics = json.loads((finished / "metrics.json").read_text())
    metrics["ratios"] = {k: None for k in metrics["ratios"]} | {"compared": "student_int8 vs teacher"}
    print_summary(metrics, Console(width=140))
    assert "—" in capsys.readouterr().out


# ----- row 15: labels with a gap --------------------------------------------------------------------------------------
def test_stray_label_is_a_data_error(tmp_path):
    import numpy as np

    from tinykd.data import load_dataset
    from tinykd.errors import DataError
    x = np.random.default_rng(0).random((60, 1, 4, 4)).astype(np.float32)
    y = np.arange(60) % 10
    y[7] = 200
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"labels run up to 200, but 190 of the 201 classes .* label 200 appears 1 time"):
        load_dataset("npz", path=str(tmp_path / "d.npz"))


# ----- rows 16, 17: the NaN guard ------------------------------------------------------------------------------------
def test_huge_learning_rate_never_saves_nan_weights(tmp_path, capsys):
    import json
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", "name=lr", "student.train.lr=1000000")
    assert code == 2 and err.startswith("error: student: ") and "lower the learning rate" in err, err
    assert "Traceback" not in err and "student.train.lr=0.001" in err  # how to resume with a changed setting
    run_dir = tmp_path / "runs" / "lr"
    for f in (run_dir / "student").glob("*.safetensors"):  # whatever was saved is finite
        check_finite(load_tensors(f), source=str(f))
    if "last good checkpoint is" in err:
        assert (run_dir / "student" / "last.safetensors").is_file()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    # resume with a lower learning rate: the trained teacher is kept, the student trains with the new rate
    teacher_mtime = (run_dir / "teacher" / "best.safetensors").stat().st_mtime_ns
    code, _, err = _cli(capsys, "run", "--resume", run_dir, "student.train.lr=0.004", "--quiet")
    assert code == 0, err
    assert (run_dir / "teacher" / "best.safetensors").stat().st_mtime_ns == teacher_mtime
    assert load_recipe(run_dir / "recipe.yaml").student.train.lr == 0.004
    assert json.loads((run_dir / "status.json").read_text())["resumed_with"] == ["student.train.lr=0.004"]


def test_nan_guard_names_no_checkpoint_when_there_is_none(tmp_path):
    import torch
    from torch import nn

    from tinykd.data.spec import Split
    from tinykd.distill.losses import build_loss
    from tinykd.distill.trainer import Trainer
    from tinykd.errors import TrainingError
    from tinykd.recipe import TrainConfig
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    tr = Trainer(nn.Sequential(nn.Linear(4, 2)), [(1.0, build_loss("ce", {}))], TrainConfig(epochs=2, batch_size=8, lr=1e30),
                 out_dir=tmp_path, label="m", progress=False)
    with pytest.raises(TrainingError, match=r"no checkpoint of it was saved \(it diverged in its first epoch\)"):
        tr.fit(Split(x * 1e30, y), Split(x[:8], y[:8]))
    assert not list(tmp_path.glob("*.safetensors"))


def test_resume_may_change_only_whitelisted_settings(finished, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    for f in ("metrics.json", "status.json"):
        (copy / f).unlink()
    code, _, err = _cli(capsys, "run", "--resume", copy, "student.kwargs={hidden: [9]}")
    assert code == 2 and "cannot change student.kwargs" in err
    code, _, err = _cli(capsys, "run", "--resume", copy, "teacher.train.lr=0.1")
    assert code == 2 and "teacher has finished training" in err and "teacher.checkpoint=" in err


def test_nan_teacher_checkpoint_is_refused_before_training(tmp_path, capsys):
    import torch

    from tinykd.data import load_dataset
    from tinykd.io import save_tensors
    from tinykd.models import create_model
    spec = load_dataset("digits", limit=20).spec
    state = create_model("mlp", num_classes=spec.num_classes, in_shape=tuple(spec.shape), hidden=[32]).state_dict()
    state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    save_tensors(tmp_path / "nan.safetensors", state)
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}",
                        f"teacher.checkpoint={tmp_path / 'nan.safetensors'}")
    assert code == 2 and "teacher.checkpoint: checkpoint" in err and "holds NaN/inf values" in err
    assert _folders(tmp_path) == []


def test_nan_teacher_outputs_are_blamed_on_the_teacher(tmp_path):
    import torch
    from torch import nn

    from tinykd.data.spec import Split
    from tinykd.distill.losses import build_loss
    from tinykd.distill.trainer import Trainer
    from tinykd.errors import TrainingError
    from tinykd.recipe import TrainConfig

    class NaNTeacher(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 2), float("nan"))
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    student = nn.Sequential(nn.Linear(4, 2))
    tr = Trainer(student, [(1.0, build_loss("kd", {}))], TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path,
                 label="student", teacher=NaNTeacher(), progress=False)
    with pytest.raises(TrainingError, match="teacher's outputs are NaN/inf, not the student's"):
        tr.fit(Split(x, y), Split(x[:8], y[:8]))


# ----- row 18: everything checkable is checked before the folder is made --------------------------------------------
@pytest.mark.parametrize("override,pattern", [
    ("student.kwargs={hiden: [8]}", "student.model: unknown argument 'hiden'"),
    ("distill.losses=[{name: at, student: layers.9, teacher: layers.0}]", "distill.losses[0]: the student has no module"),
    ("distill.losses=[{name: kd, temprature: 4}]", "unknown hyper-parameter of 'kd'"),
    ("distill.transfer={name: mnist1dd}", "distill.transfer: unknown dataset 'mnist1dd'"),
    ("distill.transfer={name: idx, path: /no/such/folder}", "distill.transfer: data path '/no/such/folder' not found"),
    ("teacher.checkpoint=/no/such.safetensors", "teacher.checkpoint: file '/no/such.safetensors' not found"),
])
def test_recipe_mistakes_fail_before_the_folder_is_made(tmp_path, capsys, override, pattern):
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", "teacher.train.epochs=50", override)
    assert code == 2 and pattern in err, err
    assert _folders(tmp_path) == []


def test_interrupted_run_names_its_folder(tmp_path, capsys, monkeypatch):
    import json

    from tinykd.distill.trainer import Trainer

    def interrupt(self, train, val):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "fit", interrupt)
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", "name=ctrlc", "--quiet")
    run_dir = tmp_path / "runs" / "ctrlc"
    assert code == 130 and f"tinykd run --resume {run_dir}`" in err and "RUN_DIR" not in err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"


# ----- rows 19, 20: the run folder -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", ""])
def test_names_with_path_separators_are_rejected(tmp_path, capsys, name):
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", "--name", name)
    assert code == 2 and "--name" in err and "plain folder name" in err
    code, _, err = _cli(capsys, "run", *TINY, f"output_dir={tmp_path / 'runs'}", f"name='{name}'")
    assert code == 2 and "name: must be a plain folder name" in err
    assert not (tmp_path / "x").exists() and not Path("/abs/path").exists()


def test_run_folder_is_claimed_atomically(tmp_path, monkeypatch):
    import threading

    import tinykd.pipeline as pipeline
    recipe = _tiny(tmp_path, name="same")
    real_mkdir, barrier = Path.mkdir, threading.Barrier(8)

    def slow_mkdir(self, *a, **k):  # every thread reaches mkdir at once
        if self.name.startswith("same"):
            barrier.wait(timeout=10) if self.name == "same" else None
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", slow_mkdir)
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(pipeline.claim_run_dir(recipe))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 8 and len(set(claimed)) == 8
    assert sorted(p.name for p in claimed) == ["same"] + [f"same-{n}" for n in range(2, 9)]
