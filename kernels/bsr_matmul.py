"""Block-sparse (BSR) weight x dense activations in Triton: y = act(x @ W^T + bias).

W [N, K] is stored block-row-compressed with blocks of BN x BK (torch's BSR layout, as produced by
`w.to_sparse_bsr((BN, BK))`): crow [N/BN + 1], col [nnzb] (block-column index), values
[nnzb, BN, BK]. One program owns a BLOCK_M x BN output tile and walks only the stored blocks of
its block row, so work and weight bytes both scale with the density.

- bsr_linear: float32/float16/bfloat16 x and values (same dtype), float32 accumulation
  (float32 operands use IEEE fp32 products, not TF32), output x.dtype.
- bsr_int8_linear: x quantized per token by the `scalenn::quantize_per_row` contract (pre-pass),
  int8 values, int32 accumulation, epilogue acc * s_x[m] * w_scale[n] + bias, activation
  (none/relu/gelu) as in kernels/int8_linear.py.
Block sizes BN, BK: powers of two >= 16 (tensor-core tile minimum).
"""
import torch
import triton
import triton.language as tl

from . import interpreting
from ._config import m_bucket
from .int8_linear import ACTIVATIONS, _epilogue
from .quantize import quantize_per_row


def _configs():
    if interpreting():
        return [triton.Config({"BLOCK_M": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
            for bm, w, s in [(16, 4, 4), (32, 4, 4), (64, 4, 3), (128, 8, 3), (128, 4, 4)]]


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "BN", "BK", "IS_INT8"])
@triton.jit
def _bsr_kernel(x_ptr, crow_ptr, col_ptr, val_ptr, w_scale_ptr, row_scale_ptr, bias_ptr, y_ptr,
                M, N, K, M_BUCKET, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr,
                ACT: tl.constexpr, FP32_IEEE: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    block_row = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (block_row * BN + tl.arange(0, BN)).to(tl.int64)
    rk = tl.arange(0, BK)
    rn = tl.arange(0, BN)
    start = tl.load(crow_ptr + block_row).to(tl.int64)
    end = tl.load(crow_ptr + block_row + 1).to(tl.int64)
    if IS_INT8:
        acc = tl.zeros([BLOCK_M, BN], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BN], dtype=tl.float32)
    for blk in range(start, end):
        kb = tl.load(col_ptr + blk).to(tl.int64)
        offs_k = kb * BK + rk
        a = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        # values[blk] is [BN, BK] row-major: read it as its transpose [BK, BN].
        b = tl.load(val_ptr + blk * (BN * BK) + rn[None, :] * BK + rk[:, None])
        if IS_INT8:
            acc = tl.dot(a, b, acc=acc, out_dtype=tl.int32)
        elif FP32_IEEE:
            acc = tl.dot(a, b, acc=acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc=acc)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if IS_INT8:
        row_scale = tl.load(row_scale_ptr + offs_m, mask=offs_m < M, other=0.0)
        y = _epilogue(acc, row_scale, w_scale_ptr, bias_ptr, offs_n, N, HAS_BIAS, ACT)
    else:
        ones = tl.full([BLOCK_M], 1.0, tl.float32)
        y = _epilogue(acc, ones, w_scale_ptr, bias_ptr, offs_n, N, HAS_BIAS, ACT)
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)


def _check_bsr(x, crow, col, values, bias, out_features, activation, fn):
    if values.dim() != 3:
        raise ValueError(f"{fn}: values must be [nnzb, BN, BK], got {tuple(values.shape)}")
    BN, BK = values.shape[1], values.shape[2]
    for name, b in (("BN", BN), ("BK", BK)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{fn}: block {name} must be a power of two >= 16, got {b}")
    K = x.shape[-1]
    if out_features % BN or K % BK:
        raise ValueError(f"{fn}: weight [{out_features}, {K}] is not a whole number of "
                         f"{BN}x{BK} blocks")
    if crow.dim() != 1 or crow.numel() != out_features // BN + 1:
        raise ValueError(f"{fn}: crow must have out_features/BN + 1 = {out_features // BN + 1} "
                         f"entries, got {tuple(crow.shape)}")
    if col.dim() != 1 or col.numel() != values.shape[0]:
        raise ValueError(f"{fn}: col must have one entry per block ({values.shape[0]}), got "
                         f"{tuple(col.shape)}")
    if crow.dtype not in (torch.int32, torch.int64) or col.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: crow/col must be int32 or int64, got {crow.dtype}/{col.dtype}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"{fn}: bias must be [{out_features}], got {tuple(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {sorted(ACTIVATIONS)}, got "
                         f"{activation!r}")
    return BN, BK


def _run(x2, crow, col, values, w_scale, row_scale, bias, y, activation, is_int8):
    M, K = x2.shape
    N = y.shape[1]
    BN, BK = values.shape[1], values.shape[2]
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), N // BN)  # noqa: E731
    _bsr_kernel[grid](x2, crow.contiguous(), col.contiguous(), values.contiguous(), w_scale,
                      row_scale, w_scale if bias is None else bias.contiguous(), y, M, N, K,
                      m_bucket(M), IS_INT8=is_int8, HAS_BIAS=bias is not None,
                      ACT=ACTIVATIONS[activation], FP32_IEEE=x2.dtype == torch.float32,
                      BN=BN, BK=BK)


def bsr_linear(x, crow, col, values, bias, out_features: int, activation: str = "none"):
    """x [..., K] @ W^T (+ bias, activation) with W given as BSR blocks; see module docstring."""
    BN, BK = _check_bsr(x, crow, col, values, bias, out_features, activation, "bsr_linear")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or values.dtype != x.dtype:
        raise TypeError(f"bsr_linear: x and values must share one float dtype, got {x.dtype} "
                        f"and {values.dtype}")
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    y = torch.empty((x2.shape[0], out_features), dtype=x.dtype, device=x.device)
    if x2.shape[0] and out_features:
        ones = torch.ones(out_features, dtype=torch.float32, device=x.device)
        _run(x2, crow, col, values, ones, ones, bias, y, activation, is_int8=False)
    return y.reshape(*x.shape[:-1], out_features)


def bsr_int8_linear(x, crow, col, values, w_scale, bias, out_features: int,
                    activation: str = "none"):
    """W8A8 with a block-sparse int8 weight: per-token activation quantization, int32 dot."""
    _check_bsr(x, crow, col, values, bias, out_features, activation, "bsr_int8_linear")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"bsr_int8_linear: x must be float32, float16 or bfloat16, got {x.dtype}")
    if values.dtype != torch.int8 or w_scale.dtype != torch.float32:
        raise TypeError(f"bsr_int8_linear: expected int8 values and float32 w_scale, got "
                        f"{values.dtype} and {w_scale.dtype}")
    if w_scale.shape != (out_features,):
        raise ValueError(f"bsr_int8_linear: w_scale must be [{out_features}], got "
                         f"{tuple(w_scale.shape)}")
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    y = torch.empty((x2.shape[0], out_features), dtype=x.dtype, device=x.device)
    if x2.shape[0] and out_features:
        q, row_scale = quantize_per_row(x2)
        _run(q, crow, col, values, w_scale.contiguous(), row_scale, bias, y, activation,
             is_int8=True)
    return y.reshape(*x.shape[:-1], out_features)
