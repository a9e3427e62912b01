"""The GPU-family op (mma_sp24_linear) on the CPU: schema, reference, fake kernel (opcheck),
torch.compile. (The gradient-bucket ops are covered by tests/test_bucket_ops.py and, for their
Triton kernels, tests/test_triton_bucket_pack.py.)"""
import pytest
import torch
import torch.nn.functional as F

import scalenn.ops as sops
from scalenn._ops.quantize import quantize_per_row_reference
from scalenn._ops.sparse24_layout import prune_2_4

OP = torch.ops.scalenn


def sparse_weight(N, K, dtype):
    if dtype == torch.int8:
        return prune_2_4(torch.randint(-127, 128, (N, K), dtype=torch.int8))
    return prune_2_4(torch.randn(N, K)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 16, 32), (5, 37, 72)], ids=str)
def test_sparse24_linear_float_matches_dense(dtype, shape):
    M, N, K = shape
    w = sparse_weight(N, K, dtype)
    x = torch.randn(M, K).to(dtype)
    bias = torch.randn(N)
    values, meta = sops.sparse24_pack(w)
    y = sops.sparse24_linear(x, values, meta, N, bias=bias, activation="gelu")
    ref = F.gelu(x.double() @ w.double().t() + bias.double())
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_sparse24_linear_int8_matches_integer_reference(x_dtype):
    M, N, K = 6, 24, 128
    w = sparse_weight(N, K, torch.int8)
    w_scale = torch.rand(N) / 100
    x = (torch.randn(M, K) * 4).to(x_dtype)
    x[2, 5] = float("nan")
    values, meta = sops.sparse24_pack(w)
    y = sops.sparse24_linear(x, values, meta, N, w_scale=w_scale, activation="relu")
    q, s = quantize_per_row_reference(x)
    acc = q.long() @ w.long().t()  # exact
    ref = torch.relu(acc.double() * s.double()[:, None] * w_scale.double()[None, :])
    assert y.dtype == x_dtype
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3, 4, 5]]).all()
    tol = 1e-2 if x_dtype == torch.bfloat16 else 2e-6
    good = [0, 1, 3, 4, 5]
    torch.testing.assert_close(y[good].double(), ref[good], rtol=tol, atol=tol * float(ref[good].abs().max()))


def test_opcheck_gpu_family_ops():
    w = sparse_weight(16, 64, torch.float16)
    values, meta = sops.sparse24_pack(w)
    x = torch.randn(3, 64).half()
    torch.library.opcheck(OP.mma_sp24_linear, (x, values, meta, None, torch.randn(16), 16, "relu"))
    wq = sparse_weight(16, 64, torch.int8)
    vq, mq = sops.sparse24_pack(wq)
    torch.library.opcheck(OP.mma_sp24_linear, (torch.randn(3, 64), vq, mq, torch.rand(16), None,
                                               16, "none"))


def test_sparse24_linear_under_torch_compile():
    w = sparse_weight(32, 64, torch.float16)
    values, meta = sops.sparse24_pack(w)

    def f(x):
        return sops.sparse24_linear(x, values, meta, 32, activation="relu")

    x = torch.randn(4, 64).half()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_gpu_family_bad_input():
    w = sparse_weight(16, 64, torch.float16)
    values, meta = sops.sparse24_pack(w)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        sops.sparse24_linear(torch.ones(2, 64, dtype=torch.int32), values, meta, 16)
    with pytest.raises(ValueError, match="activation"):
        sops.sparse24_linear(torch.randn(2, 64).half(), values, meta, 16, activation="tanh")
