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


def test_layers_of_a_token_model_run_on_token_ids(capsys):
    pytest.importorskip("transformers")
    code, out, _ = _run(capsys, "layers", "transformer_tiny", "--in-shape", "16", "--kw", "vocab_size=500")
    assert code == 0 and "input (16,)" in out
    assert re.search(r"model\.bert\.encoder\.layer\.1\s+.*BertLayer\s+.*\(1, 16, 128\)", out)


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
    import yaml
    shipped = yaml.safe_load(default_recipe_path().read_text())
    assert api.teacher.train.warmup_epochs == 3 and api.teacher.train.epochs == shipped["teacher"]["train"]["epochs"]
    given = tinykd.Recipe()
    assert tinykd.resolve_recipe(given) is given


def test_version(capsys):
    import tinykd
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"tinykd {tinykd.__version__}"


def test_methods_shows_one_term(capsys):
    code, out, _ = _run(capsys, "methods", "kd")
    assert code == 0 and out.startswith("kd — ") and "Hinton" in out
    assert "  temperature = 4.0" in out and "  alpha = " in out and "reverse_kd" not in out
    code, _, err = _run(capsys, "methods", "kdd")
    assert code == 2 and "unknown loss term 'kdd'" in err and "did you mean 'kd'?" in err
    assert "Traceback" not in err


def test_every_argument_has_help():
    from tinykd.cli import build_parser
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in [("tinykd", parser), *commands.items()]:
        for action in sub._actions:
            assert action.help, (name, action.dest)


def test_hint_to_resume_an_unfinished_run(capsys, tmp_path, monkeypatch):
    import tinykd.pipeline
    from tinykd.errors import TinyKDError

    def stop(recipe, **kwargs):
        raise TinyKDError("stopped before training")
    monkeypatch.setattr(tinykd.pipeline, "run", stop)
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("name: x\n")
    code, _, err = _run(capsys, "run", f"output_dir={tmp_path}", "--name", "x")
    assert code == 2
    assert f"{folder} exists and did not finish; `tinykd run --resume {folder}` continues it" in err
    (folder / "metrics.json").write_text("{}")
    _, _, err = _run(capsys, "run", f"output_dir={tmp_path}", "--name", "x")
    assert "did not finish" not in err
    _, _, err = _run(capsys, "run", f"output_dir={tmp_path}", "--name", "y")
    assert "did not finish" not in err


def test_summary_fits_80_columns_without_cutting_names():
    import io
    import json

    from rich.console import Console

    from tinykd.cli import print_summary
    metrics = json.loads((ROOT / "tests" / "fixtures" / "report_metrics.json").read_text())["metrics"]
    metrics["variants"]["student_lowrank_int8"] = dict(metrics["variants"]["student_int8"])
    for width, boxed in ((80, False), (140, True)):
        out = io.StringIO()
        print_summary(metrics, Console(file=out, width=width))
        lines = out.getvalue().splitlines()
        assert max(len(line.rstrip()) for line in lines) <= width and "…" not in out.getvalue()
        for name in metrics["variants"]:
            assert any(re.match(rf"[│ ]*{name} ", line) for line in lines), name
        assert any(line.startswith("┏") for line in lines) == boxed
        assert re.search(r"b1 ms.*b32 ms", out.getvalue()) and " ms " not in out.getvalue().split("b32 ms")[1]
