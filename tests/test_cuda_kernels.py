"""The compiled CUDA kernels (csrc/cuda) against the PyTorch references. They need a GPU and a
scalenn built with SCALENN_CUDA=1 (benchmarks/gpu_check.py does both); elsewhere every test is
skipped and says why. The Triton kernels' GPU runs are the tests/test_triton_*.py files, which
use the GPU when there is one."""
import pytest
import torch
import torch.nn.functional as F

from scalenn import _C
from scalenn._ops import sparse24_layout as L
from scalenn._ops.quantize import quantize_per_row_reference

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the CUDA kernel tests run on a GPU machine "
                "(python benchmarks/gpu_check.py --out DIR)", allow_module_level=True)
if not _C.build_info()["cuda"]:
    pytest.skip("scalenn was built without its CUDA kernels: rebuild with SCALENN_CUDA=1",
                allow_module_level=True)

OP = torch.ops.scalenn
DEV = "cuda"
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# (M, N, K): every tile config of the int8 GEMM (M <= 32, <= 256, larger), odd N/M, and a K
# that is not a multiple of 16 (the bytewise-load path).
INT8_SHAPES = [(1, 64, 64), (7, 33, 40), (33, 130, 256), (300, 257, 512), (1030, 128, 96)]


def has_op(name):
    try:
        getattr(OP, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def int8_linear_reference(x, w_q, w_scale, bias, act):
    q, s = quantize_per_row_reference(x.reshape(-1, x.shape[-1]).cpu())
    acc = q.long() @ w_q.cpu().long().t()
    y = acc.double() * s.double()[:, None] * w_scale.cpu().double()[None, :]
    if bias is not None:
        y = y + bias.cpu().double()
    return {"none": y, "relu": torch.relu(y), "gelu": F.gelu(y)}[act]


def close(y, ref, dtype):
    rtol = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    finite = ref[torch.isfinite(ref)]
    atol = rtol * max(1.0, float(finite.abs().max())) if finite.numel() else 0.0
    torch.testing.assert_close(y.double().cpu(), ref, rtol=rtol, atol=atol, equal_nan=True)


needs_int8_linear = pytest.mark.skipif(not has_op("int8_linear"),
                                       reason="scalenn::int8_linear schema not defined in this "
                                              "build (it comes with the int8 family)")


@needs_int8_linear
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
def test_cuda_int8_linear_matches_reference(shape, dtype):
    M, N, K = shape
    x = (torch.randn(M, K) * 3).to(dtype)
    x[0, 0] = float("nan") if M > 2 else x[0, 0]
    w_q, w_s = quantize_per_row_reference(torch.randn(N, K))
    bias = torch.randn(N)
    w_packed = OP.int8_pack_weight(w_q.to(DEV))
    for act in ("none", "relu", "gelu"):
        y = OP.int8_linear(x.to(DEV), w_packed, w_s.to(DEV), bias.to(DEV), N, act)
        assert y.dtype == dtype and y.shape == (M, N)
        close(y, int8_linear_reference(x, w_q, w_s, bias, act), dtype)


@needs_int8_linear
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=str)
def test_cuda_int8_gemm_int32_accumulation_is_exact(shape):
    # Rows holding +-127 with integer values quantize to themselves with scale 1; with w_scale 1
    # the float32 output is the int32 accumulator itself (|acc| < 2^24), compared exactly.
    M, N, K = shape
    x = torch.randint(-127, 128, (M, K)).float()
    x[:, 0] = 127
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    y = OP.int8_linear(x.to(DEV), OP.int8_pack_weight(w.to(DEV)), torch.ones(N, device=DEV), None,
                       N, "none")
    assert torch.equal(y.cpu(), (x.long() @ w.long().t()).float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 32, 64), (20, 48, 128), (300, 256, 512), (17, 40, 72)],
                         ids=str)
def test_cuda_sparse24_float_matches_reference(dtype, shape):
    M, N, K = shape
    w = L.prune_2_4(torch.randn(N, K)).to(dtype)
    values, meta = L.pack_sparse24(w)
    x = torch.randn(M, K).to(dtype)
    bias = torch.randn(N)
    y = OP.mma_sp24_linear(x.to(DEV), values.to(DEV), meta.to(DEV), None, bias.to(DEV), N, "relu")
    ref = torch.relu(x.double() @ w.double().t() + bias.double())
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tol, atol=tol * K ** 0.5)


def _sparse_int8_exact(convention, M=40, N=48, K=192):
    x = torch.randint(-127, 128, (M, K)).float()
    x[:, 0] = 127  # identity quantization (scale 1): the output is the int32 accumulator
    w = L.prune_2_4(torch.randint(-128, 128, (N, K), dtype=torch.int8))
    values, meta = L.pack_sparse24(w, convention)
    y = OP.mma_sp24_linear(x.to(DEV), values.to(DEV), meta.to(DEV), torch.ones(N, device=DEV),
                           None, N, "none")
    return torch.equal(y.cpu(), (x.long() @ w.long().t()).float())


def test_cuda_sparse24_int8_metadata_convention():
    # The int8 metadata layout is drawn, not written, in the PTX manual; the packer names the
    # candidates. This test finds out which one the hardware reads and fails loudly if it is not
    # the packer's default.
    default = L.DEFAULT_CONVENTION["int8"]
    results = {c: _sparse_int8_exact(c) for c in L.CONVENTIONS}
    assert results[default], (f"int8 2:4 metadata: the hardware does not read convention "
                              f"{default!r}; results per convention: {results}. Set "
                              f"DEFAULT_CONVENTION['int8'] in scalenn/_ops/sparse24_layout.py to "
                              f"the one that passed.")


@pytest.mark.parametrize("x_dtype", FLOATS)
def test_cuda_sparse24_int8_matches_reference(x_dtype):
    M, N, K = 37, 80, 256
    w = L.prune_2_4(torch.randint(-127, 128, (N, K), dtype=torch.int8))
    w_scale = torch.rand(N) / 50
    values, meta = L.pack_sparse24(w)
    x = (torch.randn(M, K) * 2).to(x_dtype)
    x[3, 1] = float("inf")
    bias = torch.randn(N)
    y = OP.mma_sp24_linear(x.to(DEV), values.to(DEV), meta.to(DEV), w_scale.to(DEV), bias.to(DEV),
                           N, "gelu")
    close(y, int8_linear_reference(x, w, w_scale, bias, "gelu"), x_dtype)
    assert torch.isnan(y[3].cpu()).all()


@pytest.mark.parametrize("src", FLOATS)
@pytest.mark.parametrize("dst", FLOATS)
def test_cuda_bucket_cast_round_trip(src, dst):
    ts = [torch.randn(s).to(src).to(DEV) for s in [(0,), (1,), (4097,), (3, 1000), (70,)]]
    flat = OP.bucket_pack_cast(ts, 0.125, dst)
    ref = (torch.cat([t.cpu().float().flatten() for t in ts]) * 0.125).to(dst)
    assert torch.equal(flat.cpu(), ref)
    outs = [torch.empty_like(t) for t in ts]
    OP.bucket_unpack_cast(flat, outs, 8.0)
    expect = [(s.float() * 8.0).to(src) for s in torch.split(ref, [t.numel() for t in ts])]
    for e, o in zip(expect, outs):
        assert torch.equal(o.cpu().flatten(), e)


def test_cuda_bucket_q8_matches_reference_exactly():
    ts = [torch.randn(s).to(DEV) * 5 for s in [(5000,), (0,), (7,), (64, 65)]]
    ts[0][100] = float("nan")
    q, s = OP.bucket_pack_q8(ts, 0.5, 1024)
    q_ref, s_ref = OP.bucket_pack_q8([t.cpu() for t in ts], 0.5, 1024)
    assert torch.equal(q.cpu(), q_ref)
    torch.testing.assert_close(s.cpu(), s_ref, rtol=0, atol=0, equal_nan=True)
    outs = [torch.empty_like(t) for t in ts]
    OP.bucket_unpack_q8(q, s, outs, 2.0, 1024)
    outs_ref = [torch.empty_like(t).cpu() for t in ts]
    OP.bucket_unpack_q8(q_ref, s_ref, outs_ref, 2.0, 1024)
    for o, r in zip(outs, outs_ref):
        torch.testing.assert_close(o.cpu(), r, rtol=0, atol=0, equal_nan=True)
