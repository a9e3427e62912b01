"""SparseLinear and sparsify: drop-in equivalence, sparse training, state_dict / scalenn.save /
scalenn.load, torch.compile(fullgraph=True), bad input."""
import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn.nn import SparseLinear

from test_sparse_ops import random_mask

LAYOUTS = ["csr", "bsr:4x4", "bsr:1x16", "nm:2:4"]


def masked_linear(layout, in_f=64, out_f=32, bias=True):
    lin = nn.Linear(in_f, out_f, bias=bias)
    mask = random_mask(layout, out_f, in_f, 0.3)
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask


@pytest.mark.parametrize("layout", LAYOUTS)
def test_from_dense_is_drop_in(isa, layout):
    lin, mask = masked_linear(layout)
    sp = SparseLinear.from_dense(lin, mask, layout)
    for shape in ((1, 64), (5, 64), (3, 7, 64), (64,), (0, 64)):
        x = torch.randn(*shape)
        torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-5)
    xb = torch.randn(9, 64, dtype=torch.bfloat16)
    assert sp(xb).dtype == torch.bfloat16
    x64 = torch.randn(4, 64, dtype=torch.float64)
    torch.testing.assert_close(sp(x64), lin.double()(x64))
    assert sp.in_features == 64 and sp.out_features == 32
    torch.testing.assert_close(sp.weight, (lin.weight * mask).float())
    torch.testing.assert_close(sp.to_dense().weight, lin.weight.float())
    assert f"layout={layout}" in repr(sp)
    assert 0 < sp.density <= 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_training_keeps_the_pattern(layout):
    lin, mask = masked_linear(layout)
    sp = SparseLinear.from_dense(lin, mask, layout)
    before = sp.dense_weight().detach() != 0
    opt = torch.optim.AdamW(sp.parameters(), lr=1e-2, weight_decay=0.1)
    params = {n for n, _ in sp.named_parameters()}
    assert params == {"values", "bias"}  # indices/offsets are buffers: never trained
    for _ in range(5):
        x = torch.randn(16, 64)
        loss = (sp(x) - torch.randn(16, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert sp.values.grad.shape == sp.values.shape
        opt.step()
    after = sp.dense_weight().detach() != 0
    assert not (after & ~before).any()  # nothing outside the pattern ever becomes nonzero


def test_state_dict_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    scalenn.prune(model, 0.5, "2:4", filter=["^0$"])
    scalenn.prune(model, 0.8, "unstructured", filter=["^2$"])
    scalenn.prune(model, 0.75, "block:4x4", filter=["^4$"])
    x = torch.randn(5, 64)
    ref = model(x)
    model, report = scalenn.sparsify(model, force=True, batch_sizes=(1,))
    assert [type(m).__name__ for m in model if not isinstance(m, nn.ReLU)] == ["SparseLinear"] * 3
    assert [e.layout for e in report.layers] == ["nm:2:4", "csr", "bsr:4x4"]
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "m.safetensors")
    scalenn.save(model, path)
    fresh = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    scalenn.load(fresh, path)
    assert isinstance(fresh[0], SparseLinear) and fresh[0].layout == "nm:2:4"
    torch.testing.assert_close(fresh(x), ref, rtol=1e-5, atol=1e-5)
    # state_dict round trip into a module built from the config
    sp = model[2]
    twin = SparseLinear.from_config(sp.compression_config())
    twin.load_state_dict(sp.state_dict())
    assert torch.equal(twin(torch.ones(2, 48)), sp(torch.ones(2, 48)))


def test_corrupt_state_is_rejected():
    lin, mask = masked_linear("csr")
    sp = SparseLinear.from_dense(lin, mask, "csr")
    state = sp.state_dict()
    state["indices"] = state["indices"].clone()
    state["indices"][0] = 64  # column out of range
    twin = SparseLinear.from_config(sp.compression_config())
    with pytest.raises(ValueError, match="out of range"):
        twin.load_state_dict(state)


@pytest.mark.parametrize("layout", ["csr", "nm:2:4"])
def test_torch_compile_fullgraph(layout):
    lin, mask = masked_linear(layout)
    sp = SparseLinear.from_dense(lin, mask, layout)
    model = nn.Sequential(sp, nn.ReLU(), nn.Linear(32, 3))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 64)
    y_eager = model(x)
    y_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    y_comp.sum().backward()
    g_comp = sp.values.grad.clone()
    sp.values.grad = None
    y_eager.sum().backward()
    torch.testing.assert_close(g_comp, sp.values.grad)


def test_bad_input():
    lin, mask = masked_linear("csr")
    sp = SparseLinear.from_dense(lin, mask, "csr")
    with pytest.raises(ValueError, match="in_features"):
        sp(torch.randn(3, 65))
    with pytest.raises(TypeError, match="floating"):
        sp(torch.ones(3, 64, dtype=torch.int32))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="layout"):
        SparseLinear(4, 4, "dense")
    with pytest.raises(ValueError, match="divide"):
        SparseLinear.from_dense(nn.Linear(10, 6), None, "bsr:4x4")


def test_sparsify_keeps_outputs_and_reports_choice():
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    scalenn.prune(model, 0.9)
    x = torch.randn(8, 256)
    ref = model(x)
    model, report = scalenn.sparsify(model, batch_sizes=(1, 16))
    assert len(report.layers) == 2
    for e in report.layers:
        assert e.choice in ("sparse", "dense") and e.reason
        assert set(e.speedup) == {1, 16}
    # masks are gone either way (dense layers get them baked in)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert "sparsify" in str(report)


def test_dense_from_batch_switch(tmp_path):
    lin, mask = masked_linear("nm:2:4")
    sp = SparseLinear.from_dense(lin, mask, "nm:2:4")
    big = SparseLinear.from_config({**sp.compression_config(), "dense_from_batch": 8})
    big.load_state_dict(sp.state_dict())
    assert "dense_from_batch=8" in repr(big)
    for shape in ((3, 64), (8, 64), (2, 5, 64)):
        x = torch.randn(*shape)
        torch.testing.assert_close(big(x), sp(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(16, 64)
    big(x).sum().backward()
    sp(x).sum().backward()
    torch.testing.assert_close(big.values.grad, sp.values.grad, rtol=1e-4, atol=1e-4)
    model = nn.Sequential(big)
    path = str(tmp_path / "b.safetensors")
    scalenn.save(model, path)
    fresh = scalenn.load(nn.Sequential(nn.Linear(64, 32)), path)
    assert fresh[0].dense_from_batch == 8
    with pytest.raises(ValueError, match="dense_from_batch"):
        SparseLinear(4, 4, dense_from_batch=0)
