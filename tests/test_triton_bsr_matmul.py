"""Triton block-sparse (BSR) linear against float64 dense references (interpreter on CPU)."""
import pytest
import torch
import torch.nn.functional as F

from scalenn._ops.quantize import quantize_per_row_reference

pytest.importorskip("triton", reason="Triton is not installed")
from scalenn.kernels import bsr_matmul as tb  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def block_sparse_weight(N, K, BN, BK, keep=0.4, dtype=torch.float32):
    w = torch.randn(N, K)
    mask = torch.rand(N // BN, K // BK) < keep
    mask[0] = False  # one block row fully empty: its outputs are bias only
    w = w * mask.repeat_interleave(BN, 0).repeat_interleave(BK, 1)
    return w.to(dtype)


def to_bsr(w, BN, BK):
    b = w.to_sparse_bsr((BN, BK))
    return b.crow_indices(), b.col_indices(), b.values()


def act(y, name):
    return {"none": y, "relu": torch.relu(y), "gelu": F.gelu(y)}[name]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K,BN,BK", [(1, 32, 32, 16, 16), (37, 48, 96, 16, 32),
                                         (7, 64, 64, 32, 16)])
def test_bsr_linear_matches_dense(dtype, M, N, K, BN, BK):
    w = block_sparse_weight(N, K, BN, BK, dtype=dtype)
    x = torch.randn(M, K).to(dtype)
    bias = torch.randn(N)
    crow, col, vals = to_bsr(w, BN, BK)
    for activation in ("none", "gelu"):
        y = tb.bsr_linear(x.to(DEVICE), crow.to(DEVICE), col.to(DEVICE), vals.to(DEVICE),
                          bias.to(DEVICE), N, activation)
        ref = act(x.double() @ w.double().t() + bias.double(), activation)
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        assert y.dtype == dtype and y.shape == (M, N)
        torch.testing.assert_close(y.cpu().double(), ref, rtol=tol, atol=tol * K ** 0.5)
        # empty block row: act(bias) only (float32 epilogue: 1 ulp of float32 slack)
        torch.testing.assert_close(y[:, :BN].cpu().double(),
                                   act(bias[:BN].double(), activation).expand(M, BN),
                                   rtol=max(tol, 1e-6), atol=1e-6)


@pytest.mark.parametrize("M", [1, 19])
def test_bsr_int8_linear_matches_reference(M):
    N, K, BN, BK = 48, 64, 16, 32
    w = block_sparse_weight(N, K, BN, BK)
    w_q, w_s = quantize_per_row_reference(w)
    x = torch.randn(M, K) * 2
    if M > 2:
        x[2, 3] = float("inf")
    bias = torch.randn(N)
    crow, col, vals = to_bsr(w_q, BN, BK)
    y = tb.bsr_int8_linear(x.to(DEVICE), crow.to(DEVICE), col.to(DEVICE), vals.to(DEVICE),
                           w_s.to(DEVICE), bias.to(DEVICE), N, "relu").cpu()
    q, s = quantize_per_row_reference(x)
    ref = torch.relu((q.long() @ w_q.long().t()).double() * s.double()[:, None]
                     * w_s.double()[None, :] + bias.double())
    torch.testing.assert_close(y.double(), ref, rtol=2e-6, atol=2e-6 * float(ref[torch.isfinite(ref)].abs().max()),
                               equal_nan=True)
    if M > 2:
        assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1]]).all()


def test_bsr_nd_input_and_zero_rows():
    w = block_sparse_weight(32, 32, 16, 16)
    crow, col, vals = to_bsr(w, 16, 16)
    x = torch.randn(2, 3, 32)
    y = tb.bsr_linear(x.to(DEVICE), crow.to(DEVICE), col.to(DEVICE), vals.to(DEVICE), None, 32)
    torch.testing.assert_close(y.cpu(), x @ w.t(), rtol=1e-5, atol=1e-5)
    assert tb.bsr_linear(torch.empty(0, 32, device=DEVICE), crow.to(DEVICE), col.to(DEVICE),
                         vals.to(DEVICE), None, 32).shape == (0, 32)


def test_bsr_bad_input():
    w = block_sparse_weight(32, 32, 16, 16)
    crow, col, vals = to_bsr(w, 16, 16)
    x = torch.randn(3, 32)
    with pytest.raises(ValueError, match="power of two"):
        tb.bsr_linear(x, crow, col, vals[:, :, :8], None, 32)
    with pytest.raises(TypeError, match="share one float dtype"):
        tb.bsr_linear(x.half(), crow, col, vals, None, 32)
    with pytest.raises(ValueError, match="whole number"):
        tb.bsr_linear(torch.randn(3, 40), crow, col, vals, None, 32)
    with pytest.raises(ValueError, match="crow"):
        tb.bsr_linear(x, crow[:-1], col, vals, None, 32)
    with pytest.raises(TypeError, match="int8 values"):
        tb.bsr_int8_linear(x, crow, col, vals, torch.ones(32), None, 32)
