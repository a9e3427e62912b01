"""scalenn::int8_weight_only_linear (Int8Linear's int8_weight_only scheme): float activations
against the int8 weight, checked against a float64 reference on odd shapes, every ISA, both
kernel paths (few rows: in-register dequantization; many rows: dequantized blocks + BLAS),
dtypes and activations; autograd, opcheck, the module, compile, bad input."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scalenn
from scalenn.compress.quantize import activation_errors
from scalenn.nn import Int8Linear

OP = torch.ops.scalenn
# float32 accumulation over K terms vs float64: relative to the output's magnitude.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# (M, N, K): M on both sides of the few-rows limit (16) and of a register pass (8 rows); K not a
# multiple of 16, below 16, and longer than one L1 chunk of x.
SHAPES = [(1, 5, 17), (3, 33, 300), (8, 16, 16), (9, 7, 1), (16, 40, 2100), (17, 70, 129),
          (64, 130, 300)]


def reference(x, w_int8, w_scale, bias, activation):
    y = x.double() @ (w_int8.double() * w_scale.double()[:, None]).t()
    if bias is not None:
        y = y + bias.double()
    return {"none": y, "relu": torch.relu(y), "gelu": F.gelu(y)}[activation]


def check(y, ref, dtype):
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(y.double(), ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_reference(isa, shape):
    M, N, K = shape
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = torch.rand(N) / 50 + 1e-3
    for dtype, act, bias in [(torch.float32, "none", torch.randn(N)),
                             (torch.bfloat16, "relu", None), (torch.float16, "gelu", torch.randn(N))]:
        x = torch.randn(M, K).to(dtype)
        y = OP.int8_weight_only_linear(x, w, s, bias, act)
        assert y.dtype == dtype and y.shape == (M, N)
        check(y, reference(x, w, s, bias, act), dtype)


def test_zero_sizes_and_heavy_tailed_rows():
    w = torch.randint(-127, 128, (6, 8), dtype=torch.int8)
    s = torch.rand(6)
    assert OP.int8_weight_only_linear(torch.randn(0, 8), w, s, None, "none").shape == (0, 6)
    b = torch.randn(3)
    y = OP.int8_weight_only_linear(torch.randn(4, 0), torch.zeros(3, 0, dtype=torch.int8),
                                   torch.rand(3), b, "relu")
    assert torch.equal(y, torch.relu(b).expand(4, 3))
    # no activation quantization: a row with a 1e4 outlier is exact to float32 rounding
    x = torch.randn(5, 8)
    x[2, 3] = 1e4
    check(OP.int8_weight_only_linear(x, w, s, None, "none"), reference(x, w, s, None, "none"),
          torch.float32)


def test_heavy_tailed_inputs_meet_the_int8_accuracy_target():
    # The scheme for layers whose activations quantize badly: only the weight is int8, so
    # Laplace and Student-t(3) rows stay within 1e-2 of the fp32 layer (per-token int8 does not).
    lin = nn.Linear(512, 384)
    q = Int8Linear.from_dense(lin, scheme="int8_weight_only")
    for x in (torch.distributions.Laplace(0.0, 1.0).sample((64, 512)),
              torch.distributions.StudentT(3.0).sample((64, 512))):
        with torch.no_grad():
            y, ref = q(x), lin(x)
        assert float((y - ref).norm() / ref.norm()) <= 1e-2


def test_gradients_and_opcheck():
    w = torch.randint(-127, 128, (7, 20), dtype=torch.int8)
    s = torch.rand(7) / 10
    for act in ("none", "relu", "gelu"):
        x = torch.randn(3, 20, dtype=torch.float64).float().requires_grad_()
        b = torch.randn(7, requires_grad=True)
        y = OP.int8_weight_only_linear(x, w, s, b, act)
        y.pow(2).sum().backward()
        xr, br = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        yr = xr @ (w.double() * s.double()[:, None]).t() + br
        yr = {"none": yr, "relu": torch.relu(yr), "gelu": F.gelu(yr)}[act]
        yr.pow(2).sum().backward()
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.grad.double(), br.grad, rtol=1e-4, atol=1e-4)
        torch.library.opcheck(OP.int8_weight_only_linear, (x.detach(), w, s, b.detach(), act))


def test_module_uses_the_op_and_compiles():
    lin = nn.Linear(40, 24)
    q = Int8Linear.from_dense(lin, scheme="int8_weight_only", activation="relu")
    x = torch.randn(2, 3, 40)
    ref = torch.relu(F.linear(x, q.weight, q.bias))
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
        compiled = torch.compile(q, fullgraph=True)
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)
    assert "kernel=cpu-" in repr(q)


def test_bad_input():
    w = torch.randint(-127, 128, (4, 8), dtype=torch.int8)
    s = torch.rand(4)
    with pytest.raises(TypeError, match="w_int8 must be torch.int8"):
        OP.int8_weight_only_linear(torch.randn(2, 8), w.float(), s, None, "none")
    with pytest.raises(ValueError, match="K = x.shape"):
        OP.int8_weight_only_linear(torch.randn(2, 9), w, s, None, "none")
    with pytest.raises(ValueError, match="w_scale must have shape"):
        OP.int8_weight_only_linear(torch.randn(2, 8), w, torch.rand(5), None, "none")
    with pytest.raises(ValueError, match="activation must be"):
        OP.int8_weight_only_linear(torch.randn(2, 8), w, s, None, "tanh")
    with pytest.raises(ValueError, match="2-D"):
        OP.int8_weight_only_linear(torch.randn(8), w, s, None, "none")
    with pytest.raises(TypeError):
        OP.int8_weight_only_linear(torch.randint(0, 3, (2, 8)), w, s, None, "none")


class _TwoPaths(nn.Module):
    """Gaussian features through one Linear, heavy-tailed ones through another."""

    def __init__(self):
        super().__init__()
        self.gauss, self.heavy = nn.Linear(512, 64), nn.Linear(512, 64)

    def forward(self, x):
        return self.gauss(x[:, :512]) + self.heavy(x[:, 512:])


def test_quantize_picks_weight_only_for_layers_whose_activations_quantize_badly():
    import copy
    torch.manual_seed(0)
    model = _TwoPaths()
    x = torch.cat([torch.randn(64, 512), torch.distributions.StudentT(3.0).sample((64, 512))], 1)
    with torch.no_grad():
        ref = model(x)
    errs = activation_errors(model, [x])
    assert errs["gauss"] < 0.01 < errs["heavy"]
    plain, _ = scalenn.quantize(copy.deepcopy(model), force=True)
    checked, report = scalenn.quantize(model, force=True, activation_check=[x])
    assert (checked.gauss.scheme, checked.heavy.scheme) == ("int8_dynamic", "int8_weight_only")
    assert "activation error" in {e["name"]: e["reason"] for e in report.entries}["heavy"]
    with torch.no_grad():
        err_plain = float((plain(x) - ref).norm() / ref.norm())
        err_checked = float((checked(x) - ref).norm() / ref.norm())
    assert err_checked <= 1e-2 < err_plain
    with pytest.raises(ValueError, match="max_activation_error"):
        scalenn.quantize(nn.Linear(4, 4), max_activation_error=0)
