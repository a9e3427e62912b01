"""Int8Conv2d (int8 GEMM on im2col patches): accuracy against nn.Conv2d on odd geometries, exact
agreement with the int8 reference on the patches, gradients, save/load, compile, quantize(convs=)
and what it refuses."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scalenn
from scalenn._ops.int8 import im2col_rows_reference, int8_linear_reference
from scalenn.nn import Int8Conv2d

GEOMETRIES = [
    dict(in_channels=1, out_channels=32, kernel_size=3, padding=1),
    dict(in_channels=32, out_channels=64, kernel_size=3, padding=1),
    dict(in_channels=5, out_channels=7, kernel_size=(3, 2), stride=2, padding=(1, 0),
         dilation=(2, 1)),
    dict(in_channels=3, out_channels=4, kernel_size=1, bias=False),
    dict(in_channels=2, out_channels=3, kernel_size=5, stride=3),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding=2, dilation=(1, 2)),  # dw > 1
]


def rel_err(y, ref):
    y, ref = y.detach().double(), ref.detach().double()
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_matches_conv2d_and_the_int8_reference(isa, geometry):
    conv = nn.Conv2d(**geometry)
    q = Int8Conv2d.from_dense(conv)
    x = torch.randn(3, conv.in_channels, 17, 12)
    with torch.no_grad():
        y, ref = q(x), conv(x)
    assert y.shape == ref.shape
    assert rel_err(y, ref) <= 1e-2
    # exactly the int8 linear on the im2col patches (float64 epilogue vs the kernel's float32)
    patches = im2col_rows_reference(x, q.kernel_size, q.stride, q.padding, q.dilation)
    exact = int8_linear_reference(patches, q.weight_int8, q.weight_scale, q.bias)
    torch.testing.assert_close(y.permute(0, 2, 3, 1).reshape(-1, q.out_features).double(), exact,
                               rtol=1e-5, atol=1e-4)


def test_zero_batch_and_bf16():
    q = Int8Conv2d.from_dense(nn.Conv2d(2, 4, 3, padding=1))
    assert q(torch.randn(0, 2, 5, 5)).shape == (0, 4, 5, 5)
    y = q(torch.randn(2, 2, 5, 5, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 4, 5, 5)


def test_gradient_reaches_input_and_bias():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    q = Int8Conv2d.from_dense(conv)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    q(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.conv2d(x2, q.to_dense().weight, None, 1, 1).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)  # straight-through
    assert q.bias.grad is not None


def test_save_load_compile_and_to_dense(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
    scalenn.quantize(model, force=True, convs=True)
    assert all(isinstance(model[i], Int8Conv2d) for i in (0, 2))
    x = torch.randn(2, 1, 9, 9)
    path = tmp_path / "m.safetensors"
    scalenn.save(model, str(path))
    fresh = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
    loaded = scalenn.load(fresh, str(path))
    assert isinstance(loaded[2], Int8Conv2d)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    dense = model[0].to_dense()
    assert isinstance(dense, nn.Conv2d) and dense.weight.shape == (8, 1, 3, 3)


def test_quantize_leaves_convs_alone_unless_asked_and_reports_refusals():
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Conv2d(4, 4, 3, padding="same"))
    scalenn.quantize(model, force=True)
    assert type(model[0]) is nn.Conv2d
    _, report = scalenn.quantize(model, force=True, convs=True)
    assert isinstance(model[0], Int8Conv2d)
    kept = {e["name"]: e["reason"] for e in report.entries if e["action"] == "kept"}
    assert "groups=2" in kept["1"] and "padding" in kept["2"]
    _, report = scalenn.sparsify(model)  # an Int8Conv2d is not an int8 Linear to sparsify
    assert isinstance(model[0], Int8Conv2d)


def test_opcheck():
    q = Int8Conv2d.from_dense(nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=1))
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.scalenn.int8_conv2d_rows,
                          (x, q._packed, q.weight_scale, q.bias.detach().requires_grad_(True), 5,
                           [3, 2], [2, 1], [1, 1], [1, 1]))


def test_bad_input():
    q = Int8Conv2d.from_dense(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        q(torch.randn(2, 4, 5, 5))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        q(torch.ones(2, 3, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="does not fit"):
        torch.ops.scalenn.int8_conv2d_rows(torch.randn(1, 3, 2, 2), q._packed, q.weight_scale,
                                           None, 4, [3, 3], [1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="groups=3"):
        Int8Conv2d.from_dense(nn.Conv2d(3, 3, 3, groups=3))
