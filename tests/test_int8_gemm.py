"""Int8 GEMM ops on every ISA: exact int32 accumulators against the reference (odd shapes, K not
a multiple of 4 or 64, worst-case values for vpmaddubsw saturation, the largest K), the fused
int8_linear / int8_linear_static epilogues, NaN/Inf rows, bad input, opcheck."""
import pytest
import torch

from scalenn import _C
from scalenn._ops.int8 import (int8_gemm_s32_reference, int8_linear_reference,
                               packed_numel)

ops = torch.ops.scalenn
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (M, N, K): 0/1 rows, row tails of the 6-row VNNI tile, N tails of 16 and of the 64-wide panel,
# K not a multiple of 4 or of 64, and shapes where threads split rows instead of panels.
SHAPES = [(0, 5, 7), (1, 1, 1), (1, 17, 3), (2, 130, 0), (3, 7, 5), (5, 64, 64), (6, 65, 13),
          (7, 33, 65), (13, 100, 63), (37, 130, 257), (1, 200, 1001), (101, 48, 130),
          (250, 80, 66), (170, 130, 4100)]  # the last: more rows than one row block


def rand_w(n, k):
    return torch.randint(-127, 128, (n, k), dtype=torch.int8)


def exact_s32(x_int8, w_int8):
    # float64 matmul is exact here (|sums| < 2^31 << 2^53) and much faster than int64.
    return (x_int8.double() @ w_int8.double().t()).to(torch.int32)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_s32_exact(isa, threads, shape):
    M, N, K = shape
    w = rand_w(N, K)
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    packed = ops.int8_pack_weight(w)
    assert packed.shape == (packed_numel(N, K),)
    out = ops.int8_gemm_s32(x, packed, N)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out, exact_s32(x, w))
    if M * N * K < 200_000:
        assert torch.equal(out, int8_gemm_s32_reference(x, w))


@pytest.mark.parametrize("sign", [1, -1])
def test_worst_case_values_do_not_saturate(isa, sign):
    # Every product at its extreme: a vpmaddubsw pair sum of two 127*127 (or 128*127 with the
    # -128 activation the s32 op accepts) must not saturate int16, and the largest allowed K
    # must fit the int32 accumulator exactly.
    for K in (4, 67, 4099, 131072):
        w = torch.full((17, K), 127 * sign, dtype=torch.int8)
        w[1] = -127 * sign
        w[2, ::2] = -127 * sign
        x = torch.full((3, K), 127, dtype=torch.int8)
        x[1] = -128
        x[2, 1::2] = -127
        out = ops.int8_gemm_s32(x, ops.int8_pack_weight(w), 17)
        assert torch.equal(out, exact_s32(x, w)), K
    assert abs(int(out.abs().max())) == 128 * 127 * 131072


def test_isas_give_identical_accumulators_and_outputs():
    x = torch.randn(29, 300) * 3
    w = rand_w(77, 300)
    ws = torch.rand(77) * 0.01
    b = torch.randn(77)
    packed = ops.int8_pack_weight(w)
    xq = torch.randint(-128, 128, (29, 300), dtype=torch.int8)
    prev = _C.current_isa()
    results = {}
    try:
        for name in ["avx512", "avx2", "scalar"]:
            try:
                _C.set_cpu_isa(name)
            except ValueError:
                continue
            results[name] = (ops.int8_gemm_s32(xq, packed, 77),
                             [ops.int8_linear(x, packed, ws, b, 77, a) for a in ("none", "relu", "gelu")])
    finally:
        _C.set_cpu_isa(prev)
    first = next(iter(results.values()))
    for s32, ys in results.values():
        assert torch.equal(s32, first[0])
        for y, y0 in zip(ys, first[1]):  # same float operation sequence on every ISA
            assert torch.equal(y, y0)


def test_pack_unpack_roundtrip_and_layout_size():
    for N, K in [(1, 1), (15, 5), (16, 4), (65, 130), (200, 1001), (0, 3), (3, 0)]:
        w = rand_w(N, K)
        packed = ops.int8_pack_weight(w)
        assert packed.numel() == packed_numel(N, K)
        assert torch.equal(ops.int8_unpack_weight(packed, N, K), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("shape", [(1, 17, 3), (7, 33, 65), (37, 130, 257), (101, 64, 130), (0, 4, 4)])
def test_int8_linear_matches_reference(isa, dtype, activation, shape):
    M, N, K = shape
    x = (torch.randn(M, K) * torch.rand(M, 1) * 4).to(dtype)
    w = rand_w(N, K)
    ws = torch.rand(N) * 0.02 + 1e-3
    b = torch.randn(N)
    y = ops.int8_linear(x, ops.int8_pack_weight(w), ws, b, N, activation)
    assert y.dtype == dtype and y.shape == (M, N)
    ref = int8_linear_reference(x, w, ws, b, activation)
    # float32 epilogue vs float64 reference, then rounding to the output dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), ref, rtol=2 * eps if dtype != torch.float32 else 1e-5,
                               atol=1e-5 if dtype == torch.float32 else 2 * eps)


def test_int8_linear_without_bias_and_zero_k(isa):
    w = rand_w(20, 0)
    y = ops.int8_linear(torch.randn(3, 0), ops.int8_pack_weight(w), torch.rand(20), None, 20, "none")
    assert torch.equal(y, torch.zeros(3, 20))
    b = torch.randn(20)
    y = ops.int8_linear(torch.randn(3, 0), ops.int8_pack_weight(w), torch.rand(20), b, 20, "relu")
    assert torch.equal(y, torch.relu(b).expand(3, 20))


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_static_matches_reference(isa, dtype):
    x = (torch.randn(23, 71) * 2).to(dtype)
    w = rand_w(40, 71)
    ws = torch.rand(40) * 0.02
    b = torch.randn(40)
    for act_scale in (2.0 / 127, 9.0 / 127, 0.3):  # inside, beyond (clamped) and coarse
        y = ops.int8_linear_static(x, ops.int8_pack_weight(w), ws, b, 40, act_scale, "none")
        ref = int8_linear_reference(x, w, ws, b, "none", act_scale=act_scale)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(y.double(), ref, rtol=2 * eps if dtype != torch.float32 else 1e-5,
                                   atol=1e-5 if dtype == torch.float32 else 2 * eps)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("static", [False, True])
def test_nonfinite_rows_give_nan_rows_and_stay_contained(isa, bad, static):
    x = torch.randn(9, 77)
    x[4, 13] = bad
    x[8, 76] = bad
    w = rand_w(50, 77)
    ws, b = torch.rand(50) * 0.02, torch.randn(50)
    packed = ops.int8_pack_weight(w)
    for act in ("none", "relu", "gelu"):
        if static:
            y = ops.int8_linear_static(x, packed, ws, b, 50, 0.05, act)
        else:
            y = ops.int8_linear(x, packed, ws, b, 50, act)
        assert torch.isnan(y[[4, 8]]).all()
        good = [0, 1, 2, 3, 5, 6, 7]
        ref = int8_linear_reference(x[good], w, ws, b, act, act_scale=0.05 if static else None)
        torch.testing.assert_close(y[good].double(), ref, rtol=1e-5, atol=1e-5)


def test_large_shapes_exact(isa):
    if isa == "scalar":
        pytest.skip("the scalar path is covered on the smaller shapes (it is slow by design)")
    x = torch.randint(-127, 128, (300, 2051), dtype=torch.int8)
    w = rand_w(1000, 2051)
    assert torch.equal(ops.int8_gemm_s32(x, ops.int8_pack_weight(w), 1000), exact_s32(x, w))


def test_gelu_epilogue_is_accurate():
    # w = 127 I and w_scale = 1/127: the layer passes its quantized input through, so the fused
    # GELU is compared with torch's exact GELU on the pre-activation the kernel computed.
    w = (torch.eye(64) * 127).to(torch.int8)
    xs = torch.randn(500, 64) * 4
    xs[0, :] = torch.linspace(-12, 12, 64)
    packed = ops.int8_pack_weight(w)
    ws = torch.full((64,), 1 / 127)
    pre = ops.int8_linear(xs, packed, ws, None, 64, "none")
    y = ops.int8_linear(xs, packed, ws, None, 64, "gelu")
    ref = torch.nn.functional.gelu(pre.double())
    # erf to 1.5e-7 absolute (Abramowitz-Stegun 7.1.26) -> |x|/2 * 1.5e-7, plus the float32
    # rounding of 1 + erf (cancels for x < 0), about as much again
    bound = 2e-7 * pre.double().abs() + 2e-7 * ref.abs() + 1e-9
    assert ((y.double() - ref).abs() <= bound).all(), ((y.double() - ref).abs() / bound).max()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ops.int8_pack_weight(torch.ones(3, 4)), TypeError, "int8"),
    (lambda: ops.int8_pack_weight(torch.ones(3, dtype=torch.int8)), ValueError, "2-D"),
    (lambda: ops.int8_pack_weight(torch.full((3, 4), -128, dtype=torch.int8)), ValueError, "-127"),
    (lambda: ops.int8_pack_weight(torch.ones(1, 131073, dtype=torch.int8)), ValueError, "131072"),
    (lambda: ops.int8_linear(torch.ones(2, 4, dtype=torch.int32), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), None, 3, "none"), TypeError, "float32"),
    (lambda: ops.int8_linear(torch.ones(2, 4, dtype=torch.complex64), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), None, 3, "none"), TypeError, "float32"),
    (lambda: ops.int8_linear(torch.ones(2, 5), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), None, 3, "none"), ValueError, "int8_pack_weight"),
    (lambda: ops.int8_linear(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(20), None, 20, "none"), ValueError, "int8_pack_weight"),
    (lambda: ops.int8_linear(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(2), None, 3, "none"), ValueError, "w_scale"),
    (lambda: ops.int8_linear(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3, dtype=torch.float64), None, 3, "none"), TypeError, "w_scale"),
    (lambda: ops.int8_linear(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), torch.ones(4), 3, "none"), ValueError, "bias"),
    (lambda: ops.int8_linear(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), None, 3, "tanh"), ValueError, "activation"),
    (lambda: ops.int8_linear(torch.ones(2, 2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                             torch.ones(3), None, 3, "none"), ValueError, "2-D"),
    (lambda: ops.int8_linear_static(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)),
                                    torch.ones(3), None, 3, float("nan"), "none"), ValueError,
     "act_scale"),
    (lambda: ops.int8_gemm_s32(torch.ones(2, 4), ops.int8_pack_weight(rand_w(3, 4)), 3),
     TypeError, "int8"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_opcheck():
    for M, N, K in [(5, 33, 13), (0, 8, 4), (1, 1, 1), (7, 70, 64)]:
        w = rand_w(N, K)
        packed = ops.int8_pack_weight(w)
        torch.library.opcheck(ops.int8_pack_weight.default, (w,))
        torch.library.opcheck(ops.int8_unpack_weight.default, (packed, N, K))
        torch.library.opcheck(ops.int8_gemm_s32.default,
                              (torch.randint(-128, 128, (M, K), dtype=torch.int8), packed, N))
        ws, b = torch.rand(N) * 0.1, torch.randn(N)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(M, K).to(dtype)
            for act in ("none", "relu", "gelu"):
                torch.library.opcheck(ops.int8_linear.default, (x, packed, ws, b, N, act),
                                      test_utils=("test_schema", "test_faketensor",
                                                  "test_aot_dispatch_static",
                                                  "test_aot_dispatch_dynamic"))
            torch.library.opcheck(ops.int8_linear_static.default,
                                  (x, packed, ws, None, N, 0.02, "relu"),
                                  test_utils=("test_schema", "test_faketensor",
                                              "test_aot_dispatch_static"))


def test_autograd_input_and_bias_gradients():
    K, N = 37, 21
    w = rand_w(N, K)
    ws = torch.rand(N) * 0.05
    packed = ops.int8_pack_weight(w)
    w_deq = w.double() * ws.double()[:, None]
    for act in ("none", "relu", "gelu"):
        x = torch.randn(6, K, requires_grad=True)
        b = torch.randn(N, requires_grad=True)
        y = ops.int8_linear(x, packed, ws, b, N, act)
        g = torch.randn_like(y)
        gx, gb = torch.autograd.grad(y, (x, b), g)
        # Straight-through the activation quantization: d/dx of act(x W^T + b) with the
        # pre-activation the kernel computed.
        pre = ops.int8_linear(x.detach(), packed, ws, b.detach(), N, "none").double().requires_grad_()
        from scalenn._ops.int8 import apply_activation
        (gpre,) = torch.autograd.grad(apply_activation(pre, act), (pre,), g.double())
        torch.testing.assert_close(gx.double(), gpre @ w_deq, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gb.double(), gpre.sum(0), rtol=1e-4, atol=1e-5)
