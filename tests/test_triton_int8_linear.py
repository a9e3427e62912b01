"""Triton W8A8 linear against a float64 PyTorch reference. On a CPU-only machine these run under
TRITON_INTERPRET=1 (conftest.py) with one 16x16x32 tile config, so shapes are small and odd to
hit every masked edge; on a GPU they run compiled (and bfloat16 is added)."""
import pytest
import torch
import torch.nn.functional as F

from scalenn._ops.quantize import quantize_per_row_reference

pytest.importorskip("triton", reason="Triton is not installed")
from scalenn.kernels import int8_linear as tk  # noqa: E402

# NaN rows multiply NaN in numpy under the interpreter: expected, and tested for.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# (M, N, K): 1 row, tile-exact, odd everywhere, K not a multiple of the 32-wide K tile.
SHAPES = [(1, 16, 32), (7, 5, 3), (37, 29, 70), (16, 48, 64)]


def reference(x, w_q, w_scale, bias, activation):
    """float64 reference: per-row quantize (the contract), exact integer GEMM, epilogue."""
    K = x.shape[-1]
    q, s = quantize_per_row_reference(x.reshape(-1, K))
    acc = q.long() @ w_q.long().t()  # exact
    y = acc.double() * s.double()[:, None] * w_scale.double()[None, :]
    if bias is not None:
        y = y + bias.double()[None, :]
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "gelu":
        y = F.gelu(y)
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def make_weight(N, K):
    w = torch.randn(N, K)
    w_q, w_s = quantize_per_row_reference(w)
    return w_q, w_s


def check_close(y, y_ref, dtype):
    # fp32 epilogue: two roundings of the scale product plus erf; half dtypes: one final cast.
    rtol = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    atol = rtol * max(1.0, float(y_ref[torch.isfinite(y_ref)].abs().max())) if y_ref.numel() else 0
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused_quant", "prepass_quant"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int8_linear_matches_reference(shape, fuse):
    M, N, K = shape
    for dtype, act, use_bias in [(torch.float32, "none", True), (DTYPES[-1], "relu", False),
                                 (torch.float32, "gelu", True)]:
        x = (torch.randn(M, K) * 3).to(dtype)
        w_q, w_s = make_weight(N, K)
        bias = torch.randn(N) if use_bias else None
        y = tk.int8_linear(x.to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE),
                           None if bias is None else bias.to(DEVICE), N, act, fuse_quant=fuse)
        assert y.dtype == dtype and y.shape == (M, N)
        check_close(y, reference(x, w_q, w_s, bias, act), dtype)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused_quant", "prepass_quant"])
def test_int8_linear_nan_row_and_zero_row(fuse):
    M, N, K = 6, 20, 40
    x = torch.randn(M, K)
    x[1] = 0.0
    x[3, 7] = float("nan")
    x[4, 0] = float("inf")
    w_q, w_s = make_weight(N, K)
    bias = torch.randn(N)
    for act in ("none", "relu", "gelu"):
        y = tk.int8_linear(x.to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE), bias.to(DEVICE), N, act,
                           fuse_quant=fuse).cpu()
        assert torch.isnan(y[3]).all() and torch.isnan(y[4]).all(), "NaN/Inf row -> NaN row"
        good = [0, 1, 2, 5]
        assert torch.isfinite(y[good]).all(), "a poisoned row must not touch other rows"
        check_close(y[good], reference(x[good], w_q, w_s, bias, act), torch.float32)


def test_int8_linear_fused_and_prepass_agree_bitwise():
    # Both paths implement the same quantization contract and the same epilogue.
    x = torch.randn(33, 50) * 10
    w_q, w_s = make_weight(18, 50)
    args = (x.to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE), None, 18, "none")
    assert torch.equal(tk.int8_linear(*args, fuse_quant=True), tk.int8_linear(*args, fuse_quant=False))


def test_int8_linear_nd_input_and_zero_rows():
    w_q, w_s = make_weight(9, 24)
    x = torch.randn(2, 3, 24)
    y = tk.int8_linear(x.to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE), None, 9, "none")
    assert y.shape == (2, 3, 9)
    check_close(y, reference(x, w_q, w_s, None, "none"), torch.float32)
    empty = tk.int8_linear(torch.empty(0, 24, device=DEVICE), w_q.to(DEVICE), w_s.to(DEVICE),
                           None, 9, "none")
    assert empty.shape == (0, 9)


@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 19, 95), (32, 32, 128)], ids=str)
def test_int8_mm_int32_accumulator_is_exact(shape):
    M, N, K = shape
    # Extremes on purpose: -128 and 127 everywhere stress the int32 sums.
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    a[0, :] = -128
    w[0, :] = -128
    y = tk.int8_mm(a.to(DEVICE), w.to(DEVICE)).cpu()
    assert y.dtype == torch.int32
    assert torch.equal(y, (a.long() @ w.long().t()).int())


def test_int8_pack_weight_is_plain_contiguous_copy():
    w = torch.randint(-127, 128, (8, 6), dtype=torch.int8)
    packed = tk.int8_pack_weight(w.t().contiguous().t())
    assert packed.is_contiguous() and torch.equal(packed, w)
    assert packed.data_ptr() != w.data_ptr()
    with pytest.raises(TypeError, match="int8"):
        tk.int8_pack_weight(w.float())


def test_int8_linear_bad_input():
    w_q, w_s = make_weight(4, 8)
    x = torch.randn(3, 8)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        tk.int8_linear(x.int(), w_q, w_s, None, 4, "none")
    with pytest.raises(ValueError, match="K=7"):
        tk.int8_linear(torch.randn(3, 7), w_q, w_s, None, 4, "none")
    with pytest.raises(ValueError, match="activation"):
        tk.int8_linear(x, w_q, w_s, None, 4, "tanh")
    with pytest.raises(ValueError, match="out_features"):
        tk.int8_linear(x, w_q, w_s, None, 5, "none")
    with pytest.raises(ValueError, match="bias"):
        tk.int8_linear(x, w_q, w_s, torch.randn(3), 4, "none")


@pytest.mark.parametrize("shape", [(1, 16, 32), (37, 29, 64), (16, 48, 96)], ids=str)
def test_int8_linear_tma_path_matches_prepass_bitwise(shape):
    # The TMA (tensor descriptor) GEMM against the pointer GEMM on the same quantized operands:
    # same int32 accumulators, same epilogue, so the outputs are identical (edges zero-filled).
    M, N, K = shape
    w_q, w_s = make_weight(N, K)
    for dtype, act, bias in [(torch.float32, "gelu", torch.randn(N)), (DTYPES[-1], "none", None)]:
        args = ((torch.randn(M, K) * 2).to(dtype).to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE),
                None if bias is None else bias.to(DEVICE), N, act)
        y_tma = tk.int8_linear(*args, fuse_quant=False, tma=True)
        y_ptr = tk.int8_linear(*args, fuse_quant=False, tma=False)
        assert torch.equal(y_tma, y_ptr)
        check_close(y_tma, reference(args[0].cpu(), w_q, w_s, bias, act), dtype)


def test_int8_linear_tma_rejects_unaligned_k():
    w_q, w_s = make_weight(8, 40)
    with pytest.raises(ValueError, match="K % 16"):
        tk.int8_linear(torch.randn(3, 40).to(DEVICE), w_q.to(DEVICE), w_s.to(DEVICE), None, 8,
                       "none", fuse_quant=False, tma=True)
