"""Symmetric per-row int8 quantization in Triton; same contract (and bits) as the C++ kernels.

One program per row: a max-|x| pass, then a quantize pass over the row in BLOCK-wide chunks.
"""
import torch
import triton
import triton.language as tl

from . import interpreting

# 1.5 * 2^23: (v + M) - M rounds v to an integer, half to even, for |v| < 2^22, in plain fp32
# arithmetic on every backend (the interpreter has no rint). tl.constexpr: compiled (non-
# interpreted) kernels may only read globals that are constexpr.
_ROUND_MAGIC = tl.constexpr(12582912.0)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _quantize_per_row_kernel(x_ptr, q_ptr, scale_ptr, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * K
    q_row = q_ptr + row * K
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, K, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        a = tl.abs(tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32))
        bad = tl.maximum(bad, tl.where(a <= _FLT_MAX, 0, 1))
        amax = tl.maximum(amax, tl.where(a <= _FLT_MAX, a, 0.0))
    row_amax = tl.max(amax, axis=0)
    finite = tl.max(bad, axis=0) == 0
    # IEEE-rounded division, as in C++ (Triton's plain `/` may be approximate on GPUs).
    scale = tl.math.div_rn(row_amax, 127.0)
    safe = tl.where(row_amax > 0.0, row_amax, 1.0)
    inv = tl.where(finite & (row_amax > 0.0), tl.math.div_rn(127.0, safe), 0.0)
    tl.store(scale_ptr + row, tl.where(finite, scale, float("nan")))
    for start in range(0, K, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) * inv
        r = (v + _ROUND_MAGIC) - _ROUND_MAGIC
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
        r = tl.where(finite, r, 0.0)  # NaN * 0 is NaN: a poisoned row stores zeros explicitly
        tl.store(q_row + offs, r.to(tl.int8), mask=offs < K)


@triton.jit
def _dequantize_per_row_kernel(q_ptr, scale_ptr, y_ptr, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s = tl.load(scale_ptr + row)
    for start in range(0, K, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        q = tl.load(q_ptr + row * K + offs, mask=offs < K, other=0)
        y = q.to(tl.float32) * s
        tl.store(y_ptr + row * K + offs, y.to(y_ptr.dtype.element_ty), mask=offs < K)


def _block(K: int) -> int:
    return max(16, min(4096, triton.next_power_of_2(max(K, 1))))


def quantize_per_row(x: torch.Tensor):
    """x [rows, K] float32/bfloat16/float16, contiguous -> (q int8 [rows, K], scale float32)."""
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"quantize_per_row: x must be a contiguous 2-D tensor, got shape "
                         f"{tuple(x.shape)}, contiguous={x.is_contiguous()}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"quantize_per_row: x must be float32, bfloat16 or float16, got {x.dtype}")
    rows, K = x.shape
    q = torch.empty((rows, K), dtype=torch.int8, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows > 0:
        # No fp contraction: (x * inv + magic) as one fma would round differently from the
        # reference's rounded product (the interpreter has no such option and no fma).
        opts = {} if interpreting() else {"enable_fp_fusion": False}
        _quantize_per_row_kernel[(rows,)](x, q, scale, K, BLOCK=_block(K), **opts)
    return q, scale


def dequantize_per_row(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    """q [rows, K] int8, scale [rows] float32 -> q * scale[:, None] as dtype."""
    if q.dtype != torch.int8 or scale.dtype != torch.float32:
        raise TypeError(f"dequantize_per_row: expected int8 q and float32 scale, got {q.dtype} "
                        f"and {scale.dtype}")
    if q.dim() != 2 or scale.shape != (q.shape[0],) or not q.is_contiguous():
        raise ValueError(f"dequantize_per_row: expected contiguous q [rows, K] and scale [rows], "
                         f"got {tuple(q.shape)} and {tuple(scale.shape)}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"dequantize_per_row: dtype must be float32, bfloat16 or float16, got {dtype}")
    rows, K = q.shape
    y = torch.empty((rows, K), dtype=dtype, device=q.device)
    if rows > 0 and K > 0:
        _dequantize_per_row_kernel[(rows,)](q, scale.contiguous(), y, K, BLOCK=_block(K))
    return y
