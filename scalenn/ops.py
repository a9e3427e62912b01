"""The public functional API over torch.ops.scalenn.*: validation with clear errors, then the op.

Everything above this layer (modules, recipes, distributed) calls kernels only through here.
"""
from typing import Tuple

import torch

from . import _C
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


# ---- GPU tensor-core family (issue 6): 2:4 sparse tensor-core linear ----

def sparse24_pack(w: torch.Tensor, convention: str = None):
    """2:4-sparse weight [N, K] (float16/bfloat16/int8; at most 2 non-zeros in every 4
    consecutive K elements) -> (values, meta): the per-lane register images that
    `sparse24_linear` (scalenn::mma_sp24_linear) streams, on w's device. Packing runs on the host
    once per weight; see scalenn/_ops/sparse24_layout.py for the layout."""
    from ._ops.sparse24_layout import pack_sparse24
    values, meta = pack_sparse24(w.detach().cpu(), convention)
    return values.to(w.device), meta.to(w.device)


def sparse24_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, out_features: int,
                    w_scale: torch.Tensor = None, bias: torch.Tensor = None,
                    activation: str = "none") -> torch.Tensor:
    """act(x @ W^T + bias) for a weight packed by `sparse24_pack`. fp16/bf16 weights take x of
    the same dtype; int8 weights take float x (quantized per token) and need w_scale [N]."""
    _check_float(x, "sparse24_linear: x")
    _check_device(x, "sparse24_linear")
    if x.device.type == "cuda" and not _C.build_info()["cuda"]:
        raise ValueError("sparse24_linear: on CUDA tensors it needs scalenn built with "
                         "SCALENN_CUDA=1 (mma.sp has no Triton implementation)")
    return torch.ops.scalenn.mma_sp24_linear(x, values, meta, w_scale, bias, out_features,
                                             activation)


# ---- bucket: gradient buckets for scalenn.distributed (contracts in csrc/ops.cpp) ----

def _check_bucket_grads(grads, fn: str):
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{fn}: grads must be a list of tensors, got {type(grads).__name__}")
    for i, g in enumerate(grads):
        _check_float(g, f"{fn}: grads[{i}]")
        _check_contiguous(g, f"{fn}: grads[{i}]")
        _check_device(g, fn)


def bucket_pack(grads, flat: torch.Tensor, scale: float = 1.0) -> None:
    """flat[o_i:o_i+n_i] = (grads[i].flatten().float() * scale).to(flat.dtype), grads back to
    back from flat[0]; one pass, in place. flat: 1-D float32/bfloat16/float16."""
    _check_bucket_grads(grads, "bucket_pack")
    _check_float(flat, "bucket_pack: flat")
    torch.ops.scalenn.bucket_pack(list(grads), flat, float(scale))


def bucket_unpack(flat: torch.Tensor, grads, scale: float = 1.0) -> None:
    """The reverse of bucket_pack: grads[i][...] = (flat[o_i:o_i+n_i].float() * scale), in place."""
    _check_bucket_grads(grads, "bucket_unpack")
    _check_float(flat, "bucket_unpack: flat")
    torch.ops.scalenn.bucket_unpack(flat, list(grads), float(scale))


def bucket_quantize_int8(grads, residual: torch.Tensor, records: torch.Tensor,
                         scale: float = 1.0) -> None:
    """Int8 quantization with error feedback into wire records (see csrc/ops.cpp): per chunk of
    C = records.shape[1] - 4 values of v = packed(grads) * scale + residual, q and a float32
    scale; residual becomes v - q * s."""
    _check_bucket_grads(grads, "bucket_quantize_int8")
    torch.ops.scalenn.bucket_quantize_int8(list(grads), residual, records, float(scale))


def bucket_dequantize_sum(records: torch.Tensor, out: torch.Tensor) -> None:
    """out = sum over records.shape[0] record arrays of q * s, in float32."""
    torch.ops.scalenn.bucket_dequantize_sum(records, out)


def bucket_unpack_int8(records: torch.Tensor, grads) -> None:
    """grads[i][...] = the sum of the dequantized values of records' W arrays ([W, N, C + 4]),
    fused dequantize(-and-sum) + unpack."""
    _check_bucket_grads(grads, "bucket_unpack_int8")
    torch.ops.scalenn.bucket_unpack_int8(records, list(grads))


def bucket_requantize_int8(records: torch.Tensor, residual: torch.Tensor,
                           out: torch.Tensor) -> None:
    """out = int8 records of (sum over records.shape[0] arrays of q * s) + residual; residual
    becomes what that quantization lost (the reduce-scatter step, one pass)."""
    torch.ops.scalenn.bucket_requantize_int8(records, residual, out)


def shm_post(counters: torch.Tensor, index: int, value: int) -> None:
    """counters[index] = value, a release store (counters live in memory shared between
    processes: scalenn/distributed/shm.py)."""
    torch.ops.scalenn.shm_post(counters, int(index), int(value))


def shm_wait(counters: torch.Tensor, first: int, stride: int, count: int, target: int,
             timeout_s: float) -> int:
    """Wait until counters[first + i * stride] >= target for all i < count; -1 when they did,
    else (after timeout_s) the first i that did not."""
    return torch.ops.scalenn.shm_wait(counters, int(first), int(stride), int(count), int(target),
                                      float(timeout_s))


from .ops_sparse import sparse_linear  # noqa: E402,F401  (sparse family, issue 4)
