"""The CUDA kernels' index arithmetic, executed on the CPU by tests/mma_emulator.py (a literal
port of the kernels' tiling, swizzle, ldmatrix addressing and epilogue mapping over a model of
the PTX instructions). Together with the host packer this must reproduce x @ W^T exactly. It
does not prove the PTX model right; tests/test_cuda_kernels.py does that on a GPU."""
import numpy as np
import pytest
import torch

from scalenn._ops import sparse24_layout as L

import mma_emulator as emu  # tests/ is on sys.path under pytest's rootdir conftest

CONFIGS = {"small": (2, 1, 1, 2), "medium": (4, 1, 2, 4), "large": (4, 2, 2, 8)}


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("K", [96, 40], ids=["K96", "K40_unaligned"])
def test_int8_gemm_index_math(cfg, K):
    M, N = 19, 37
    rng = np.random.default_rng(0)
    xq = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    acc = emu.int8_gemm(xq, w, *CONFIGS[cfg])
    assert np.array_equal(acc, xq.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.parametrize("kind,convention", [("f16", "row_chunks"), ("int8", "row_chunks"),
                                             ("int8", "row_halves"), ("int8", "owner")])
@pytest.mark.parametrize("cfg", ["small", "medium"])
def test_sparse24_index_math_with_host_packing(kind, convention, cfg):
    M, N, K = 11, 40, 128
    if kind == "int8":
        w = L.prune_2_4(torch.randint(-127, 128, (N, K), dtype=torch.int8))
        x = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    else:
        w = L.prune_2_4(torch.randn(N, K)).half()
        x = torch.randn(M, K).half()
    values, meta = L.pack_sparse24(w, convention)
    acc = emu.sparse24(kind, convention, values.numpy(), meta.numpy(), x.numpy(), N,
                       *CONFIGS[cfg])
    ref = x.double() @ w.double().t()
    np.testing.assert_allclose(acc, ref.numpy(), rtol=1e-12, atol=1e-9)
