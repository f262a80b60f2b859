"""Hostile inputs (issue 17): every failure is a clean error naming the field or file, nothing is half-written,
nothing is overwritten. Row numbers refer to the issue's table."""
import subprocess
import sys
from pathlib import Path

import pytest

from tinykd.cli import main
from tinykd.errors import RecipeError
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
