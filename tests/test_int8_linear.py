"""Int8Linear and scalenn.quantize / calibrate / prepare_qat: accuracy against the fp32 layer,
per-token vs per-tensor, conversion of nested models with filters and a report, the measured
cost model, QAT equivalence, input gradients, state_dict and scalenn.save/load into a fresh
model, torch.compile / torch.export, and bad input."""
import pytest
import torch
import torch.nn as nn

import scalenn
from scalenn.compress import int8_cost
from scalenn.nn import Int8Linear, QATLinear


def rel_err(y, ref):
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def per_tensor_int8_linear(x, lin):
    """What a per-tensor dynamic int8 path does: one scale for the whole activation tensor."""
    s = x.abs().amax() / 127
    xq = torch.round(x / s).clamp(-127, 127) * s
    q, ws = scalenn.quantize_per_row(lin.weight.detach())
    return nn.functional.linear(xq, q.float() * ws[:, None], lin.bias)


# Relative error bounds. Per-token symmetric int8 with round-to-nearest has a step of
# max|row| / 127, so the error grows with the row's peak-to-rms ratio: Gaussian rows of 512 meet
# the 1e-2 target (measured ~0.8%), heavy-tailed rows do not quite (Laplace ~1.2%, Student-t with
# 3 degrees of freedom ~2.1%, its rows peak at ~15x their rms). The bounds state that honestly;
# such layers take int8_weight_only (tests/test_int8_weight_only.py: within 1e-2 on both), which
# scalenn.quantize(activation_check=...) picks from the measured activation error.
@pytest.mark.parametrize("dist, bound", [("gaussian", 1e-2), ("laplace", 1.5e-2),
                                         ("student_t3", 3e-2)])
def test_accuracy_vs_fp32(isa, dist, bound):
    lin = nn.Linear(512, 384)
    if dist == "gaussian":
        x = torch.randn(64, 512)
    elif dist == "laplace":
        x = torch.distributions.Laplace(0.0, 1.0).sample((64, 512))
    else:
        x = torch.distributions.StudentT(3.0).sample((64, 512))
    q = Int8Linear.from_dense(lin)
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) <= bound


def test_per_token_beats_per_tensor_on_outlier_rows():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    x = torch.randn(64, 256)
    x[::8] *= 100.0  # a few tokens with large activations, as in transformer residual streams
    q = Int8Linear.from_dense(lin)
    with torch.no_grad():
        ref = lin(x)
        err_token = rel_err(q(x)[1::8], ref[1::8])  # the ordinary rows
        err_tensor = rel_err(per_tensor_int8_linear(x, lin)[1::8], ref[1::8])
    assert err_token <= 1e-2
    assert err_tensor > 10 * err_token, (err_token, err_tensor)


def test_drop_in_shapes_dtypes_and_bias():
    lin = nn.Linear(33, 17, bias=False)
    q = Int8Linear.from_dense(lin)
    assert q.bias is None and q.in_features == 33 and q.out_features == 17
    for shape in [(33,), (4, 33), (2, 3, 33), (0, 33), (2, 0, 33)]:
        x = torch.randn(shape)
        with torch.no_grad():
            y = q(x)
            assert y.shape == shape[:-1] + (17,)
            if x.numel():
                assert rel_err(y, lin(x)) < 2e-2
    xb = torch.randn(5, 33, dtype=torch.bfloat16)
    yb = q(xb)
    assert yb.dtype == torch.bfloat16
    with torch.no_grad():
        assert rel_err(yb, lin(xb.float())) < 3e-2
    assert "scheme=int8_dynamic" in repr(q) and "in_features=33" in repr(q)
    dense = q.to_dense()
    torch.testing.assert_close(dense.weight, q.weight)


def test_model_dtype_casts_keep_float32_scales():
    q = Int8Linear.from_dense(nn.Linear(16, 8))
    scale, bias = q.weight_scale.clone(), q.bias.detach().clone()
    q.to(torch.bfloat16)
    assert q.weight_scale.dtype == torch.float32 and q.bias.dtype == torch.float32
    assert torch.equal(q.weight_scale, scale) and torch.equal(q.bias, bias)  # not rounded
    assert q(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(32, 32), "k": nn.Linear(32, 32)})
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, x):
        return x + self.mlp(self.attn["q"](x) * torch.sigmoid(self.attn["k"](x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(32, 5)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def test_quantize_nested_model_with_filter_skip_and_report():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(8, 32)
    with torch.no_grad():
        ref = net(x)
    model, report = scalenn.quantize(net, force=True, skip=["head"],
                                     filter=lambda m, name: not name.endswith("attn.k"))
    assert model is net
    assert isinstance(net.blocks[0].attn["q"], Int8Linear)
    assert isinstance(net.blocks[1].mlp[2], Int8Linear)
    assert type(net.blocks[0].attn["k"]) is nn.Linear and type(net.head) is nn.Linear
    assert set(report.swapped) == {f"blocks.{i}.{n}" for i in range(2)
                                   for n in ("attn.q", "mlp.0", "mlp.2")}
    reasons = {e["name"]: e["reason"] for e in report.entries}
    assert reasons["head"] == "in skip" and reasons["blocks.0.attn.k"] == "excluded by filter"
    assert "swapped" in str(report)
    with torch.no_grad():
        assert rel_err(net(x), ref) < 2e-2
    # regex filters; a second call leaves converted layers alone
    _, report2 = scalenn.quantize(net, force=True, filter=[r"attn\.k$"])
    assert set(report2.swapped) == {"blocks.0.attn.k", "blocks.1.attn.k"}


def test_cost_model_keeps_slow_layers_dense(monkeypatch):
    calls = []

    def fake_measure(k, n, rows, scheme, dtype=torch.float32):
        calls.append((k, n, rows))
        return (1e-4, 5e-5) if k * n >= 64 * 64 else (1e-6, 5e-6)  # (dense s, int8 s)

    monkeypatch.setattr(int8_cost, "measure", fake_measure)
    monkeypatch.setattr(int8_cost, "_CACHE", {})
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    _, report = scalenn.quantize(model, batch_rows=32)
    assert isinstance(model[0], Int8Linear) and type(model[2]) is nn.Linear
    assert report.swapped == ["0"] and report.skipped == ["2"]
    assert "dense not slower" in report.entries[1]["reason"] and "measured" in report.entries[1]["reason"]
    assert calls == [(128, 128, 32), (128, 4, 32)]


def test_cost_model_measures_real_timings():
    choice = int8_cost.choose(64, 32, 8, "int8_dynamic")
    assert choice.dense_us > 0 and choice.int8_us > 0 and "measured" in choice.reason


def test_weight_only_and_static_schemes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref = model(x)
    wo = Int8Linear.from_dense(model[0], scheme="int8_weight_only")
    with torch.no_grad():
        assert rel_err(wo(x), model[0](x)) < 1e-2
    _, report = scalenn.quantize(model, scheme="int8_static", force=True)
    assert len(report.swapped) == 2
    with pytest.raises(ValueError, match="calibrate"):
        model(x)
    scalenn.calibrate(model, [x[:16], x[16:]])
    assert model[0]._act_scale == pytest.approx(float(x.abs().max()) / 127)
    with torch.no_grad():
        assert rel_err(model(x), ref) < 3e-2
    assert "act_scale=" in repr(model[0])
    # the calibrated scale is part of the saved state
    fresh = Int8Linear(64, 128, scheme="int8_static")
    fresh.load_state_dict(model[0].state_dict())
    torch.testing.assert_close(fresh(x), model[0](x), rtol=0, atol=0)


def test_qat_then_convert_matches_qat_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 3))
    scalenn.prepare_qat(model)
    assert isinstance(model[0], QATLinear) and isinstance(model[2], QATLinear)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, target = torch.randn(64, 20), torch.randint(0, 3, (64,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]  # straight-through gradients train the model
    with torch.no_grad():
        qat_out = model(x)
    scalenn.quantize(model, force=True)
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], Int8Linear)
    with torch.no_grad():
        int8_out = model(x)
    # Same integers and scales; only the float rounding of the epilogue differs.
    torch.testing.assert_close(int8_out, qat_out, rtol=1e-5, atol=1e-5)


def test_input_gradient_flows_through_frozen_int8_layer():
    lin = nn.Linear(24, 12)
    q = Int8Linear.from_dense(lin)
    x = torch.randn(5, 3, 24, requires_grad=True)
    y = q(x)
    g = torch.randn_like(y)
    y.backward(g)
    # straight through the activation quantization: dL/dx = g @ W_int8_dequantized
    torch.testing.assert_close(x.grad, g @ q.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.bias.grad, g.sum((0, 1)), rtol=1e-5, atol=1e-5)
    assert q.weight_int8.grad is None


def test_state_dict_roundtrip_and_save_load_into_fresh_model(tmp_path):
    torch.manual_seed(0)
    net = Net()
    scalenn.quantize(net, force=True)
    x = torch.randn(6, 32)
    with torch.no_grad():
        y = net(x)
    sd = net.blocks[0].mlp[0].state_dict()
    assert "_packed" not in sd and {"weight_int8", "weight_scale", "bias"} <= set(sd)
    fresh = Int8Linear(32, 64)
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), net.blocks[0].mlp[0](x), rtol=0, atol=0)

    path = str(tmp_path / "net.safetensors")
    layers = scalenn.save(net, path)
    assert layers["blocks.0.attn.q"]["type"] == "Int8Linear"
    new = Net()
    scalenn.load(new, path)
    assert isinstance(new.blocks[1].mlp[2], Int8Linear)
    with torch.no_grad():
        torch.testing.assert_close(new(x), y, rtol=0, atol=0)


def test_torch_compile_fullgraph_and_export_match_eager():
    torch.manual_seed(0)
    net = Net()
    scalenn.quantize(net, force=True)
    x = torch.randn(7, 32)
    with torch.no_grad():
        eager = net(x)
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(compiled(torch.randn(3, 2, 32)).shape, (3, 2, 5))
    ep = torch.export.export(net, (x,))
    assert any("int8_linear" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), eager, rtol=1e-6, atol=1e-6)


def test_bad_input_is_a_clear_error():
    lin = nn.Linear(8, 4)
    q = Int8Linear.from_dense(lin)
    with pytest.raises(ValueError, match="in_features = 8"):
        q(torch.randn(3, 9))
    with pytest.raises(TypeError, match="float32"):
        q(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32"):
        q(torch.ones(3, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q([1.0] * 8)
    bad = nn.Linear(8, 4)
    with torch.no_grad():
        bad.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        Int8Linear.from_dense(bad)
    with pytest.raises(ValueError, match="non-finite"):
        scalenn.quantize(nn.Sequential(bad), force=True)
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear.from_dense(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="scheme"):
        scalenn.quantize(nn.Linear(2, 2), scheme="int4")
    with pytest.raises(ValueError, match="calibrate"):
        scalenn.calibrate(nn.Sequential(nn.Linear(2, 2)), [torch.randn(1, 2)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_without_cuda_kernels_is_a_clear_error():
    q = Int8Linear.from_dense(nn.Linear(8, 4))
    from scalenn._ops.gpu_backends import gpu_backend
    if gpu_backend() != "none":
        pytest.skip("this build has CUDA kernels")
    with pytest.raises(ValueError, match="no kernels"):
        q(torch.randn(2, 8, device="cuda"))
