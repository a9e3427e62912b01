"""Gradient-bucket pack/unpack in Triton: many tensors <-> one flat buffer in ONE launch.

Layout: tensor i occupies [offset_i, offset_i + numel_i) of the flat buffer, in list order (the
same as torch.cat of the flattened tensors). The work is split into chunks of CHUNK elements that
never cross a tensor boundary (the last chunk of each tensor is partial); chunk c is one program.
A small per-chunk table (source address, flat offset, length) tells each program where to read
and write, so any number of tensors is one kernel launch, read once and written once.

- bucket_pack(tensors, scale, dtype): flat = cat(t.flatten()) * scale, cast to dtype
  (float32/bfloat16/float16); the multiply is in float32.
- bucket_unpack(buffer, tensors, scale): tensors[i] <- buffer[segment i] * scale (float32
  arithmetic, cast to the tensor dtype), in place.
- bucket_pack_int8 / bucket_unpack_int8: the same chunks, each quantized with its own scale by the
  per-row int8 contract of `scalenn::quantize_per_row` applied to (x * scale): chunk scale =
  amax/127, q = round_half_even(v * 127/amax); a chunk holding NaN/Inf gets scale NaN and q 0, so
  it unpacks to NaN (a poisoned gradient is visible, never silently zero).

The chunk tables depend only on the tensors' addresses and sizes; they are cached, so a bucket
that is packed every step pays for building them once.
"""
import torch
import triton
import triton.language as tl

from . import interpreting
from .quantize import _FLT_MAX, _ROUND_MAGIC

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEFAULT_CHUNK = 2048
_TABLE_CACHE = {}
_TABLE_CACHE_MAX = 64


@triton.jit
def _pack_kernel(src_addr_ptr, dst_off_ptr, len_ptr, src_ref_ptr, dst_ptr, scale,
                 CHUNK: tl.constexpr):
    c = tl.program_id(0)
    src = tl.load(src_addr_ptr + c).to(tl.pointer_type(src_ref_ptr.dtype.element_ty))
    dst_off = tl.load(dst_off_ptr + c)
    n = tl.load(len_ptr + c)
    offs = tl.arange(0, CHUNK)
    v = tl.load(src + offs, mask=offs < n, other=0.0).to(tl.float32) * scale
    tl.store(dst_ptr + dst_off + offs, v.to(dst_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def _unpack_kernel(dst_addr_ptr, src_off_ptr, len_ptr, dst_ref_ptr, src_ptr, scale,
                   CHUNK: tl.constexpr):
    c = tl.program_id(0)
    dst = tl.load(dst_addr_ptr + c).to(tl.pointer_type(dst_ref_ptr.dtype.element_ty))
    src_off = tl.load(src_off_ptr + c)
    n = tl.load(len_ptr + c)
    offs = tl.arange(0, CHUNK)
    v = tl.load(src_ptr + src_off + offs, mask=offs < n, other=0.0).to(tl.float32) * scale
    tl.store(dst + offs, v.to(dst_ref_ptr.dtype.element_ty), mask=offs < n)


@triton.jit
def _pack_int8_kernel(src_addr_ptr, dst_off_ptr, len_ptr, src_ref_ptr, q_ptr, qscale_ptr, scale,
                      CHUNK: tl.constexpr):
    c = tl.program_id(0)
    src = tl.load(src_addr_ptr + c).to(tl.pointer_type(src_ref_ptr.dtype.element_ty))
    dst_off = tl.load(dst_off_ptr + c)
    n = tl.load(len_ptr + c)
    offs = tl.arange(0, CHUNK)
    v = tl.load(src + offs, mask=offs < n, other=0.0).to(tl.float32) * scale
    a = tl.abs(v)
    finite = tl.max(tl.where(a <= _FLT_MAX, 0, 1), axis=0) == 0
    amax = tl.max(tl.where(a <= _FLT_MAX, a, 0.0), axis=0)
    tl.store(qscale_ptr + c, tl.where(finite, tl.math.div_rn(amax, 127.0), float("nan")))
    safe = tl.where(amax > 0.0, amax, 1.0)
    inv = tl.where(finite & (amax > 0.0), tl.math.div_rn(127.0, safe), 0.0)
    r = (v * inv + _ROUND_MAGIC) - _ROUND_MAGIC
    r = tl.where(finite, tl.minimum(tl.maximum(r, -127.0), 127.0), 0.0)
    tl.store(q_ptr + dst_off + offs, r.to(tl.int8), mask=offs < n)


@triton.jit
def _unpack_int8_kernel(dst_addr_ptr, src_off_ptr, len_ptr, dst_ref_ptr, q_ptr, qscale_ptr, scale,
                        CHUNK: tl.constexpr):
    c = tl.program_id(0)
    dst = tl.load(dst_addr_ptr + c).to(tl.pointer_type(dst_ref_ptr.dtype.element_ty))
    src_off = tl.load(src_off_ptr + c)
    n = tl.load(len_ptr + c)
    s = tl.load(qscale_ptr + c) * scale
    offs = tl.arange(0, CHUNK)
    q = tl.load(q_ptr + src_off + offs, mask=offs < n, other=0)
    tl.store(dst + offs, (q.to(tl.float32) * s).to(dst_ref_ptr.dtype.element_ty), mask=offs < n)


def chunk_table(numels, chunk: int):
    """Pure layout arithmetic (no device): per chunk (tensor index, element offset inside the
    tensor, flat offset, length). Returns int64 CPU tensors; tensors of numel 0 get no chunk."""
    numels = torch.as_tensor(list(numels), dtype=torch.int64)
    flat_start = torch.cumsum(numels, 0) - numels
    per = (numels + chunk - 1) // chunk
    tensor_idx = torch.repeat_interleave(torch.arange(len(numels)), per)
    first_chunk = torch.cumsum(per, 0) - per
    within = (torch.arange(int(per.sum())) - first_chunk[tensor_idx]) * chunk
    length = torch.minimum(numels[tensor_idx] - within, torch.tensor(chunk))
    return tensor_idx, within, flat_start[tensor_idx] + within, length


def _tables(tensors, chunk):
    key = (tuple(t.data_ptr() for t in tensors), tuple(t.numel() for t in tensors),
           tensors[0].dtype, chunk, tensors[0].device)
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        return hit
    tensor_idx, within, flat_off, length = chunk_table([t.numel() for t in tensors], chunk)
    base = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    addr = base[tensor_idx] + within * tensors[0].element_size()
    dev = tensors[0].device
    out = (addr.to(dev), flat_off.to(dev), length.to(dev), int(length.numel()))
    if len(_TABLE_CACHE) >= _TABLE_CACHE_MAX:
        _TABLE_CACHE.clear()
    _TABLE_CACHE[key] = out
    return out


def _check_tensors(tensors, fn):
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError(f"{fn}: tensors must be a non-empty list of tensors, got {tensors!r:.80}")
    first = tensors[0]
    for i, t in enumerate(tensors):
        if t.dtype not in FLOAT_DTYPES or t.dtype != first.dtype:
            raise TypeError(f"{fn}: tensors must all be one float dtype (float32, bfloat16 or "
                            f"float16); tensors[0] is {first.dtype}, tensors[{i}] is {t.dtype}")
        if not t.is_contiguous() or t.device != first.device:
            raise ValueError(f"{fn}: tensors must be contiguous and on one device; tensors[{i}] "
                             f"is on {t.device} with strides {t.stride()}")


def _check_chunk(chunk):
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")


def total_numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def bucket_pack(tensors, scale: float, dtype: torch.dtype, *, chunk: int = DEFAULT_CHUNK):
    """cat(t.flatten() for t in tensors) * scale as `dtype`, one launch."""
    _check_tensors(tensors, "bucket_pack")
    _check_chunk(chunk)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"bucket_pack: dtype must be float32, bfloat16 or float16, got {dtype}")
    out = torch.empty(total_numel(tensors), dtype=dtype, device=tensors[0].device)
    addr, off, length, n_chunks = _tables(tensors, chunk)
    if n_chunks:
        _pack_kernel[(n_chunks,)](addr, off, length, tensors[0], out, float(scale), CHUNK=chunk)
    return out


def bucket_unpack(buffer, tensors, scale: float, *, chunk: int = DEFAULT_CHUNK) -> None:
    """tensors[i].copy_(buffer[segment i] * scale), in place, one launch."""
    _check_tensors(tensors, "bucket_unpack")
    _check_chunk(chunk)
    _check_buffer(buffer, tensors, "bucket_unpack", FLOAT_DTYPES)
    addr, off, length, n_chunks = _tables(tensors, chunk)
    if n_chunks:
        _unpack_kernel[(n_chunks,)](addr, off, length, tensors[0], buffer, float(scale),
                                    CHUNK=chunk)


def _check_buffer(buffer, tensors, fn, dtypes):
    if buffer.dtype not in dtypes:
        raise TypeError(f"{fn}: buffer dtype must be one of {dtypes}, got {buffer.dtype}")
    if buffer.dim() != 1 or buffer.numel() != total_numel(tensors) or not buffer.is_contiguous():
        raise ValueError(f"{fn}: buffer must be contiguous 1-D with {total_numel(tensors)} "
                         f"elements (the tensors' total), got shape {tuple(buffer.shape)}")
    if buffer.device != tensors[0].device:
        raise ValueError(f"{fn}: buffer is on {buffer.device}, tensors on {tensors[0].device}")


def bucket_pack_int8(tensors, scale: float, chunk: int = DEFAULT_CHUNK):
    """-> (q int8 [total], chunk_scales float32 [n_chunks]); see the module docstring."""
    _check_tensors(tensors, "bucket_pack_int8")
    _check_chunk(chunk)
    dev = tensors[0].device
    q = torch.empty(total_numel(tensors), dtype=torch.int8, device=dev)
    addr, off, length, n_chunks = _tables(tensors, chunk)
    qscale = torch.empty(n_chunks, dtype=torch.float32, device=dev)
    if n_chunks:
        opts = {} if interpreting() else {"enable_fp_fusion": False}
        _pack_int8_kernel[(n_chunks,)](addr, off, length, tensors[0], q, qscale, float(scale),
                                       CHUNK=chunk, **opts)
    return q, qscale


def bucket_unpack_int8(q, chunk_scales, tensors, scale: float, chunk: int = DEFAULT_CHUNK):
    """tensors[i] <- dequantized segment i * scale, in place, one launch."""
    _check_tensors(tensors, "bucket_unpack_int8")
    _check_chunk(chunk)
    _check_buffer(q, tensors, "bucket_unpack_int8", (torch.int8,))
    addr, off, length, n_chunks = _tables(tensors, chunk)
    if chunk_scales.dtype != torch.float32 or chunk_scales.shape != (n_chunks,):
        raise ValueError(f"bucket_unpack_int8: chunk_scales must be float32 [{n_chunks}], got "
                         f"{chunk_scales.dtype} {tuple(chunk_scales.shape)}")
    if n_chunks:
        _unpack_int8_kernel[(n_chunks,)](addr, off, length, tensors[0], q,
                                         chunk_scales.contiguous(), float(scale), CHUNK=chunk)


# Launchers named and shaped exactly like the op schemas (csrc/ops.cpp, GPU family), so that
# scalenn/_ops/gpu_backends.py can register them for CUDA after checking the argument names.
def bucket_pack_cast(tensors, scale, dtype):
    return bucket_pack(tensors, scale, dtype)


def bucket_unpack_cast(flat, tensors, scale):
    bucket_unpack(flat, tensors, scale)


def bucket_pack_q8(tensors, scale, chunk):
    return bucket_pack_int8(tensors, scale, chunk)


def bucket_unpack_q8(q, chunk_scales, tensors, scale, chunk):
    bucket_unpack_int8(q, chunk_scales, tensors, scale, chunk)
