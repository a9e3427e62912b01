"""Short version of benchmarks/sparse_accuracy.py: the MLP on a Fashion-MNIST subset, gradual
pruning to 90% unstructured and to 2:4 with fine-tuning, then sparsify -> SparseLinear, and
quantize(force=True) of the pruned model -> SparseInt8Linear."""
import importlib.util
import os

import pytest

from scalenn.data import fashion_mnist_available

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "sparse_accuracy.py")


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_short_accuracy_run():
    spec = importlib.util.spec_from_file_location("sparse_accuracy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(quick=True, log=lambda *a: None)
    by = {r["variant"]: r for r in rows}
    dense = by["dense"]["test_acc"]
    assert dense > 75.0  # 3 epochs on 8k images: a working model (10 classes, chance = 10%)
    unstructured = by["unstructured (global)"]
    nm = by["2:4 (layer)"]
    assert abs(unstructured["sparsity"] - 0.9) < 0.01 and abs(nm["sparsity"] - 0.5) < 0.01
    # The short run fine-tunes one epoch only, so the margins are wider than the full script's
    # targets (1 and 0.5 points); the full run's numbers are in benchmarks/results/.
    assert unstructured["test_acc"] > dense - 6.0
    assert nm["test_acc"] > dense - 4.0
    # The sparsified model (SparseLinear kernels) predicts exactly like the masked model, up to
    # argmax ties from float32 rounding differences.
    for r in (unstructured, nm):
        assert r["sparse_layers"] == 3
        assert abs(r["sparse_kernel_acc"] - r["test_acc"]) <= 0.1
    # Sparse + int8: every pruned Linear became a SparseInt8Linear, and int8 weights (per
    # channel) and activations (per token) cost at most a point on the 2000 test images.
    for r in (unstructured, nm):
        assert r["sparse_int8_layers"] == 3
        assert abs(r["sparse_int8_acc"] - r["test_acc"]) <= 1.0
    assert by["dense"]["sparse_int8_acc"] is None
