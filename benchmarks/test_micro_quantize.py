"""pytest-benchmark microbenchmarks: `pytest benchmarks/ --benchmark-only`.

For side-by-side tables with rotation out of cache and ratios, use `scalenn bench quantize`;
these time single kernels hot in cache, for quick regression checks while developing.
"""
import pytest
import torch

import scalenn
from scalenn.bench.quantize import torch_composed

SHAPES = [(1, 4096), (128, 4096), (1024, 4096)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantize_per_row_scalenn(benchmark, shape, dtype):
    x = torch.randn(shape).to(dtype)
    benchmark(scalenn.quantize_per_row, x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantize_per_row_torch_ops(benchmark, shape, dtype):
    x = torch.randn(shape).to(dtype)
    benchmark(torch_composed, x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dequantize_per_row_scalenn(benchmark, shape):
    q, s = scalenn.quantize_per_row(torch.randn(shape))
    benchmark(scalenn.dequantize_per_row, q, s, torch.float32)
