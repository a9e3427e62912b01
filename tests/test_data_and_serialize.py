"""Fashion-MNIST loading and the module-swap helpers shared by quantize/sparsify."""
import gzip
import struct

import pytest
import torch
import torch.nn as nn

from scalenn import data
from scalenn.nn.swap import make_filter, named_modules_of_type, replace_module


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.dim()) + struct.pack(">" + "I" * array.dim(), *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_idx_reader_roundtrip_and_corrupt_file(tmp_path):
    imgs = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (5,), dtype=torch.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    x, y = data.load_fashion_mnist("test", root=str(tmp_path))
    assert x.shape == (5, 1, 28, 28) and torch.equal(y, labels.long())
    torch.testing.assert_close(x[:, 0], (imgs.float() / 255 - 0.2860) / 0.3530)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")  # claims 9 labels, has 3
    with pytest.raises(ValueError, match="expected 9 values"):
        data.load_fashion_mnist("test", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist("train", root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val", root=str(tmp_path))


@pytest.mark.skipif(not data.fashion_mnist_available(), reason=data.HOW_TO_GET)
def test_real_fashion_mnist_shapes():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert set(y.unique().tolist()) == set(range(10))


def test_swap_in_nested_containers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4), nn.ReLU()]),
                          nn.ModuleDict({"head": nn.Linear(4, 2)}))
    names = [n for n, _ in named_modules_of_type(model, nn.Linear)]
    assert names == ["0", "1.0", "2.head"]
    assert [n for n, _ in named_modules_of_type(model, nn.Linear, filter=[r"head$"])] == ["2.head"]
    assert [n for n, _ in named_modules_of_type(model, nn.Linear, skip=["0"])] == ["1.0", "2.head"]
    replace_module(model, "2.head", nn.Identity())
    replace_module(model, "1.0", nn.Identity())
    assert isinstance(model[2]["head"], nn.Identity) and isinstance(model[1][0], nn.Identity)
    with pytest.raises(ValueError, match="regular expression"):
        make_filter(["("])
    with pytest.raises(TypeError, match="filter"):
        make_filter([3])
