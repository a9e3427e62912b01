"""Sparse int8 ops on every ISA (and with AVX512_VBMI on and off): the packer round-trips, exact
int32 accumulators against a float64 matmul for every kernel path (elem16: window passes of
1-8 tokens, or without VBMI gather / 64-token panels; quad: window / gather for 1-2 tokens,
16/32/64-token panels), odd shapes, zero sizes, the largest K, the fused epilogue,
NaN rows, bad input, opcheck."""
import pytest
import torch

from scalenn import _C
from scalenn._ops.sparse_int8 import sparse_int8_linear_reference
from scalenn.compress import sparse_int8_format as fmt

ops = torch.ops.scalenn
FORMATS = ["elem16", "quad"]
# (M, N, K, density): M covers the per-token kernels and passes, the 16/32/64-token panels and
# their tails; N around multiples of 16 (elem16 groups); K not a multiple of 4; rows with
# nothing kept; dense rows (many chunks per row).
SHAPES = [(0, 5, 8, 0.5), (1, 1, 1, 1.0), (1, 37, 1000, 0.1), (2, 64, 4099, 0.05),
          (3, 17, 13, 0.5), (4, 9, 300, 1.0), (5, 70, 777, 0.2), (16, 33, 130, 0.3),
          (17, 40, 1030, 0.1), (33, 65, 64, 0.6), (64, 20, 4096, 0.02), (130, 33, 300, 0.01),
          (7, 8, 0, 0.5), (3, 0, 16, 0.5),
          (13, 10, 520, 0.2), (31, 9, 2100, 0.1), (32, 6, 300, 0.3), (6, 48, 700, 0.15)]


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


def test_chunks_split_at_their_windows():
    # elem16: a step's base is the lowest next column of the group rounded down to 64; each row
    # takes up to 4 of its next entries below base + 128. quad: entries further than 255
    # groups from the chunk base start a chunk.
    w = torch.zeros(2, 4096, dtype=torch.int8)
    w[0, [0, 255, 256, 1000, 4095]] = 5
    w[1, [0, 4 * 255, 4 * 256]] = -3
    elem16 = fmt.pack(w, "elem16")
    # steps (base column): 0: {0} {0}; 192: {255, 256} {}; 960: {1000} {1020, 1024}; 4032: {4095} {}
    assert (elem16.base.long() * 4).tolist() == [0, 192, 960, 4032]
    assert elem16.row_offsets.tolist() == [0, 0, 64]
    quad = fmt.pack(w, "quad")
    # groups. row 0: {0, 63, 64, 250} {1023}; row 1: {0, 255} {256}
    assert quad.row_offsets.tolist() == [0, 2, 4]
    for p in (elem16, quad):
        assert torch.equal(fmt.unpack(p, 4096), w)


def test_elem16_rows_advance_independently():
    # Row 0 has 20 entries in the first window, row 5 one at column 299; the other rows none. A
    # row takes at most 4 entries per step; a group has as many steps as its fullest row needs
    # (sorting the rows by kept weights would not save a step here: output order is kept).
    w = torch.zeros(6, 300, dtype=torch.int8)
    w[0, :20] = 1
    w[5, 299] = -1
    p = fmt.pack(w, "elem16")
    assert p.row_order.tolist() == list(range(6))
    assert p.row_offsets.tolist() == [0] * 6 + [6 * 16]
    assert (p.base.long() * 4).tolist() == [0] * 5 + [256]
    steps = p.values.view(6, 16, 4)
    assert steps[:5, 0].eq(1).all() and steps[:5, 1:].eq(0).all()
    assert steps[5, 5].tolist() == [-1, 0, 0, 0] and steps[5, 0].eq(0).all()
    assert torch.equal(fmt.unpack(p, 300), w)
    assert torch.equal(fmt.pack(w, "quad").row_order, torch.arange(6, dtype=torch.int32))


def test_elem16_sorts_rows_of_different_density(isa, vbmi):
    # Rows of very different density (as magnitude pruning leaves them): in output order most
    # slots of a group would be padding, so the packer sorts the rows by kept weights and the
    # kernels scatter each result to its output row.
    g = torch.Generator().manual_seed(0)
    density = torch.linspace(0.0, 0.4, 70)[torch.randperm(70, generator=g)]
    w = torch.randint(1, 128, (70, 1030), dtype=torch.int8, generator=g)
    w = w * (torch.rand(70, 1030, generator=g) < density[:, None])
    p = fmt.pack(w, "elem16")
    assert not torch.equal(p.row_order, torch.arange(70, dtype=torch.int32))
    fmt.check(p, 70, 1030)
    assert int((w != 0).sum()) / p.values.numel() > 0.7
    for M in (1, 5, 70):
        x = torch.randint(-127, 128, (M, 1030), dtype=torch.int8, generator=g)
        assert torch.equal(ops.sparse_int8_gemm_s32(x, *p[:5], "elem16"), exact(x, w))
        xf = torch.randn(M, 1030, generator=g)
        w_scale, bias = torch.rand(70, generator=g) * 0.01, torch.randn(70, generator=g)
        y = ops.sparse_int8_linear(xf, *p[:5], w_scale, bias, "elem16")
        ref = sparse_int8_linear_reference(xf, *p[:5], w_scale, bias, "elem16")
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_s32_exact(isa, vbmi, format, shape):
    M, N, K, density = shape
    w = pruned_int8(N, K, density, block=4 if format == "quad" else 1)
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    out = ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:5], format)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out, exact(x, w))


def as_step_stream(packed):
    """elem16 with values and rel as [steps, 64] views of one interleaved array (as
    SparseInt8Linear keeps them)."""
    values, rel = fmt.step_views(fmt.step_stream(packed.values, packed.rel))
    return packed._replace(values=values, rel=rel)


@pytest.mark.parametrize("shape", SHAPES)
def test_step_stream_layout_is_exact(isa, vbmi, shape):
    # Every elem16 kernel (window passes, gathers, panels, AVX2, scalar) on the interleaved
    # layout: row stride 128 between the steps of rel and of values.
    M, N, K, density = shape
    w = pruned_int8(N, K, density)
    p = as_step_stream(fmt.pack(w, "elem16"))
    assert p.values.stride() == p.rel.stride() == (128, 1) or p.base.numel() == 0
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    assert torch.equal(ops.sparse_int8_gemm_s32(x, *p[:5], "elem16"), exact(x, w))
    assert torch.equal(fmt.unpack(p, K), w)
    xf = torch.randn(M, K)
    w_scale, bias = torch.rand(N) * 0.01, torch.randn(N)
    torch.testing.assert_close(ops.sparse_int8_linear(xf, *p[:5], w_scale, bias, "elem16").double(),
                               sparse_int8_linear_reference(xf, *p[:5], w_scale, bias, "elem16"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("format", FORMATS)
def test_threads_give_identical_results(format, threads):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w = pruned_int8(300, 513, 0.1)
        x = torch.randint(-127, 128, (70, 513), dtype=torch.int8)
        assert torch.equal(ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:5], format),
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
    assert torch.equal(ops.sparse_int8_gemm_s32(x, *fmt.pack(w, format)[:5], format), exact(x, w))


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
        y = ops.sparse_int8_linear(x, *packed[:5], w_scale, b, format)
        assert y.dtype == dtype and y.shape == (M, N)
        ref = sparse_int8_linear_reference(x, *packed[:5], w_scale, b, format)
        # float32 epilogue vs float64; then the output dtype's rounding
        tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
        torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


def test_nan_row_gives_nan_output_row(isa):
    w = pruned_int8(20, 64, 0.3)
    packed = fmt.pack(w, "elem16")
    x = torch.randn(20, 64)
    x[3, 5] = float("nan")
    x[7, 0] = float("inf")
    y = ops.sparse_int8_linear(x, *packed[:5], torch.ones(20), None, "elem16")
    assert torch.isnan(y[3]).all() and torch.isnan(y[7]).all()
    others = [i for i in range(20) if i not in (3, 7)]
    assert torch.isfinite(y[others]).all()


def test_opcheck():
    w = pruned_int8(40, 70, 0.2)
    for format in FORMATS:
        packed = fmt.pack(w, format)
        x = torch.randn(9, 70, requires_grad=True)
        args = (x, *packed[:5], torch.rand(40), torch.randn(40, requires_grad=True), format)
        torch.library.opcheck(ops.sparse_int8_linear, args)
        xi = torch.randint(-127, 128, (5, 70), dtype=torch.int8)
        torch.library.opcheck(ops.sparse_int8_gemm_s32, (xi, *packed[:5], format))
    steps = as_step_stream(fmt.pack(w, "elem16"))
    x = torch.randn(9, 70, requires_grad=True)
    torch.library.opcheck(ops.sparse_int8_linear,
                          (x, *steps[:5], torch.rand(40), torch.randn(40), "elem16"))


def test_backward_matches_dense_dequantized_weight():
    w = pruned_int8(30, 50, 0.3)
    packed = fmt.pack(w, "elem16")
    w_scale = torch.rand(30) * 0.02
    x = torch.randn(6, 50, requires_grad=True)
    bias = torch.randn(30, requires_grad=True)
    y = ops.sparse_int8_linear(x, *packed[:5], w_scale, bias, "elem16")
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ (w.float() * w_scale[:, None]))
    torch.testing.assert_close(bias.grad, g.sum(0))


# ------------------------------------------------------------------ bad input
def test_bad_input_is_a_clear_error():
    w = pruned_int8(8, 32, 0.5)
    v, r, b, o, ro = fmt.pack(w, "elem16")[:5]
    x = torch.randn(2, 32)
    s = torch.ones(8)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.sparse_int8_linear(x.long(), v, r, b, o, ro, s, None, "elem16")
    with pytest.raises(ValueError, match="format must be 'elem16' or 'quad'"):
        ops.sparse_int8_linear(x, v, r, b, o, ro, s, None, "csr")
    with pytest.raises(ValueError, match="rel must have"):
        ops.sparse_int8_linear(x, v, r[:-1], b, o, ro, s, None, "elem16")
    with pytest.raises(ValueError, match="rel must have"):
        ops.sparse_int8_linear(x, v, r, b, o, ro, s, None, "quad")  # values too short for quad
    with pytest.raises(ValueError, match="row_offsets"):
        ops.sparse_int8_linear(x, v, r, b, o.flip(0), ro, s, None, "elem16")
    far = b.clone()
    far[0] = 8  # column 32: outside in_features
    with pytest.raises(ValueError, match="outside in_features"):
        ops.sparse_int8_linear(x, v, r, far, o, ro, s, None, "elem16")
    with pytest.raises(TypeError, match="w_scale must be torch.float32"):
        ops.sparse_int8_linear(x, v, r, b, o, ro, s.double(), None, "elem16")
    with pytest.raises(ValueError, match="bias must have"):
        ops.sparse_int8_linear(x, v, r, b, o, ro, s, torch.ones(7), "elem16")
    with pytest.raises(TypeError, match="rel must be torch.uint8"):
        ops.sparse_int8_linear(x, v, r.to(torch.int8), b, o, ro, s, None, "elem16")
    with pytest.raises(ValueError, match=r"row_order entries must lie in \[0, out_features"):
        ops.sparse_int8_linear(x, v, r, b, o, ro + 8, s, None, "elem16")
    with pytest.raises(ValueError, match="row_order must have out_features"):
        ops.sparse_int8_linear(x, v, r, b, o, ro[:-1], s, None, "elem16")
    # The interleaved elem16 layout: [steps, 64] rows the same stride (>= 64) apart.
    sv, sr = fmt.step_views(fmt.step_stream(v, r))
    w16 = pruned_int8(40, 300, 0.5)
    tv, tr = fmt.step_views(fmt.step_stream(*fmt.pack(w16, "elem16")[:2]))
    tb, to, tro = fmt.pack(w16, "elem16")[2:5]
    x3 = torch.randn(2, 300)
    with pytest.raises(ValueError, match="both 2-D"):
        ops.sparse_int8_linear(x, sv, r, b, o, ro, s, None, "elem16")
    with pytest.raises(ValueError, match="other formats take 1-D"):
        ops.sparse_int8_linear(x, sv, sr, b, o, ro, s, None, "quad")
    with pytest.raises(ValueError, match=r"must be \["):
        ops.sparse_int8_linear(x3, tv[:-1], tr[:-1], tb, to, tro, torch.ones(40), None, "elem16")
    with pytest.raises(ValueError, match="same stride"):
        ops.sparse_int8_linear(x3, tv.contiguous(), tr, tb, to, tro, torch.ones(40), None,
                               "elem16")
    overlapping = torch.zeros(tb.numel() * 32 + 64, dtype=torch.uint8).as_strided((tb.numel(), 64), (32, 1))
    with pytest.raises(ValueError, match="same stride"):
        ops.sparse_int8_linear(x3, overlapping.view(torch.int8), overlapping, tb, to, tro,
                               torch.ones(40), None, "elem16")
    with pytest.raises(TypeError, match="rel must be torch.uint8"):
        ops.sparse_int8_linear(x3, tv, tr.view(torch.int8), tb, to, tro, torch.ones(40), None,
                               "elem16")
    w1 = torch.zeros(3, 8, dtype=torch.int8)
    w1[0, 1], w1[2, 6] = 5, -3
    one = fmt.pack(w1, "elem16")  # a single step
    assert one.base.numel() == 1
    gappy = torch.zeros(256, dtype=torch.uint8).as_strided((1, 64), (128, 2))  # not contiguous
    with pytest.raises(ValueError, match="contiguous rows"):
        ops.sparse_int8_linear(torch.randn(2, 8), gappy.view(torch.int8), gappy, *one[2:5],
                               torch.ones(3), None, "elem16")
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        ops.sparse_int8_pack(torch.full((2, 4), -128, dtype=torch.int8), "elem16")
    with pytest.raises(TypeError, match="w_int8 must be torch.int8"):
        ops.sparse_int8_pack(torch.ones(2, 4), "elem16")


def test_check_rejects_corrupt_packed_tensors():
    w = pruned_int8(8, 40, 0.5)
    p = fmt.pack(w, "elem16")
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
    with pytest.raises(ValueError, match="'elem' .* was replaced by 'elem16'"):
        fmt.check(p._replace(format="elem"), 8, 40)
    split = p.row_offsets.clone()
    split[7] = split[8]  # row 7 no longer starts where its group does
    with pytest.raises(ValueError, match="16 rows of a group the same first chunk"):
        fmt.check(p._replace(row_offsets=split), 8, 40)
    twice = p.row_order.clone()
    twice[0] = twice[1]
    with pytest.raises(ValueError, match="row_order must be a permutation"):
        fmt.check(p._replace(row_order=twice), 8, 40)
