"""Sparse int8 ops on every ISA (and with AVX512_VBMI on and off): the packer round-trips, exact
int32 accumulators against a float64 matmul for every kernel path (window / gather for 1-4
tokens, 16/32/64-token panels), odd shapes, zero sizes, the largest K, the fused epilogue,
NaN rows, bad input, opcheck."""
import pytest
import torch

from scalenn import _C
from scalenn._ops.sparse_int8 import sparse_int8_linear_reference
from scalenn.compress import sparse_int8_format as fmt

ops = torch.ops.scalenn
FORMATS = ["elem", "quad"]
# (M, N, K, density): M covers the per-token kernels (1-2), the 16/32/64-token panels and their
# tails; K not a multiple of 4; rows with nothing kept; dense rows (many chunks per row).
SHAPES = [(0, 5, 8, 0.5), (1, 1, 1, 1.0), (1, 37, 1000, 0.1), (2, 64, 4099, 0.05),
          (3, 17, 13, 0.5), (4, 9, 300, 1.0), (5, 70, 777, 0.2), (16, 33, 130, 0.3),
          (17, 40, 1030, 0.1), (33, 65, 64, 0.6), (64, 20, 4096, 0.02), (130, 33, 300, 0.01),
          (7, 8, 0, 0.5), (3, 0, 16, 0.5)]


def pruned_int8(n, k, density, block=1):
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    keep = torch.rand(n, (k + block - 1) // block) < density
    return w * keep.repeat_interleave(block, dim=1)[:, :k]


def exact(x_int8, w_int8):
    return (x_int8.double() @ w_int8.double().t()).to(torch.int32)


@pytest.fixture(params=[True, False], ids=["vbmi", "novbmi"])
def vbmi(request):
    if request.param and not _C.vbmi_enabled():
        pytest.skip("CPU lacks AVX512_VBMI")
    previous = _C.vbmi_enabled()
    _C.set_vbmi_enabled(request.param)
    yield request.param
    _C.set_vbmi_enabled(previous)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_round_trip(format, shape):
    _, n, k, density = shape
    w = pruned_int8(n, k, density)
    packed = fmt.pack(w, format)
    fmt.check(packed, n, k)
    assert torch.equal(fmt.unpack(packed, k), w)
    # The estimate ignores chunk splits at 256 columns, so it is a lower bound.
    assert fmt.stored_bytes(packed) >= fmt.estimated_bytes(w, format)


def test_chunks_split_at_256_columns():
    # Entries further than 255 columns (elem) / groups (quad) from the chunk base start a chunk.
    w = torch.zeros(2, 4096, dtype=torch.int8)
    w[0, [0, 255, 256, 1000, 4095]] = 5
    w[1, [0, 4 * 255, 4 * 256]] = -3
    elem = fmt.pack(w, "elem")
    # row 0: {0, 255} {256} {1000} {4095}; row 1: {0} {1020, 1024}
    assert elem.row_offsets.tolist() == [0, 4, 6]
    quad = fmt.pack(w, "quad")
    # groups. row 0: {0, 63, 64, 250} {1023}; row 1: {0, 255} {256}
    assert quad.row_offsets.tolist() == [0, 2, 4]
    for p in (elem, quad):
        assert torch.equal(fmt.unpack(p, 4096), w)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_s32_exact(isa, vbmi, format, shape):
    M, N, K, density = shape
    w = pruned_int8(N, K, density, block=4 if format == "quad" else 1)
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    out = ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:4], format)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out, exact(x, w))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("format", FORMATS)
def test_threads_give_identical_results(format, threads):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w = pruned_int8(300, 513, 0.1)
        x = torch.randint(-127, 128, (70, 513), dtype=torch.int8)
        assert torch.equal(ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:4], format),
                           exact(x, w))
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("format", FORMATS)
def test_largest_k_is_exact(isa, format):
    K = 131072
    w = torch.full((3, K), 127, dtype=torch.int8)
    w[1] = -127
    x = torch.full((2, K), 127, dtype=torch.int8)
    x[1] = -128
    assert torch.equal(ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:4], format), exact(x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("M", [1, 2, 5, 16, 40, 100])
def test_linear_matches_reference(isa, format, dtype, M):
    N, K = 67, 301
    w = pruned_int8(N, K, 0.15)
    packed = fmt.pack(w, format)
    x = torch.randn(M, K).to(dtype)
    w_scale = torch.rand(N) * 0.01
    bias = torch.randn(N)
    for b in (bias, None):
        y = ops.sparse_int8_linear(x, *packed[:4], w_scale, b, format)
        assert y.dtype == dtype and y.shape == (M, N)
        ref = sparse_int8_linear_reference(x, *packed[:4], w_scale, b, format)
        # float32 epilogue vs float64; then the output dtype's rounding
        tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
        torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


def test_nan_row_gives_nan_output_row(isa):
    w = pruned_int8(20, 64, 0.3)
    packed = fmt.pack(w, "elem")
    x = torch.randn(20, 64)
    x[3, 5] = float("nan")
    x[7, 0] = float("inf")
    y = ops.sparse_int8_linear(x, *packed[:4], torch.ones(20), None, "elem")
    assert torch.isnan(y[3]).all() and torch.isnan(y[7]).all()
    others = [i for i in range(20) if i not in (3, 7)]
    assert torch.isfinite(y[others]).all()


def test_opcheck():
    w = pruned_int8(40, 70, 0.2)
    for format in FORMATS:
        packed = fmt.pack(w, format)
        x = torch.randn(9, 70, requires_grad=True)
        args = (x, *packed[:4], torch.rand(40), torch.randn(40, requires_grad=True), format)
        torch.library.opcheck(ops.sparse_int8_linear, args)
        xi = torch.randint(-127, 128, (5, 70), dtype=torch.int8)
        torch.library.opcheck(ops.sparse_int8_gemm_s32, (xi, *packed[:4], format))


def test_backward_matches_dense_dequantized_weight():
    w = pruned_int8(30, 50, 0.3)
    packed = fmt.pack(w, "elem")
    w_scale = torch.rand(30) * 0.02
    x = torch.randn(6, 50, requires_grad=True)
    bias = torch.randn(30, requires_grad=True)
    y = ops.sparse_int8_linear(x, *packed[:4], w_scale, bias, "elem")
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ (w.float() * w_scale[:, None]))
    torch.testing.assert_close(bias.grad, g.sum(0))


# ------------------------------------------------------------------ bad input
def test_bad_input_is_a_clear_error():
    w = pruned_int8(8, 32, 0.5)
    v, r, b, o = fmt.pack(w, "elem")[:4]
    x = torch.randn(2, 32)
    s = torch.ones(8)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sparse_int8_linear(x.long(), v, r, b, o, s, None, "elem")
    with pytest.raises(ValueError, match="format must be 'elem' or 'quad'"):
        ops.sparse_int8_linear(x, v, r, b, o, s, None, "csr")
    with pytest.raises(ValueError, match="rel must have"):
        ops.sparse_int8_linear(x, v, r[:-1], b, o, s, None, "elem")
    with pytest.raises(ValueError, match="rel must have"):
        ops.sparse_int8_linear(x, v, r, b, o, s, None, "quad")  # values too short for quad
    bad = o.clone()
    bad[2], bad[3] = bad[3], bad[2] + 100
    with pytest.raises(ValueError, match="row_offsets"):
        ops.sparse_int8_linear(x, v, r, b, o.flip(0), s, None, "elem")
    far = b.clone()
    far[0] = 8  # column 32: outside in_features
    with pytest.raises(ValueError, match="outside in_features"):
        ops.sparse_int8_linear(x, v, r, far, o, s, None, "elem")
    with pytest.raises(TypeError, match="w_scale must be torch.float32"):
        ops.sparse_int8_linear(x, v, r, b, o, s.double(), None, "elem")
    with pytest.raises(ValueError, match="bias must have"):
        ops.sparse_int8_linear(x, v, r, b, o, s, torch.ones(7), "elem")
    with pytest.raises(TypeError, match="rel must be torch.uint8"):
        ops.sparse_int8_linear(x, v, r.to(torch.int8), b, o, s, None, "elem")
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        ops.sparse_int8_pack(torch.full((2, 4), -128, dtype=torch.int8), "elem")
    with pytest.raises(TypeError, match="w_int8 must be torch.int8"):
        ops.sparse_int8_pack(torch.ones(2, 4), "elem")


def test_check_rejects_corrupt_packed_tensors():
    w = pruned_int8(8, 40, 0.5)
    p = fmt.pack(w, "elem")
    fmt.check(p, 8, 40)
    with pytest.raises(ValueError, match="outside in_features"):
        fmt.check(p, 8, 20)
    with pytest.raises(ValueError, match="row_offsets must have"):
        fmt.check(p, 9, 40)
    neg = p.values.clone()
    neg[0] = -128
    with pytest.raises(ValueError, match="-127"):
        fmt.check(p._replace(values=neg), 8, 40)
    with pytest.raises(TypeError, match="base must be"):
        fmt.check(p._replace(base=p.base.int()), 8, 40)
    with pytest.raises(ValueError, match="format must be one of"):
        fmt.check(p._replace(format="csr"), 8, 40)
