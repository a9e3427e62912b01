"""`scalenn compress` end to end: the happy path on a tiny model, and every error path (one-line
message, exit code 2, nothing left in or next to --out)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import scalenn
from scalenn import training
from scalenn.cli import main
from scalenn.compress.recipe import load_recipe
from scalenn.models import MnistCNN, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = """
[recipe]
name = "tiny"
seed = 1
[finetune]
epochs = 1
batch_size = 16
lr = 1e-3
[prune]
sparsity = 0.5
frequency = 1
[distill]
temperature = 2.0
alpha = 0.5
[quantize]
scheme = "int8_dynamic"
"""


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("test", 32)):
        save_file({"x": torch.randn(n, 1, 28, 28), "y": torch.randint(0, 10, (n,))},
                  str(data / f"{split}.safetensors"))
    weights = tmp_path / "mlp.pt"
    torch.save(mlp().state_dict(), weights)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return {"data": str(data), "weights": str(weights), "recipe": str(recipe),
            "out": str(tmp_path / "out"), "tmp": tmp_path}


def args(s, **over):
    a = {"model": "scalenn.models:mlp", "weights": s["weights"], "recipe": s["recipe"],
         "data": s["data"], "out": s["out"]}
    a.update(over)
    return ["compress"] + [x for k, v in a.items() for x in (f"--{k}", v)] + ["--quiet",
                                                                             "--quick-latency"]


def assert_clean_failure(s, capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("scalenn compress: error: ") and "\n" not in err, err
    assert message in err, err
    assert not os.path.exists(s["out"])
    assert not [p for p in os.listdir(s["tmp"]) if "partial" in p]


def test_happy_path_writes_loadable_model_recipe_and_report(setup):
    s = setup
    result = subprocess.run([sys.executable, "-m", "scalenn", *args(s)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = s["out"]
    for name in ("model.safetensors", "recipe.toml", "report.md", "report.png", "report.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not [p for p in os.listdir(s["tmp"]) if "partial" in p]
    assert load_recipe(os.path.join(out, "recipe.toml")) == load_recipe(s["recipe"])
    rep = json.loads(open(os.path.join(out, "report.json")).read())
    # the saved model reloads into a fresh model from the factory and scores what was reported
    model = scalenn.load(mlp(), os.path.join(out, "model.safetensors")).eval()
    from safetensors.torch import load_file
    test = load_file(os.path.join(s["data"], "test.safetensors"))
    assert training.evaluate(model, test["x"], test["y"]) == rep["rows"][1]["top1"]
    md = open(os.path.join(out, "report.md")).read()
    steps = {st["step"]: st["status"] for st in rep["steps"]}
    assert steps["prune"] in ("scheduled", "done")
    assert steps["sparsify"] == "done" and steps["quantize"] == "done"
    assert "**sparsify**: done — SparseLinear: " in md and "kept dense: " in md
    assert "| dense (as loaded) |" in md and "latency b=256" in md


def test_error_exit_code_from_the_real_command(setup):
    s = setup
    result = subprocess.run([sys.executable, "-m", "scalenn", *args(s, weights=s["weights"] + "x")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "file not found" in result.stderr
    assert not os.path.exists(s["out"])


def test_missing_and_corrupt_weights(setup, capsys):
    s = setup
    assert_clean_failure(s, capsys, args(s, weights=str(s["tmp"] / "nope.safetensors")),
                         "file not found")
    junk = s["tmp"] / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    assert_clean_failure(s, capsys, args(s, weights=str(junk)), "not a readable safetensors file")
    good = s["tmp"] / "good.safetensors"
    save_file(mlp().state_dict(), str(good))
    truncated = s["tmp"] / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    assert_clean_failure(s, capsys, args(s, weights=str(truncated)), "not a readable safetensors")
    junk_pt = s["tmp"] / "junk.pt"
    junk_pt.write_bytes(b"PK\x03\x04" + os.urandom(200))
    assert_clean_failure(s, capsys, args(s, weights=str(junk_pt)), "not a readable torch state dict")
    other = s["tmp"] / "cnn.pt"
    torch.save(MnistCNN().state_dict(), other)
    assert_clean_failure(s, capsys, args(s, weights=str(other)), "does not match the model")
    wide = s["tmp"] / "wide.safetensors"
    save_file(mlp(hidden=(100, 64)).state_dict(), str(wide))
    assert_clean_failure(s, capsys, args(s, weights=str(wide)), "tensor shapes differ")
    assert_clean_failure(s, capsys, args(s, weights=s["recipe"]), "unknown extension")


def test_bad_recipe(setup, capsys):
    s = setup
    bad = s["tmp"] / "bad.toml"
    bad.write_text(RECIPE.replace("sparsity = 0.5", "sparsity = 0.5\nspasity = 0.9"))
    assert_clean_failure(s, capsys, args(s, recipe=str(bad)), "did you mean 'sparsity'")
    bad.write_text(RECIPE.replace("temperature = 2.0", "temperature = -1.0"))
    assert_clean_failure(s, capsys, args(s, recipe=str(bad)), "[distill] temperature = -1.0 is impossible")
    assert_clean_failure(s, capsys, args(s, recipe=str(s["tmp"] / "none.toml")), "not found")


def test_bad_factory(setup, capsys):
    s = setup
    assert_clean_failure(s, capsys, args(s, model="no_such_package.models:net"),
                         "cannot import no_such_package.models")
    assert_clean_failure(s, capsys, args(s, model="scalenn.models:no_such_factory"),
                         "has no callable 'no_such_factory'")
    assert_clean_failure(s, capsys, args(s, model="scalenn.models"), "pkg.module:factory")
    assert_clean_failure(s, capsys, args(s, model="scalenn.models:__doc__"), "has no callable")


def test_bad_data(setup, capsys):
    s = setup
    wrong = s["tmp"] / "wrong"
    wrong.mkdir()
    for split in ("train", "test"):
        save_file({"x": torch.randn(8, 1, 20, 20), "y": torch.randint(0, 10, (8,))},
                  str(wrong / f"{split}.safetensors"))
    assert_clean_failure(s, capsys, args(s, data=str(wrong)), "(1, 20, 20) per sample do not fit")
    for split in ("train", "test"):
        save_file({"x": torch.randn(8, 1, 28, 28), "y": torch.randint(0, 12, (8,)) + 5},
                  str(wrong / f"{split}.safetensors"))
    assert_clean_failure(s, capsys, args(s, data=str(wrong)), "predicts 10 classes")
    for split in ("train", "test"):
        save_file({"inputs": torch.randn(8, 784)}, str(wrong / f"{split}.safetensors"))
    assert_clean_failure(s, capsys, args(s, data=str(wrong)), "expected tensors 'x'")
    empty = s["tmp"] / "empty"
    empty.mkdir()
    assert_clean_failure(s, capsys, args(s, data=str(empty)), "expected the four Fashion-MNIST")
    assert_clean_failure(s, capsys, args(s, data=str(s["tmp"] / "nowhere")), "not a folder")


def test_out_must_be_new_or_empty(setup, capsys):
    s = setup
    os.makedirs(s["out"])
    (s["tmp"] / "out" / "keep.txt").write_text("mine")
    code = main(args(s))
    err = capsys.readouterr().err
    assert code == 2 and "not an empty folder" in err
    assert os.listdir(s["out"]) == ["keep.txt"]
    assert not [p for p in os.listdir(s["tmp"]) if "partial" in p]
