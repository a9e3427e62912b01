"""The public functional API over torch.ops.scalenn.*: validation with clear errors, then the op.

Everything above this layer (modules, recipes, distributed) calls kernels only through here.
"""
from typing import Tuple

import torch

from ._ops.gpu_backends import gpu_backend

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_device(t: torch.Tensor, fn: str) -> None:
    if t.device.type in ("cpu", "meta"):
        return
    if t.device.type == "cuda" and gpu_backend() != "none":
        return
    raise ValueError(f"{fn}: scalenn has no kernels for device '{t.device}' in this build "
                     f"(CPU always; CUDA needs scalenn built with SCALENN_CUDA=1 or Triton installed)")


def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def _check_contiguous(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first), got strides "
                         f"{t.stride()} for shape {tuple(t.shape)}")


def quantize_per_row(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row (last dimension) of `x`.

    Returns (q, scale): q int8 with x's shape, scale float32 with shape x.shape[:-1], such that
    x ~= q * scale[..., None]. scale = max|row| / 127; q = round-half-even(x * 127 / max|row|).
    An all-zero row gives scale 0. A row holding NaN or Inf gives scale NaN and q 0 (its
    dequantized values are NaN); other rows are unaffected.
    """
    _check_float(x, "quantize_per_row: x")
    if x.dim() < 1:
        raise ValueError(f"quantize_per_row: x must have at least 1 dimension, got a 0-D tensor")
    _check_contiguous(x, "quantize_per_row: x")
    _check_device(x, "quantize_per_row")
    lead = x.shape[:-1]
    q, scale = torch.ops.scalenn.quantize_per_row(x.reshape(-1, x.shape[-1]))
    return q.reshape(x.shape), scale.reshape(lead)


def dequantize_per_row(q: torch.Tensor, scale: torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of quantize_per_row: q * scale[..., None], returned as `dtype`."""
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        raise TypeError(f"dequantize_per_row: q must be an int8 tensor, got "
                        f"{getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
        raise TypeError(f"dequantize_per_row: scale must be a float32 tensor, got "
                        f"{getattr(scale, 'dtype', type(scale).__name__)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dequantize_per_row: dtype must be float32, bfloat16 or float16, got {dtype}")
    if q.dim() < 1 or tuple(scale.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"dequantize_per_row: scale must have shape q.shape[:-1] = "
                         f"{tuple(q.shape[:-1])}, got {tuple(scale.shape)}")
    _check_contiguous(q, "dequantize_per_row: q")
    _check_device(q, "dequantize_per_row")
    if scale.device != q.device:
        raise ValueError(f"dequantize_per_row: q and scale must be on one device, got {q.device} "
                         f"and {scale.device}")
    y = torch.ops.scalenn.dequantize_per_row(q.reshape(-1, q.shape[-1]),
                                             scale.reshape(-1).contiguous(), dtype)
    return y.reshape(q.shape)


from .ops_sparse import sparse_linear  # noqa: E402,F401  (sparse family, issue 4)
