"""Recipe files: the example parses; every kind of mistake is one line naming the key."""
import os
import tomllib

import pytest

from scalenn.compress.recipe import RecipeError, load_recipe, parse_recipe, to_toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "mnist_cnn.toml")


def test_example_recipe_parses_and_round_trips():
    r = load_recipe(EXAMPLE)
    assert r["prune"]["sparsity"] == 0.9 and r["distill"]["temperature"] == 4.0
    assert r["quantize"]["scheme"] == "int8_dynamic" and r["finetune"]["epochs"] == 3
    assert parse_recipe(tomllib.loads(to_toml(r))) == r


def test_defaults_filled_and_optional_sections_absent():
    r = parse_recipe({"prune": {"sparsity": 0.5}})
    assert r["prune"]["pattern"] == "unstructured" and r["prune"]["schedule"] == "gradual"
    assert r["finetune"]["epochs"] == 1 and r["recipe"]["seed"] == 0
    assert "distill" not in r and "quantize" not in r
    assert parse_recipe({"prune": {"sparsity": 0.8, "pattern": "block:4x8"}})["prune"]["pattern"] \
        == "block:4x8"


BAD = [
    ({"prune": {"spasity": 0.9}}, r"unknown key in \[prune\]: 'spasity'; did you mean 'sparsity'"),
    ({"prunning": {}}, r"unknown section 'prunning'; did you mean 'prune'"),
    ({"prune": {"sparsity": 1.5}}, r"\[prune\] sparsity = 1.5 is impossible: .*< 1"),
    ({"prune": {"sparsity": -0.1}}, r"\[prune\] sparsity = -0.1 is impossible"),
    ({"prune": {"sparsity": "90%"}}, r"\[prune\] sparsity = '90%' is impossible: .*a number"),
    ({"prune": {"sparsity": True}}, r"\[prune\] sparsity = True is impossible"),
    ({"prune": {}}, r"\[prune\] needs sparsity"),
    ({"prune": {"sparsity": 0.9, "pattern": "3:4"}}, r"\[prune\] pattern = '3:4' is impossible"),
    ({"prune": {"sparsity": 0.9, "pattern": "block:0x4"}}, r"pattern = 'block:0x4'.*block sizes"),
    ({"prune": {"sparsity": 0.9, "pattern": "2:4"}}, r"pattern = \"2:4\".*set sparsity = 0.5"),
    ({"prune": {"sparsity": 0.9, "scope": "model"}}, r"\[prune\] scope = 'model' is impossible"),
    ({"prune": {"sparsity": 0.9, "frequency": 0}}, r"\[prune\] frequency = 0 is impossible"),
    ({"prune": {"sparsity": 0.9, "start": 0.8, "end": 0.5}}, r"end = 0.5 must be greater"),
    ({"prune": {"sparsity": 0.5, "initial_sparsity": 0.7}}, r"initial_sparsity = 0.7 exceeds"),
    ({"prune": {"sparsity": 0.9, "layers": "fc"}}, r"\[prune\] layers = 'fc' is impossible: .*list"),
    ({"prune": {"sparsity": 0.9, "layers": ["("]}}, r"invalid regular expression"),
    ({"prune": {"sparsity": 0.9}, "finetune": {"epochs": 0}}, r"gradual.*epochs = 0"),
    ({"distill": {}, "finetune": {"epochs": 0}}, r"\[distill\].*epochs = 0"),
    ({"distill": {"temperature": 0}}, r"\[distill\] temperature = 0 is impossible: .*> 0"),
    ({"distill": {"alpha": 2}}, r"\[distill\] alpha = 2 is impossible"),
    ({"finetune": {"epochs": -1}}, r"\[finetune\] epochs = -1 is impossible"),
    ({"finetune": {"epochs": 2.5}}, r"\[finetune\] epochs = 2.5 is impossible: .*integer"),
    ({"finetune": {"lr": 0}}, r"\[finetune\] lr = 0 is impossible"),
    ({"finetune": {"optimizer": "lbfgs"}}, r"optimizer = 'lbfgs' is impossible: .*'adam'"),
    ({"quantize": {"scheme": "int4"}}, r"\[quantize\] scheme = 'int4' is impossible"),
    ({"quantize": {"skp": []}}, r"unknown key in \[quantize\]: 'skp'; did you mean 'skip'"),
    ({"finetune": 3}, r"'finetune' must be a \[finetune\] table"),
]


@pytest.mark.parametrize("data,message", BAD)
def test_mistakes_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(RecipeError, match=message) as info:
        parse_recipe(data, source="r.toml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("r.toml: ")
    assert isinstance(info.value, ValueError)


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune]\nsparsity = = 0.9\n")
    with pytest.raises(RecipeError, match="not valid TOML.*line 2") as info:
        load_recipe(str(bad))
    assert "\n" not in str(info.value)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RecipeError):
        load_recipe(str(binary))
