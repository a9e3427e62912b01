"""The compiled CUDA kernels (csrc/cuda) against the PyTorch references. They need a GPU and a
scalenn built with SCALENN_CUDA=1 (benchmarks/gpu_check.py does both); elsewhere every test is
skipped and says why. The Triton kernels' GPU runs are the tests/test_triton_*.py files, which
use the GPU when there is one."""
import os

import pytest
import torch
import torch.nn.functional as F

from scalenn import _C
from scalenn._ops import sparse24_layout as L
from scalenn._ops.quantize import quantize_per_row_reference
from scalenn.info import wgmma_sp24_status

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
@pytest.mark.parametrize("kernel", ["mma", "triton"])
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS)
def test_cuda_int8_linear_matches_reference(shape, dtype, kernel, monkeypatch):
    # scalenn::int8_linear picks a kernel per call (gpu_backends.int8_linear_kernel_choice);
    # both must meet the contract.
    monkeypatch.setenv("SCALENN_INT8_GPU_KERNEL", kernel)
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
@pytest.mark.parametrize("kernel", ["mma", "triton"])
def test_cuda_int8_linear_opcheck(kernel, monkeypatch):
    monkeypatch.setenv("SCALENN_INT8_GPU_KERNEL", kernel)
    w_q, w_s = quantize_per_row_reference(torch.randn(24, 40))
    args = (torch.randn(5, 40, device=DEV), OP.int8_pack_weight(w_q.to(DEV)), w_s.to(DEV),
            torch.randn(24, device=DEV), 24, "relu")
    torch.library.opcheck(OP.int8_linear, args)
    if has_op("int8_linear_mma"):
        torch.library.opcheck(OP.int8_linear_mma, args)


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


def _wgmma_sp24_available():
    """The Hopper kernel runs where the GPU is sm_90 and the build has sm_90a code (gpu_check
    builds with TORCH_CUDA_ARCH_LIST=9.0a); on other GPUs its op refuses with a clear error.
    gpu_check also leaves it out when its probe process crashed (a CUDA fault here, at
    collection, would fail every test of the session; gpu_check reports that crash)."""
    if "wgmma_sp24_linear" in os.environ.get("SCALENN_GPU_CHECK_SKIP_OPS", "").split(","):
        return False
    if not has_op("wgmma_sp24_linear") or torch.cuda.get_device_capability()[0] != 9:
        return False
    status = wgmma_sp24_status()  # one tiny call of the op
    if "no sm_90a code" in status:
        return False
    assert status.startswith("runs"), status
    return True


# Both 2:4 ops read the same register images; the wgmma one where the GPU and build have it.
SPARSE24_OPS = ["mma_sp24_linear"] + (["wgmma_sp24_linear"] if _wgmma_sp24_available() else [])
# Shapes: decode-sized and odd M, N not a multiple of 16 (padding tiles), more than one 256-row
# block with a partial last one, more than one 128-token block, an odd number of k-steps and a
# K that ends inside a k-step.
SPARSE24_SHAPES = [(1, 32, 64), (20, 48, 128), (300, 256, 512), (17, 40, 72), (130, 520, 544),
                   (257, 264, 96)]


@pytest.mark.parametrize("op", SPARSE24_OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SPARSE24_SHAPES, ids=str)
def test_cuda_sparse24_float_matches_reference(op, dtype, shape):
    M, N, K = shape
    w = L.prune_2_4(torch.randn(N, K)).to(dtype)
    values, meta = L.pack_sparse24(w)
    x = torch.randn(M, K).to(dtype)
    bias = torch.randn(N)
    y = getattr(OP, op)(x.to(DEV), values.to(DEV), meta.to(DEV), None, bias.to(DEV), N, "relu")
    ref = torch.relu(x.double() @ w.double().t() + bias.double())
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tol, atol=tol * K ** 0.5)


def _sparse_int8_exact(op, convention, M=40, N=48, K=192):
    x = torch.randint(-127, 128, (M, K)).float()
    x[:, 0] = 127  # identity quantization (scale 1): the output is the int32 accumulator
    w = L.prune_2_4(torch.randint(-128, 128, (N, K), dtype=torch.int8))
    values, meta = L.pack_sparse24(w, convention)
    y = getattr(OP, op)(x.to(DEV), values.to(DEV), meta.to(DEV), torch.ones(N, device=DEV), None,
                        N, "none")
    return torch.equal(y.cpu(), (x.long() @ w.long().t()).float())


@pytest.mark.parametrize("op", SPARSE24_OPS)
def test_cuda_sparse24_int8_metadata_convention(op):
    # The int8 metadata layout is drawn, not written, in the PTX manual; the packer names the
    # candidates. This test finds out which one the hardware reads and fails loudly if it is not
    # the packer's default.
    default = L.DEFAULT_CONVENTION["int8"]
    results = {c: _sparse_int8_exact(op, c) for c in L.CONVENTIONS}
    assert results[default], (f"int8 2:4 metadata ({op}): the hardware does not read convention "
                              f"{default!r}; results per convention: {results}. Set "
                              f"DEFAULT_CONVENTION['int8'] in scalenn/_ops/sparse24_layout.py to "
                              f"the one that passed.")


@pytest.mark.parametrize("op", SPARSE24_OPS)
@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize("shape", [(37, 80, 256), (300, 264, 192)], ids=str)
def test_cuda_sparse24_int8_matches_reference(op, x_dtype, shape):
    M, N, K = shape
    w = L.prune_2_4(torch.randint(-127, 128, (N, K), dtype=torch.int8))
    w_scale = torch.rand(N) / 50
    values, meta = L.pack_sparse24(w)
    x = (torch.randn(M, K) * 2).to(x_dtype)
    x[3, 1] = float("inf")
    bias = torch.randn(N)
    y = getattr(OP, op)(x.to(DEV), values.to(DEV), meta.to(DEV), w_scale.to(DEV), bias.to(DEV), N,
                        "gelu")
    close(y, int8_linear_reference(x, w, w_scale, bias, "gelu"), x_dtype)
    assert torch.isnan(y[3].cpu()).all()


@pytest.mark.skipif("wgmma_sp24_linear" not in SPARSE24_OPS,
                    reason="needs a Hopper GPU and a build with sm_90a code")
def test_cuda_wgmma_sp24_opcheck_and_large_k():
    # K = 4096 (64 stages of the pipeline, every buffer reused many times) against the mma.sp
    # kernel, which reads the same images: both accumulate in fp32, in different orders.
    M, N, K = 200, 272, 4096
    w = L.prune_2_4(torch.randn(N, K)).to(torch.bfloat16)
    values, meta = (t.to(DEV) for t in L.pack_sparse24(w))
    x = torch.randn(M, K, device=DEV).to(torch.bfloat16)
    args = (x, values, meta, None, None, N, "none")
    torch.library.opcheck(OP.wgmma_sp24_linear, args)
    ref = x.double() @ w.to(DEV).double().t()
    torch.testing.assert_close(OP.wgmma_sp24_linear(*args).double(), ref, rtol=1e-2, atol=0.5)
    torch.testing.assert_close(OP.wgmma_sp24_linear(*args).float(),
                               OP.mma_sp24_linear(*args).float(), rtol=1e-2, atol=0.5)


def bits(t):
    """Bit pattern for exact comparison; NaNs are canonicalized (GPUs return the canonical NaN
    from arithmetic where x86 propagates the input's payload; NaN-ness itself is compared)."""
    t = t.cpu()
    if not t.is_floating_point():
        return t
    nan = torch.isnan(t)
    t = t.masked_fill(nan, 0).view(torch.int16 if t.element_size() == 2 else torch.int32)
    return torch.stack([t.to(torch.int32), nan.to(torch.int32)])


@pytest.mark.parametrize("flat_dtype", FLOATS)
def test_cuda_bucket_pack_unpack_equal_cpu_ops_bitwise(flat_dtype):
    # one bucket mixing the three grad dtypes (one launch per dtype), 64 Ki-piece boundaries
    grads = [(torch.randn(s) * 3).to(FLOATS[i % 3])
             for i, s in enumerate([(0,), (1,), (65537,), (3, 1000), (70,)])]
    total = sum(g.numel() for g in grads)
    flat_ref = torch.full((total + 5,), 7.0, dtype=flat_dtype)
    flat = flat_ref.to(DEV)
    OP.bucket_pack([g.to(DEV) for g in grads], flat, 0.37)
    OP.bucket_pack(grads, flat_ref, 0.37)
    assert torch.equal(bits(flat), bits(flat_ref))
    outs = [torch.empty_like(g).to(DEV) for g in grads]
    outs_ref = [torch.empty_like(g) for g in grads]
    OP.bucket_unpack(flat, outs, 1.9)
    OP.bucket_unpack(flat_ref, outs_ref, 1.9)
    for o, r in zip(outs, outs_ref):
        assert torch.equal(bits(o), bits(r))


def test_cuda_bucket_ops_refuse_graph_capture():
    # Their piece table comes from host memory on every call: a replay would read a stale
    # buffer, so capture is refused with a message (the Triton backend can be captured).
    from scalenn._ops.gpu_backends import gpu_backend
    if gpu_backend() != "cuda":
        pytest.skip("SCALENN_GPU_BACKEND=triton: the compiled bucket kernels are not in use")
    grads, flat = [torch.randn(100, device=DEV)], torch.empty(100, device=DEV)
    OP.bucket_pack(grads, flat, 1.0)
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            OP.bucket_pack(grads, flat, 1.0)


@pytest.mark.parametrize("C", [16, 1024, 1031])
def test_cuda_bucket_int8_ops_equal_cpu_ops_bitwise(C):
    grads = [torch.randn(s).to(d) * 5 for s, d in
             [((5000,), torch.float32), ((0,), torch.float16), ((7,), torch.bfloat16),
              ((64, 65), torch.float32)]]
    grads[0][100] = float("nan")
    total = sum(g.numel() for g in grads)
    N = -(-total // C) + 1
    residual_ref = torch.randn(N * C) * 0.01
    residual = residual_ref.clone().to(DEV)
    records = torch.empty(N, C + 4, dtype=torch.uint8, device=DEV)
    records_ref = torch.empty(N, C + 4, dtype=torch.uint8)
    for _ in range(2):  # error feedback carried into the second step
        OP.bucket_quantize_int8([g.to(DEV) for g in grads], residual, records, 0.5)
        OP.bucket_quantize_int8(grads, residual_ref, records_ref, 0.5)
        assert torch.equal(records.cpu(), records_ref)
        assert torch.equal(bits(residual), bits(residual_ref))
    W = 3
    stack_ref = torch.stack([records_ref] * W)
    stack_ref[1, :, :C] = torch.randint(0, 256, (N, C), dtype=torch.uint8)
    stack = stack_ref.to(DEV)
    out, out_ref = torch.empty(N * C, device=DEV), torch.empty(N * C)
    OP.bucket_dequantize_sum(stack, out)
    OP.bucket_dequantize_sum(stack_ref, out_ref)
    assert torch.equal(bits(out), bits(out_ref))
    outs = [torch.empty_like(g).to(DEV) for g in grads]
    outs_ref = [torch.empty_like(g) for g in grads]
    OP.bucket_unpack_int8(stack, outs)
    OP.bucket_unpack_int8(stack_ref, outs_ref)
    for o, r in zip(outs, outs_ref):
        assert torch.equal(bits(o), bits(r))
    OP.bucket_requantize_int8(stack, residual, records)
    OP.bucket_requantize_int8(stack_ref, residual_ref, records_ref)
    assert torch.equal(records.cpu(), records_ref)
    assert torch.equal(bits(residual), bits(residual_ref))
