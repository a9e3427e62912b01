"""GPU tensor-core family (mma_sp24_linear, bucket_pack_cast/unpack_cast, bucket_pack_q8/
unpack_q8): plain-PyTorch references (the test oracle and the CPU implementation), fake kernels.

The CUDA implementations are csrc/cuda/{sparse24,bucket}_cuda.cpp (SCALENN_CUDA builds) and,
for the bucket ops, the Triton kernels in kernels/bucket_pack.py (see gpu_backends.py).
"""
import torch
import torch.nn.functional as F

from .quantize import quantize_per_row_reference
from .sparse24_layout import unpack_sparse24

ACTIVATIONS = ("none", "relu", "gelu")


def _activate(y, activation):
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return F.gelu(y)
    return y


def _check_activation(activation, op):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def mma_sp24_linear_reference(x, values, meta, w_scale, bias, out_features, activation):
    """act(x @ W^T + bias) with W decoded from the 2:4 register images.

    fp16/bf16 values: x in the same dtype, float32 products and sums, output x.dtype.
    int8 values: x (any float dtype) quantized per token by the quantize_per_row contract, exact
    integer dot products, then acc * s_x[m] * w_scale[n] (+ bias) in float32, output x.dtype."""
    _check_activation(activation, "mma_sp24_linear")
    K = x.shape[-1]
    w = unpack_sparse24(values.cpu(), meta.cpu(), int(out_features), K)
    x2 = x.reshape(-1, K).cpu()
    if values.dtype == torch.int8:
        if w_scale is None:
            raise ValueError("mma_sp24_linear: int8 values need w_scale")
        q, s = quantize_per_row_reference(x2)
        acc = q.to(torch.int64) @ w.to(torch.int64).t()
        y = acc.to(torch.float32) * s[:, None] * w_scale.cpu().float()[None, :]
    else:
        if values.dtype != x.dtype:
            raise TypeError(f"mma_sp24_linear: values must be int8 or x's dtype ({x.dtype}), "
                            f"got {values.dtype}")
        y = x2.float() @ w.float().t()
    if bias is not None:
        y = y + bias.cpu().float()[None, :]
    y = _activate(y, activation)
    return y.to(x.dtype).reshape(*x.shape[:-1], int(out_features)).to(x.device)


def _check_bucket(tensors, op):
    if len(tensors) == 0:
        raise ValueError(f"{op}: tensors must be a non-empty list")
    first = tensors[0]
    for i, t in enumerate(tensors):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16) or t.dtype != first.dtype:
            raise TypeError(f"{op}: tensors must share one float dtype; tensors[0] is "
                            f"{first.dtype}, tensors[{i}] is {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: tensors must be contiguous; tensors[{i}] is not")


def bucket_pack_cast_reference(tensors, scale, dtype):
    _check_bucket(tensors, "bucket_pack_cast")
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    return (flat * scale).to(dtype)


def bucket_unpack_cast_reference(flat, tensors, scale):
    _check_bucket(tensors, "bucket_unpack_cast")
    total = sum(t.numel() for t in tensors)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"bucket_unpack_cast: flat must be 1-D with {total} elements, got "
                         f"{tuple(flat.shape)}")
    for t, seg in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
        t.copy_((seg.float() * scale).to(t.dtype).view(t.shape))


def _chunks_of(t, chunk):
    v = t.reshape(-1).float()
    pad = (-v.numel()) % chunk
    return torch.cat([v, v.new_zeros(pad)]).reshape(-1, chunk)


def _check_chunk(chunk, op):
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"{op}: chunk must be a power of two >= 16, got {chunk}")


def bucket_pack_q8_reference(tensors, scale, chunk):
    _check_bucket(tensors, "bucket_pack_q8")
    _check_chunk(chunk, "bucket_pack_q8")
    qs, ss = [], []
    for t in tensors:
        if t.numel() == 0:
            continue
        q, s = quantize_per_row_reference(_chunks_of(t, chunk) * scale)
        qs.append(q.reshape(-1)[: t.numel()])
        ss.append(s)
    dev = tensors[0].device
    if not qs:
        return torch.empty(0, dtype=torch.int8, device=dev), torch.empty(0, device=dev)
    return torch.cat(qs), torch.cat(ss)


def bucket_unpack_q8_reference(q, chunk_scales, tensors, scale, chunk):
    _check_bucket(tensors, "bucket_unpack_q8")
    _check_chunk(chunk, "bucket_unpack_q8")
    numels = [t.numel() for t in tensors]
    n_chunks = [-(-n // chunk) for n in numels]
    if q.numel() != sum(numels) or chunk_scales.numel() != sum(n_chunks):
        raise ValueError(f"bucket_unpack_q8: expected q [{sum(numels)}] and chunk_scales "
                         f"[{sum(n_chunks)}], got {tuple(q.shape)} and "
                         f"{tuple(chunk_scales.shape)}")
    for t, qs, ss in zip(tensors, torch.split(q, numels), torch.split(chunk_scales, n_chunks)):
        if t.numel() == 0:
            continue
        per = (ss * scale).repeat_interleave(chunk)[: t.numel()]
        t.copy_((qs.float() * per).to(t.dtype).view(t.shape))


# CPU implementations are the references.
torch.library.register_kernel("scalenn::mma_sp24_linear", "cpu", mma_sp24_linear_reference)
torch.library.register_kernel("scalenn::bucket_pack_cast", "cpu", bucket_pack_cast_reference)
torch.library.register_kernel("scalenn::bucket_unpack_cast", "cpu", bucket_unpack_cast_reference)
torch.library.register_kernel("scalenn::bucket_pack_q8", "cpu", bucket_pack_q8_reference)
torch.library.register_kernel("scalenn::bucket_unpack_q8", "cpu", bucket_unpack_q8_reference)


@torch.library.register_fake("scalenn::mma_sp24_linear")
def _mma_sp24_linear_fake(x, values, meta, w_scale, bias, out_features, activation):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("scalenn::bucket_pack_cast")
def _bucket_pack_cast_fake(tensors, scale, dtype):
    return tensors[0].new_empty((sum(t.numel() for t in tensors),), dtype=dtype)


@torch.library.register_fake("scalenn::bucket_unpack_cast")
def _bucket_unpack_cast_fake(flat, tensors, scale):
    return None


@torch.library.register_fake("scalenn::bucket_pack_q8")
def _bucket_pack_q8_fake(tensors, scale, chunk):
    total = sum(t.numel() for t in tensors)
    n_chunks = sum(-(-t.numel() // chunk) for t in tensors)
    return (tensors[0].new_empty((total,), dtype=torch.int8),
            tensors[0].new_empty((n_chunks,), dtype=torch.float32))


@torch.library.register_fake("scalenn::bucket_unpack_q8")
def _bucket_unpack_q8_fake(q, chunk_scales, tensors, scale, chunk):
    return None
