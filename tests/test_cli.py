"""The command line: user errors print a message with a fix (no traceback) and exit 2."""
import re
from pathlib import Path

import pytest

from tinykd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_missing_recipe_file(capsys):
    code, _, err = _run(capsys, "run", "nope.yaml")
    assert code == 2
    assert "recipe file 'nope.yaml' does not exist" in err and "fix:" in err
    assert "Traceback" not in err


def test_bad_override_suggests_key(capsys):
    code, _, err = _run(capsys, "run", "studnet.train.epochs=1")
    assert code == 2 and "did you mean 'student'?" in err


def test_resume_needs_a_run_dir(capsys, tmp_path):
    code, _, err = _run(capsys, "run", "--resume", str(tmp_path))
    assert code == 2 and "not a tinykd run directory" in err


def test_layers_lists_paths_and_shapes(capsys):
    code, out, _ = _run(capsys, "layers", "cnn", "--in-shape", "1,28,28", "--kw", "widths=[8,16]", "hidden=32")
    assert code == 0
    assert re.search(r"features\.0\.conv\s+.*Conv2d\s+.*\(1, 8, 28, 28\)", out)
    assert re.search(r"head\.fc\s+.*Linear\s+.*\(1, 10\)", out)
    code, _, err = _run(capsys, "layers", "cnnn", "--in-shape", "1,28,28")
    assert code == 2 and "did you mean 'cnn'" in err
    code, _, err = _run(capsys, "layers", "cnn", "--in-shape", "1,x")
    assert code == 2 and "--in-shape" in err


def test_methods_and_registries(capsys):
    code, out, _ = _run(capsys, "methods")
    assert code == 0 and "kd" in out and "Hinton" in out and "temperature=4.0" in out
    assert "exits (required)" in out and "PydanticUndefined" not in out  # byot's fields without a default
    code, out, _ = _run(capsys, "datasets")
    assert code == 0 and "mnist5k" in out and "wav_folder" in out
    code, out, _ = _run(capsys, "models")
    assert code == 0 and "resnet20" in out and "dscnn" in out


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()


def test_recipes_in_repo_validate():
    from tinykd.recipe import load_recipe
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for r in recipes:
        load_recipe(r)


def test_api_run_without_a_recipe_uses_the_cli_default():
    import tinykd
    from tinykd.cli import build_parser, new_run_recipe
    from tinykd.recipe import default_recipe_path

    api = tinykd.resolve_recipe(None, ["student.train.epochs=2"])
    cli = new_run_recipe(build_parser().parse_args(["run", "student.train.epochs=2"]))
    assert api.model_dump() == cli.model_dump() and api.base_dir == cli.base_dir == str(default_recipe_path().parent)
    assert api.name == "default" and api.student.kwargs["widths"] == [8, 16] and api.student.train.epochs == 2
    assert api.teacher.train.warmup_epochs == 3 and api.teacher.train.epochs == 10
    given = tinykd.Recipe()
    assert tinykd.resolve_recipe(given) is given
