"""Recipe validation, overrides and error messages."""
import pytest

from tinykd.errors import RecipeError
from tinykd.recipe import load_recipe


def test_defaults_and_overrides_parse_yaml_values():
    r = load_recipe(None, ["student.train.epochs=3", "distill.losses.0.temperature=2.5", "measure.batch_sizes=[1,8]"])
    assert r.student.train.epochs == 3
    assert r.distill.losses[0].params()["temperature"] == 2.5
    assert r.measure.batch_sizes == [1, 8]


def test_yaml_file_and_relative_base_dir(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\ndata: {name: digits}\nstudent: {model: mlp, kwargs: {hidden: [16]}}\n")
    r = load_recipe(f)
    assert r.name == "x" and r.data.name == "digits" and r.student.kwargs == {"hidden": [16]}
    assert r.base_dir == str(tmp_path)


@pytest.mark.parametrize("data,pattern", [
    ({"studnet": {}}, r"studnet: unknown key 'studnet' \(did you mean 'student'\?"),
    ({"student": {"train": {"epochs": "many"}}}, r"student\.train\.epochs: .*integer.*'many'"),
    ({"student": {"train": {"optimizer": "sgdd"}}}, r"student\.train\.optimizer: .*'sgd'"),
    ({"data": {"val_fraction": 1.5}}, r"data\.val_fraction: .*less than 1"),
    ({"distill": {"losses": []}}, r"distill\.losses: .*at least one loss term"),
    ({"distill": {"losses": [{"weight": 1}]}}, r"distill\.losses\[0\]\.name: required field is missing"),
    ({"measure": {"batch_sizes": [8]}}, r"measure\.batch_sizes: .*must contain 1"),
    ({"student": {"train": {"device": "gpu"}}}, r"student\.train\.device: must be 'auto', 'cpu', 'cuda' or 'cuda:N'.*'gpu'"),
])
def test_errors_name_the_field(data, pattern):
    with pytest.raises(RecipeError, match=pattern) as info:
        load_recipe(data)
    assert "fix:" in str(info.value)


def test_bad_override_and_bad_file(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'train'"):
        load_recipe(None, ["student.trian.epochs=3"])
    with pytest.raises(RecipeError, match="has no '='"):
        load_recipe(None, ["student.train.epochs"])
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(None, ["distill.losses.5.temperature=1"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(bad)


def test_python_tags_are_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(f)
