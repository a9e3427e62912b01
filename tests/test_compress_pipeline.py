"""scalenn.compress (Python form), the training loop, latency, size measurement and the report."""
import copy
import os

import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn import latency, report, training
from scalenn.compress.measure import (count_params, effective_nonzero, linear_sparsity,
                                      safetensors_bytes)
from scalenn.compress.recipe import RecipeError
from scalenn.models import mlp


def separable(n, seed):
    """Noisy copies of 10 fixed random prototypes: a task an MLP learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    return protos[y] + 2.0 * torch.randn(n, 1, 28, 28, generator=g), y


def test_compress_python_form_finetunes_with_distillation_and_reports_steps():
    xtr, ytr = separable(512, 1)
    xte, yte = separable(256, 2)
    model = mlp()
    loader = training.TensorBatches(xtr, ytr, 32, seed=0)
    recipe = {"finetune": {"epochs": 3, "lr": 3e-3},
              "distill": {"temperature": 2.0, "alpha": 0.0}}  # alpha 0: labels only
    logs = []
    out, rep = scalenn.compress(model, recipe, loader, lambda m: training.evaluate(m, xte, yte),
                                progress=False, log=logs.append)
    assert out is model
    assert rep["top1_after"] > rep["top1_before"] + 0.5  # it really trained
    assert [h["epoch"] for h in rep["history"]] == [1, 2, 3]
    assert rep["history"][-1]["test_top1"] == rep["top1_after"]
    assert rep["steps"][-1]["step"] == "finetune" and rep["steps"][-1]["status"] == "done"
    assert any("before compression" in line for line in logs)


def test_compress_prunes_packs_and_quantizes_and_reports_each_layer():
    xtr, ytr = separable(128, 3)
    model = mlp()
    recipe = {"finetune": {"epochs": 1, "batch_size": 32},
              "prune": {"sparsity": 0.75, "frequency": 1, "end": 0.5, "skip": ["5"],
                        "force": True},
              "quantize": {"force": True}}
    out, rep = scalenn.compress(model, recipe, training.TensorBatches(xtr, ytr, 32),
                                progress=False, log=lambda s: None)
    steps = {s["step"]: s for s in rep["steps"]}
    assert [s["step"] for s in rep["steps"]] == ["prune", "finetune", "sparsify", "quantize"]
    assert steps["prune"]["status"] == "scheduled" and steps["finetune"]["status"] == "done"
    names = [n for n, m in mlp().named_modules() if isinstance(m, nn.Linear)]
    # every Linear but the skipped one is packed (forced) and named in the report, then the
    # forced quantize turns the packed layers into SparseInt8Linear and the skipped one into
    # Int8Linear
    packed = [e["name"] for e in steps["sparsify"]["layers"] if e["choice"] == "sparse"]
    assert packed == [n for n in names if n != "5"]
    for n in packed:
        assert isinstance(out.get_submodule(n), scalenn.nn.SparseInt8Linear)
        assert f"{n} csr density" in steps["sparsify"]["detail"]
    assert isinstance(out.get_submodule("5"), scalenn.nn.Int8Linear)
    assert "Int8Linear: 5;" in steps["quantize"]["detail"]
    assert f"SparseInt8Linear: {', '.join(packed)};" in steps["quantize"]["detail"]
    assert rep["linear_sparsity"] >= 0.7
    assert out(xtr[:4]).shape == (4, 10)


def test_compress_prunes_only_linear_layers_and_saves_no_masks(tmp_path):
    """Convolutions stay dense (no sparse module to pack them into): a pruned conv would be
    saved as its unmasked original plus a mask, bigger than the dense layer."""
    from scalenn.models import mnist_cnn
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    model = mnist_cnn()
    dense_bytes = safetensors_bytes(model)
    recipe = {"finetune": {"epochs": 1}, "prune": {"sparsity": 0.9, "schedule": "oneshot",
                                                   "skip": ["classifier\\.2"], "force": True}}
    out, rep = scalenn.compress(model, recipe, [(x[:32], y[:32]), (x[32:], y[32:])],
                                progress=False, log=lambda s: None)
    assert [e["name"] for e in rep["steps"][2]["layers"]] == ["classifier.0"]
    assert not any("mask" in k or "original" in k for k in out.state_dict())
    assert int(torch.count_nonzero(out.features[3].weight)) == out.features[3].weight.numel()
    assert type(out.classifier[2]) is nn.Linear
    # 90% of 3136x128 gone, stored as fp32 values + int16 column indices
    assert safetensors_bytes(out) < 0.3 * dense_bytes


def test_compress_rejects_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        scalenn.compress("model", {}, [], None)
    with pytest.raises(RecipeError, match="unknown section"):
        scalenn.compress(mlp(), {"prunе": {}}, [], None)
    frozen = mlp()
    scalenn.freeze(frozen)
    with pytest.raises(ValueError, match="no trainable parameter"):
        scalenn.compress(frozen, {"finetune": {"epochs": 1}}, [(torch.randn(2, 784),
                                                                torch.tensor([0, 1]))],
                         progress=False, log=lambda s: None)


def test_training_loop_and_loader():
    x, y = separable(100, 4)
    loader = training.TensorBatches(x, y, 32)
    assert len(loader) == 4 and sum(b[0].shape[0] for b in loader) == 100
    first = [b[1] for b in loader]
    assert not all(torch.equal(a, b) for a, b in zip(first, [b[1] for b in loader]))  # reshuffled
    model = mlp()
    hist = training.fit(model, loader, torch.optim.Adam(model.parameters(), 1e-3), 2,
                        eval_fn=lambda m: training.evaluate(m, x, y), progress=False)
    assert len(hist) == 2 and set(hist[0]) == {"epoch", "loss", "train_top1", "test_top1"}
    steps = []
    training.train_epoch(model, loader, torch.optim.SGD(model.parameters(), 0.1),
                         on_step=lambda: steps.append(1), max_steps=3, progress=False)
    assert len(steps) == 3
    with pytest.raises(ValueError, match="no batch"):
        training.train_epoch(model, [], torch.optim.SGD(model.parameters(), 0.1), progress=False)
    with pytest.raises(ValueError, match="labels"):
        training.TensorBatches(x, y[:5], 8)
    # evaluate: exact top-1 against a hand count
    logits = model.eval()(x)
    assert training.evaluate(model, x, y, batch_size=7) == int((logits.argmax(-1) == y).sum()) / 100


def test_sizes_sparsity_and_torch_ao_bytes():
    model = mlp()
    assert count_params(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    with torch.no_grad():
        model[1].weight[:, :392] = 0  # half of the first layer
    assert effective_nonzero(model) == count_params(model) - 128 * 392
    assert linear_sparsity(model) == pytest.approx(128 * 392 / (784 * 128 + 128 * 64 + 640))
    dense = safetensors_bytes(model)
    assert count_params(model) * 4 < dense < count_params(model) * 4 + 4096
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    ao_bytes = safetensors_bytes(ao)
    # int8 weights + fp32 biases + scales
    assert 784 * 128 + 128 * 64 + 640 < ao_bytes < dense / 3


def test_latency_is_measured_for_every_variant_and_batch():
    a, b = mlp(), mlp()
    lat = latency.measure({"a": a, "b": b}, lambda n: torch.randn(n, 784), batch_sizes=(1, 8),
                          rounds=3)
    assert set(lat) == {"a", "b"} and all(set(v) == {1, 8} for v in lat.values())
    assert all(t > 0 for v in lat.values() for t in v.values())
    with pytest.raises(ValueError, match="no model"):
        latency.measure({}, lambda n: torch.randn(n, 784))


def test_report_table_markdown_and_png(tmp_path):
    rows = [{"variant": "dense fp32", "top1": 0.9, "params": 1000, "nonzero": 1000,
             "bytes": 4000, "latency": {1: 2e-4, 256: 4e-3}, "status": "ok"},
            {"variant": "int8", "top1": 0.895, "params": 1000, "nonzero": 1000, "bytes": 1000,
             "latency": {1: 1e-4, 256: 2e-3}, "status": "ok"},
            {"variant": "scalenn sparse",
             "status": "skipped: no CUDA device"}]
    text = report.format_table(rows)
    assert "4.00x" in text and "2.00x" in text and "90.00%" in text and "89.50%" in text
    assert "skipped: no CUDA device" in text
    paths = report.write(str(tmp_path), "r", "title", rows, [("curve", [(0.0, 0.9), (0.5, 0.8)])])
    md = open(paths["md"]).read()
    assert md.startswith("# title") and "| int8 | 89.50% |" in md and "![" in md
    assert os.path.getsize(paths["png"]) > 1000
    report.write(str(tmp_path), "empty", "t", rows[2:], [])  # nothing measured: still writes


def test_compress_is_callable_and_still_the_package():
    import importlib
    import scalenn.compress.recipe as recipe_module
    from scalenn.compress import distill
    assert callable(scalenn.compress) and scalenn.compress.recipe is recipe_module
    assert importlib.import_module("scalenn.compress") is scalenn.compress
    assert distill.DistillationLoss is scalenn.DistillationLoss


def test_effective_nonzero_sees_torch_prune_masks():
    import torch.nn.utils.prune as tprune
    model = mlp()
    tprune.l1_unstructured(model[1], "weight", amount=0.5)
    assert effective_nonzero(model) == count_params(model) - 784 * 128 // 2


def test_flip_and_shift_augmentation_against_a_loop():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 9, 7)
    got = training.flip_and_shift(x, g, max_shift=2)
    # replay the same random draws and build the reference image by image
    g = torch.Generator().manual_seed(5)
    flip = torch.rand(6, generator=g) < 0.5
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    fill = float(torch.where(flip[:, None, None, None], x.flip(-1), x).min())
    for i in range(6):
        img = x[i].flip(-1) if flip[i] else x[i]
        canvas = torch.full((2, 13, 11), fill)
        canvas[:, 2:11, 2:9] = img
        assert torch.equal(got[i], canvas[:, oy[i]:oy[i] + 9, ox[i]:ox[i] + 7])
    assert training.flip_and_shift(torch.randn(0, 1, 4, 4)).shape == (0, 1, 4, 4)
    loader = training.TensorBatches(x, torch.zeros(6).long(), 4, augment=training.flip_and_shift)
    assert [b[0].shape for b in loader] == [(4, 2, 9, 7), (2, 2, 9, 7)]
