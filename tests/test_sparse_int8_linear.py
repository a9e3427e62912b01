"""SparseInt8Linear as a drop-in layer: accuracy against the dense float layer with the same
mask, conversion in either order (quantize then sparsify, sparsify then quantize), shapes and
dtypes, save/load, state_dict, torch.compile, backward, bad input."""
import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn.nn import Int8Linear, SparseInt8Linear, SparseLinear


def masked_linear(k, n, sparsity=0.9, pattern="unstructured", bias=True):
    lin = nn.Linear(k, n, bias=bias)
    scalenn.prune(lin, sparsity, pattern)
    return lin


def rel_err(y, ref):
    y, ref = y.detach().double(), ref.detach().double()
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("pattern", ["unstructured", "block:1x4", "block:1x16", "2:4"])
def test_output_within_1e2_of_dense_layer_with_same_mask(pattern):
    lin = masked_linear(512, 300, 0.5 if pattern == "2:4" else 0.9, pattern)
    x = torch.randn(33, 512)
    ref = lin(x)
    m = SparseInt8Linear.from_dense(lin)  # the parametrized weight is the masked one
    assert rel_err(m(x), ref) <= 1e-2
    expected = "elem16" if pattern == "unstructured" else "quad"
    if pattern != "2:4":
        assert m.format == expected
    assert abs(m.density - (lin.weight != 0).float().mean().item()) < 1e-3


def test_from_dense_with_explicit_mask_and_to_dense():
    lin = nn.Linear(64, 48)
    mask = torch.rand(48, 64) < 0.2
    m = SparseInt8Linear.from_dense(lin, mask=mask)
    dense = m.to_dense()
    assert isinstance(dense, nn.Linear)
    assert torch.equal(dense.weight != 0, (m.weight != 0))
    assert not bool((dense.weight != 0)[~mask].any())
    x = torch.randn(5, 64)
    torch.testing.assert_close(dense(x), m(x), rtol=0.05, atol=0.05)  # activation quantization
    with pytest.raises(ValueError, match="mask shape"):
        SparseInt8Linear.from_dense(lin, mask=mask.t())


def test_both_conversion_orders_give_the_same_layer():
    torch.manual_seed(1)
    lin = masked_linear(200, 120)
    scalenn.remove_masks(lin)
    x = torch.randn(7, 200)
    # quantize, then sparsify
    a = nn.Sequential(nn.Linear(200, 120))
    a[0].load_state_dict(lin.state_dict())
    scalenn.quantize(a, force=True)
    assert isinstance(a[0], Int8Linear)
    _, report = scalenn.sparsify(a, force=True)
    assert isinstance(a[0], SparseInt8Linear), report
    # sparsify, then quantize
    b = nn.Sequential(nn.Linear(200, 120))
    b[0].load_state_dict(lin.state_dict())
    scalenn.sparsify(b, force=True)
    assert isinstance(b[0], SparseLinear)
    _, report = scalenn.quantize(b, force=True)
    assert isinstance(b[0], SparseInt8Linear) and report.swapped == ["0"]
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # and straight from a masked layer
    c = nn.Sequential(masked_linear(200, 120))
    c[0].parametrizations.weight.original.data.copy_(lin.weight)
    scalenn.quantize(c, force=True)
    assert isinstance(c[0], SparseInt8Linear)


def test_quantize_without_force_measures_and_reports():
    model = nn.Sequential(masked_linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    _, report = scalenn.quantize(model, batch_rows=16)
    entry = report.entries[0]
    assert entry["action"] in ("sparse_int8", "int8", "kept") and "measured" in entry["reason"]
    assert isinstance(model[0], (SparseInt8Linear, Int8Linear, nn.Linear))
    model(torch.randn(3, 256))


def test_quantize_keeps_pruned_layers_for_static_scheme():
    model = nn.Sequential(masked_linear(64, 64))
    _, report = scalenn.quantize(model, scheme="int8_static", force=True)
    assert report.entries[0]["action"] == "kept" and "int8_dynamic" in report.entries[0]["reason"]


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (0, 5), (4, 0, 5)])
def test_leading_dimensions_and_dtypes(shape):
    lin = masked_linear(5, 7, 0.5)
    m = SparseInt8Linear.from_dense(lin)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(*shape).to(dtype)
        y = m(x)
        assert y.shape == (*shape[:-1], 7) and y.dtype == dtype


def test_model_dtype_casts_keep_exact_float32_scales():
    m = SparseInt8Linear.from_dense(masked_linear(32, 16))
    scale, bias = m.weight_scale.clone(), m.bias.detach().clone()
    m.to(torch.bfloat16)
    assert torch.equal(m.weight_scale, scale) and torch.equal(m.bias, bias)
    assert m(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_all_zero_weight_gives_bias():
    lin = nn.Linear(16, 4)
    m = SparseInt8Linear.from_dense(lin, mask=torch.zeros(4, 16, dtype=torch.bool))
    assert m.kept == 0
    torch.testing.assert_close(m(torch.randn(3, 16)), lin.bias.detach().expand(3, 4))


def test_state_dict_and_save_load_round_trip(tmp_path):
    model = nn.Sequential(SparseInt8Linear.from_dense(masked_linear(100, 60)), nn.ReLU(),
                          SparseInt8Linear.from_dense(masked_linear(60, 10, pattern="block:1x4"),
                                                           format="quad"))
    x = torch.randn(4, 100)
    path = tmp_path / "m.safetensors"
    scalenn.save(model, str(path))
    fresh = nn.Sequential(nn.Linear(100, 60), nn.ReLU(), nn.Linear(60, 10))
    loaded = scalenn.load(fresh, str(path))
    assert isinstance(loaded[0], SparseInt8Linear) and loaded[2].format == "quad"
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    twin = SparseInt8Linear.from_config(model[0].compression_config())
    twin.load_state_dict(model[0].state_dict())
    torch.testing.assert_close(twin(x), model[0](x), rtol=0, atol=0)


def test_loading_corrupt_state_is_rejected():
    m = SparseInt8Linear.from_dense(masked_linear(40, 8))
    state = m.state_dict()
    state["base"] = torch.full_like(state["base"], 1000)
    twin = SparseInt8Linear.from_config(m.compression_config())
    with pytest.raises(ValueError, match="outside in_features"):
        twin.load_state_dict(state)


def test_compile_fullgraph_matches_eager():
    m = SparseInt8Linear.from_dense(masked_linear(64, 32))
    x = torch.randn(6, 64)
    compiled = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), rtol=0, atol=0)


def test_backward_reaches_input_and_bias_only():
    m = SparseInt8Linear.from_dense(masked_linear(30, 20))
    x = torch.randn(4, 30, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ m.weight)
    torch.testing.assert_close(m.bias.grad, g.sum(0))
    assert [n for n, p in m.named_parameters()] == ["bias"]


def test_fine_tuning_through_the_layer_reduces_loss():
    torch.manual_seed(0)
    head = nn.Linear(20, 1)
    model = nn.Sequential(SparseInt8Linear.from_dense(masked_linear(16, 20, 0.5)), nn.ReLU(), head)
    x, target = torch.randn(64, 16), torch.randn(64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_extra_repr_and_bytes():
    m = SparseInt8Linear.from_dense(masked_linear(1024, 256))
    r = repr(m)
    assert "format=elem16" in r and "density=0.1" in r and "bytes_per_kept=" in r
    # (1 value + 1 index byte) per entry at ~80% fill, + step bases, offsets and scales
    assert 2.2 <= m.bytes_per_kept_weight <= 2.8


def test_bad_input():
    m = SparseInt8Linear.from_dense(masked_linear(8, 4, 0.5))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        m(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="in_features = 8"):
        m(torch.randn(2, 9))
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        SparseInt8Linear.from_dense(m)
    with pytest.raises(TypeError, match="expected an Int8Linear"):
        SparseInt8Linear.from_int8(nn.Linear(2, 2))
    static = Int8Linear.from_dense(nn.Linear(8, 4), scheme="int8_static")
    with pytest.raises(ValueError, match="int8_dynamic"):
        SparseInt8Linear.from_int8(static)
    with pytest.raises(ValueError, match="format must be one of"):
        SparseInt8Linear(8, 4, format="csr")
