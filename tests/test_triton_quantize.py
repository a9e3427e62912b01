"""Triton quantize kernels against the PyTorch reference; on a CPU-only machine they run under
TRITON_INTERPRET=1 (set in conftest.py), which has no bfloat16."""
import pytest
import torch

from scalenn._ops.quantize import dequantize_per_row_reference, quantize_per_row_reference

triton = pytest.importorskip("triton", reason="Triton is not installed")
from scalenn.kernels import quantize as tq  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 7), (5, 300), (2, 4099)])
def test_triton_quantize_matches_reference(dtype, shape):
    x = (torch.randn(shape) * 5).to(dtype)
    if shape[0] > 2:
        x[1] = 0
        x[2, -1] = float("nan")
    q, s = tq.quantize_per_row(x.to(DEVICE))
    q_ref, s_ref = quantize_per_row_reference(x)
    assert torch.equal(q.cpu(), q_ref)
    torch.testing.assert_close(s.cpu(), s_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (4, 33), (3, 2050)])
def test_triton_dequantize_matches_reference(out_dtype, shape):
    q, s = quantize_per_row_reference(torch.randn(shape))
    y = tq.dequantize_per_row(q.to(DEVICE), s.to(DEVICE), out_dtype)
    torch.testing.assert_close(y.cpu(), dequantize_per_row_reference(q, s, out_dtype), rtol=0, atol=0)


def test_triton_bad_input():
    with pytest.raises(TypeError, match="float32"):
        tq.quantize_per_row(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="contiguous 2-D"):
        tq.quantize_per_row(torch.ones(2, 3).t())
