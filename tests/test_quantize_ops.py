"""quantize_per_row / dequantize_per_row: CPU kernels on every ISA against the PyTorch reference
(bit-exact), edge cases, bad input, opcheck, torch.compile and torch.export."""
import pytest
import torch

import scalenn
from scalenn._ops.quantize import dequantize_per_row_reference, quantize_per_row_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 0 rows, 1 row, K not a multiple of any vector width, K below one vector, long rows.
SHAPES = [(0, 64), (1, 1), (1, 4096), (3, 7), (5, 15), (17, 16), (33, 1000), (7, 4099), (2, 0),
          (130, 257)]


def assert_same_quantization(x):
    q, s = torch.ops.scalenn.quantize_per_row(x)
    q_ref, s_ref = quantize_per_row_reference(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)
    return q, s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_reference_exactly(isa, dtype, shape):
    x = (torch.randn(shape) * torch.rand(shape[0], 1) * 10).to(dtype)
    assert_same_quantization(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_heavy_tailed_and_tiny_values(isa, dtype):
    x = torch.distributions.StudentT(2.0).sample((64, 333))
    x[0] *= 1e-30 if dtype == torch.float32 else 1e-6  # subnormal-ish range
    x[1] = 0.5  # exact .5 ties after scaling hit round-half-even
    assert_same_quantization(x.to(dtype))


def test_half_way_values_round_to_even(isa):
    # amax = 127 gives inv = 1, so q = round(x): ties go to the even integer, like torch.round.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]])
    q, _ = torch.ops.scalenn.quantize_per_row(x)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows_give_zero_scale(isa, dtype):
    x = torch.randn(6, 100).to(dtype)
    x[2] = 0
    q, s = assert_same_quantization(x)
    assert s[2] == 0 and (q[2] == 0).all() and (s[[0, 1, 3, 4, 5]] > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_rows_are_poisoned_and_contained(isa, dtype, bad):
    x = torch.randn(9, 77).to(dtype)
    x[4, 13] = bad
    x[8, 76] = bad  # in the vector tail
    q, s = assert_same_quantization(x)
    assert torch.isnan(s[[4, 8]]).all() and (q[[4, 8]] == 0).all()
    good = [0, 1, 2, 3, 5, 6, 7]
    q_good, s_good = quantize_per_row_reference(x[good])
    assert torch.equal(q[good], q_good) and torch.equal(s[good], s_good)
    y = torch.ops.scalenn.dequantize_per_row(q, s, dtype)
    assert torch.isnan(y[[4, 8]]).all() and torch.isfinite(y[good]).all()


def test_large_rows(isa):
    x = torch.randn(3, (1 << 20) + 3)
    assert_same_quantization(x)
    x = torch.randn(20000, 5)  # many short rows, grains spanning threads
    assert_same_quantization(x)


@pytest.mark.parametrize("in_dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_matches_reference_exactly(isa, in_dtype, out_dtype, shape):
    q, s = quantize_per_row_reference((torch.randn(shape) * 3).to(in_dtype))
    y = torch.ops.scalenn.dequantize_per_row(q, s, out_dtype)
    assert y.dtype == out_dtype and y.shape == q.shape
    torch.testing.assert_close(y, dequantize_per_row_reference(q, s, out_dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_error_bound(isa, dtype):
    x = torch.randn(64, 515, dtype=torch.float64)
    q, s = scalenn.quantize_per_row(x.to(dtype))
    y = scalenn.dequantize_per_row(q, s, torch.float32).double()
    # Half a quantization step, plus the input's own rounding to `dtype`.
    bound = s.double()[:, None] / 2 + x.abs() * torch.finfo(dtype).eps
    assert ((y - x).abs() <= bound * (1 + 1e-6)).all()


def test_public_wrapper_handles_leading_dims():
    x = torch.randn(2, 3, 50)
    q, s = scalenn.quantize_per_row(x)
    assert q.shape == x.shape and s.shape == (2, 3)
    q2, s2 = quantize_per_row_reference(x.reshape(6, 50))
    assert torch.equal(q.reshape(6, 50), q2) and torch.equal(s.reshape(6), s2)
    assert scalenn.dequantize_per_row(q, s, torch.bfloat16).shape == x.shape


@pytest.mark.parametrize("call, exc, match", [
    (lambda: scalenn.quantize_per_row(torch.ones(3, 4, dtype=torch.int32)), TypeError, "float32"),
    (lambda: scalenn.quantize_per_row(torch.ones(3, 4, dtype=torch.float64)), TypeError, "float32"),
    (lambda: scalenn.quantize_per_row(torch.ones(3, 4, dtype=torch.complex64)), TypeError, "float32"),
    (lambda: scalenn.quantize_per_row([1.0, 2.0]), TypeError, "torch.Tensor"),
    (lambda: scalenn.quantize_per_row(torch.tensor(1.0)), ValueError, "at least 1 dimension"),
    (lambda: scalenn.quantize_per_row(torch.ones(4, 6).t()), ValueError, "contiguous"),
    (lambda: torch.ops.scalenn.quantize_per_row(torch.ones(2, 3, 4)), ValueError, "2-D"),
    (lambda: torch.ops.scalenn.quantize_per_row(torch.ones(4, 6).t()), ValueError, "contiguous"),
    (lambda: torch.ops.scalenn.quantize_per_row(torch.ones(4, 6, dtype=torch.int8)), TypeError,
     "float32"),
    (lambda: scalenn.dequantize_per_row(torch.ones(2, 3), torch.ones(2)), TypeError, "int8"),
    (lambda: scalenn.dequantize_per_row(torch.ones(2, 3, dtype=torch.int8), torch.ones(3)),
     ValueError, "shape"),
    (lambda: scalenn.dequantize_per_row(torch.ones(2, 3, dtype=torch.int8), torch.ones(2),
                                        torch.int32), TypeError, "dtype"),
    (lambda: torch.ops.scalenn.dequantize_per_row(torch.ones(2, 3, dtype=torch.int8),
                                                  torch.ones(5), torch.float32), ValueError,
     "one entry per row"),
    (lambda: torch.ops.scalenn.dequantize_per_row(torch.ones(2, 3, dtype=torch.int8),
                                                  torch.ones(2, dtype=torch.float64),
                                                  torch.float32), TypeError, "float32"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unsupported_device_is_a_clear_error():
    x = torch.ones(2, 3, device="meta")
    q, s = scalenn.quantize_per_row(x)  # meta works (shape propagation)
    assert q.device.type == "meta" and s.shape == (2,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    for shape in [(5, 33), (0, 8), (1, 1)]:
        x = torch.randn(shape).to(dtype)
        torch.library.opcheck(torch.ops.scalenn.quantize_per_row.default, (x,))
        q, s = quantize_per_row_reference(x)
        for out_dtype in DTYPES:
            torch.library.opcheck(torch.ops.scalenn.dequantize_per_row.default, (q, s, out_dtype))


def _roundtrip(x):
    q, s = scalenn.quantize_per_row(x)
    return scalenn.dequantize_per_row(q, s, x.dtype) * 2 + 1, q


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    compiled = torch.compile(_roundtrip, fullgraph=True)
    for shape in [(8, 64), (3, 100)]:
        x = torch.randn(shape)
        y_c, q_c = compiled(x)
        y_e, q_e = _roundtrip(x)
        assert torch.equal(q_c, q_e)
        torch.testing.assert_close(y_c, y_e, rtol=0, atol=0)


def test_torch_export_roundtrip():
    class M(torch.nn.Module):
        def forward(self, x):
            return _roundtrip(x)[0]

    x = torch.randn(4, 40)
    ep = torch.export.export(M(), (x,))
    assert any("scalenn" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), M()(x), rtol=0, atol=0)
