"""Gradient buckets in Triton: the CUDA implementation of the scalenn::bucket_* ops of
scalenn.distributed (schemas and contracts: csrc/ops.cpp "bucket" block, csrc/cpu/bucket_kernels.h;
plain-PyTorch references: scalenn/_ops/bucket.py). Bit-identical to the references: all math in
float32, round to nearest even on every cast, no fused multiply-add (enable_fp_fusion=False).

Layout: grads[i] occupies flat[o_i, o_i + n_i), o_i = n_0 + ... + n_{i-1}. Copies between the
grads and a flat buffer are split into pieces of at most PIECE elements that never cross a
tensor; piece p is one program, and a small table (source address, flat offset, length) tells it
where to read and write, so any number of tensors is ONE launch per distinct grad dtype (grads of
a bucket may mix float32/bfloat16/float16; each dtype needs its own typed pointer).

int8 wire records (bucket_quantize_int8 etc.): uint8 [N, C + 4]; record c holds the C int8 values
of chunk c (flat [c*C, (c+1)*C)), then the chunk's float32 scale as 4 little-endian bytes. C is
any size >= 1 and records are not 4-byte aligned, so the scale is stored and loaded bytewise.

- bucket_pack(grads, flat, scale): flat[o_i + j] = cast(float(grads[i][j]) * scale).
- bucket_unpack(flat, grads, scale): grads[i][j] = cast(float(flat[o_i + j]) * scale).
- bucket_quantize_int8(grads, residual, records, scale): v = grads * scale + residual (built in
  residual by the piece kernel), then one program per chunk quantizes v: s = amax/127,
  q = clamp(round_half_even(v * (127/amax))), residual = v - q*s; NaN/Inf in the chunk: s NaN,
  q 0, residual 0.
- bucket_dequantize_sum(records [W, N, C+4], out): out = sum_w q_w * s_w (w in order, from +0).
- bucket_unpack_int8 / bucket_requantize_int8: dequantize_sum into a float32 scratch buffer,
  then bucket_unpack (scale 1) / the chunk quantizer, which is exactly how their contracts are
  defined; an extra pass over N*C floats compared with a fused kernel.
"""
import torch
import triton
import triton.language as tl

from . import interpreting
from .quantize import _FLT_MAX, _ROUND_MAGIC

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PIECE = 2048  # elements per copy program (a tensor's last piece is partial)
_TABLE_CACHE = {}
_TABLE_CACHE_MAX = 64


def _opts():
    # No FMA contraction on GPUs (the contract); the interpreter never fuses and takes no option.
    return {} if interpreting() else {"enable_fp_fusion": False}


# ------------------------------------ piece kernels ------------------------------------------
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
def _accumulate_kernel(src_addr_ptr, dst_off_ptr, len_ptr, src_ref_ptr, residual_ptr, scale,
                       CHUNK: tl.constexpr):
    # residual[off + j] = float(grad[j]) * scale + residual[off + j]: v of the int8 contract.
    c = tl.program_id(0)
    src = tl.load(src_addr_ptr + c).to(tl.pointer_type(src_ref_ptr.dtype.element_ty))
    dst = residual_ptr + tl.load(dst_off_ptr + c)
    n = tl.load(len_ptr + c)
    offs = tl.arange(0, CHUNK)
    p = tl.load(src + offs, mask=offs < n, other=0.0).to(tl.float32) * scale
    r = tl.load(dst + offs, mask=offs < n, other=0.0)
    tl.store(dst + offs, p + r, mask=offs < n)


# ------------------------------------ chunk kernels ------------------------------------------
@triton.jit
def _load_scale(rec_u8_ptr):
    """The float32 stored as 4 little-endian bytes at rec_u8_ptr (any alignment)."""
    b0 = tl.load(rec_u8_ptr).to(tl.uint32)
    b1 = tl.load(rec_u8_ptr + 1).to(tl.uint32)
    b2 = tl.load(rec_u8_ptr + 2).to(tl.uint32)
    b3 = tl.load(rec_u8_ptr + 3).to(tl.uint32)
    bits = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _quantize_chunk_kernel(residual_ptr, rec_q_ptr, rec_u8_ptr, C, BLOCK: tl.constexpr):
    # One program per chunk of C values of v (held in residual): max |v|, then quantize and leave
    # the error feedback v - q*s in residual.
    c = tl.program_id(0).to(tl.int64)
    r_ptr = residual_ptr + c * C
    rec = c * (C + 4)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        a = tl.abs(tl.load(r_ptr + offs, mask=offs < C, other=0.0))
        bad = tl.maximum(bad, tl.where(a <= _FLT_MAX, 0, 1))
        amax = tl.maximum(amax, tl.where(a <= _FLT_MAX, a, 0.0))
    chunk_amax = tl.max(amax, axis=0)
    finite = tl.max(bad, axis=0) == 0
    s = tl.where(finite, tl.math.div_rn(chunk_amax, 127.0), float("nan"))
    safe = tl.where(chunk_amax > 0.0, chunk_amax, 1.0)
    inv = tl.where(finite & (chunk_amax > 0.0), tl.math.div_rn(127.0, safe), 0.0)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(r_ptr + offs, mask=offs < C, other=0.0)
        # A poisoned chunk quantizes zeros (inf * 0 would be NaN); finite chunks are unchanged.
        x = tl.where(finite, v, 0.0) * inv
        t = (x + _ROUND_MAGIC) - _ROUND_MAGIC  # exact half-to-even for |x| <= 127 (+ rounding)
        # The magic yields +0 where rint gives -0 (x in [-0.5, -0]); the sign of that zero
        # reaches the residual (v - (-0)*s), so restore it: x * 0 is a zero with x's sign.
        t = tl.where(t == 0.0, x * 0.0, t)
        t = tl.minimum(tl.maximum(t, -127.0), 127.0)
        lost = t * s
        tl.store(rec_q_ptr + rec + offs, t.to(tl.int8), mask=offs < C)
        tl.store(r_ptr + offs, tl.where(finite, v - lost, 0.0), mask=offs < C)
    bits = s.to(tl.uint32, bitcast=True)
    k = tl.arange(0, 4)
    tl.store(rec_u8_ptr + rec + C + k, ((bits >> (k * 8).to(tl.uint32)) & 255).to(tl.uint8))


@triton.jit
def _dequantize_sum_kernel(rec_q_ptr, rec_u8_ptr, out_ptr, W, stride, C, BLOCK: tl.constexpr):
    # stride = N * (C + 4) bytes from one record array (one rank) to the next; i64 when large.
    c = tl.program_id(0).to(tl.int64)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        rec = c * (C + 4)  # int64
        for w in range(0, W):
            s = _load_scale(rec_u8_ptr + rec + C)
            q = tl.load(rec_q_ptr + rec + offs, mask=offs < C, other=0)
            acc = acc + q.to(tl.float32) * s
            rec += stride
        tl.store(out_ptr + c * C + offs, acc, mask=offs < C)


# ------------------------------------ host side ----------------------------------------------
def chunk_table(numels, chunk: int):
    """Pure layout arithmetic (no device): per piece (tensor index, element offset inside the
    tensor, flat offset, length). Returns int64 CPU tensors; tensors of numel 0 get no piece."""
    numels = torch.as_tensor(list(numels), dtype=torch.int64)
    flat_start = torch.cumsum(numels, 0) - numels
    per = (numels + chunk - 1) // chunk
    tensor_idx = torch.repeat_interleave(torch.arange(len(numels)), per)
    first_chunk = torch.cumsum(per, 0) - per
    within = (torch.arange(int(per.sum())) - first_chunk[tensor_idx]) * chunk
    length = torch.minimum(numels[tensor_idx] - within, torch.tensor(chunk))
    return tensor_idx, within, flat_start[tensor_idx] + within, length


def _tables(grads, chunk=PIECE):
    """[(reference tensor of the dtype, addr, flat offset, length, n_pieces)] per grad dtype, on
    the grads' device. Cached by addresses and sizes: a bucket packed every step builds it once."""
    key = (tuple(g.data_ptr() for g in grads), tuple(g.numel() for g in grads),
           tuple(g.dtype for g in grads), chunk, grads[0].device)
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        return hit
    tensor_idx, within, flat_off, length = chunk_table([g.numel() for g in grads], chunk)
    base = torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64)
    esize = torch.tensor([g.element_size() for g in grads], dtype=torch.int64)
    addr = base[tensor_idx] + within * esize[tensor_idx]
    dev = grads[0].device
    out = []
    for dtype in FLOAT_DTYPES:
        members = [i for i, g in enumerate(grads) if g.dtype == dtype]
        if not members:
            continue
        sel = torch.isin(tensor_idx, torch.tensor(members))
        n = int(sel.sum())
        if n:
            out.append((grads[members[0]], addr[sel].to(dev), flat_off[sel].to(dev),
                        length[sel].to(dev), n))
    if len(_TABLE_CACHE) >= _TABLE_CACHE_MAX:
        _TABLE_CACHE.clear()
    _TABLE_CACHE[key] = out
    return out


def _check_grads(grads, device, fn):
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{fn}: grads must be a list of tensors, got {type(grads).__name__}")
    for i, g in enumerate(grads):
        if g.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{fn}: grads[{i}] must be float32, bfloat16 or float16, got "
                            f"{g.dtype}")
        if not g.is_contiguous():
            raise ValueError(f"{fn}: grads[{i}] must be contiguous, got strides {g.stride()}")
        if g.device != device:
            raise ValueError(f"{fn}: grads[{i}] is on {g.device}, expected {device}")
    return sum(g.numel() for g in grads)


def _check_1d(t, name, dtypes, fn):
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn}: {name} must be {names}, got {t.dtype}")
    if t.dim() != 1 or not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous 1-D, got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


def _records_chunk(records, dim, fn, name="records"):
    """C of records uint8 [..., N, C + 4] with `dim` + 1 dimensions."""
    if records.dtype != torch.uint8:
        raise TypeError(f"{fn}: {name} must be uint8, got {records.dtype}")
    if records.dim() != dim + 1 or records.shape[-1] <= 4 or not records.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous {dim + 1}-D with last dimension "
                         f"C + 4 (C >= 1 int8 values, then a float32 scale), got shape "
                         f"{tuple(records.shape)}")
    return records.shape[-1] - 4


def _block(C):
    return min(triton.next_power_of_2(max(int(C), 16)), 1024)


def _copy_in(kernel, grads, dst, scale):
    for ref, addr, off, length, n in _tables(grads):
        kernel[(n,)](addr, off, length, ref, dst, float(scale), CHUNK=PIECE, **_opts())


def bucket_pack(grads, flat, scale):
    """flat[o_i:o_i+n_i] = (grads[i].flatten().float() * scale).to(flat.dtype); rest untouched."""
    total = _check_grads(grads, flat.device, "bucket_pack")
    _check_1d(flat, "flat", FLOAT_DTYPES, "bucket_pack")
    if flat.numel() < total:
        raise ValueError(f"bucket_pack: flat must hold at least the {total} elements of the "
                         f"gradients, got {flat.numel()}")
    if total:
        _copy_in(_pack_kernel, grads, flat, scale)


def bucket_unpack(flat, grads, scale):
    """grads[i] = (flat[o_i:o_i+n_i].float() * scale).to(grads[i].dtype), in place."""
    total = _check_grads(grads, flat.device, "bucket_unpack")
    _check_1d(flat, "flat", FLOAT_DTYPES, "bucket_unpack")
    if flat.numel() < total:
        raise ValueError(f"bucket_unpack: flat must hold at least the {total} elements of the "
                         f"gradients, got {flat.numel()}")
    if total:
        _copy_in(_unpack_kernel, grads, flat, scale)


def _quantize_into(residual, records, C):
    N = records.shape[0]
    if N:
        _quantize_chunk_kernel[(N,)](residual, records.view(torch.int8), records, C,
                                     BLOCK=_block(C), **_opts())


def _check_residual(residual, records, C, fn):
    _check_1d(residual, "residual", (torch.float32,), fn)
    if residual.numel() != records.shape[-2] * C:
        raise ValueError(f"{fn}: residual must have records.shape[-2] * C = "
                         f"{records.shape[-2] * C} elements, got {residual.numel()}")
    if residual.device != records.device:
        raise ValueError(f"{fn}: residual is on {residual.device}, records on {records.device}")


def bucket_quantize_int8(grads, residual, records, scale):
    """v = packed(grads) * scale + residual -> int8 records, residual = v - q*s (error feedback)."""
    fn = "bucket_quantize_int8"
    C = _records_chunk(records, 1, fn)
    _check_residual(residual, records, C, fn)
    total = _check_grads(grads, residual.device, fn)
    if total > residual.numel():
        raise ValueError(f"{fn}: the gradients' {total} elements do not fit in "
                         f"{records.shape[0]} chunks of {C}")
    if total:
        _copy_in(_accumulate_kernel, grads, residual, scale)
    _quantize_into(residual, records, C)


def bucket_dequantize_sum(records, out):
    """out float32 [N*C] = sum over w of q_w * s_w for records uint8 [W, N, C+4]."""
    fn = "bucket_dequantize_sum"
    C = _records_chunk(records, 2, fn)
    W, N = records.shape[0], records.shape[1]
    _check_1d(out, "out", (torch.float32,), fn)
    if out.numel() != N * C or out.device != records.device:
        raise ValueError(f"{fn}: out must have records.shape[1] * C = {N * C} elements on "
                         f"{records.device}, got {out.numel()} on {out.device}")
    if N:
        _dequantize_sum_kernel[(N,)](records.view(torch.int8), records, out, W, N * (C + 4), C,
                                     BLOCK=_block(C), **_opts())


def bucket_unpack_int8(records, grads):
    """grads[i] = bucket_dequantize_sum(records)[o_i:o_i+n_i] cast to grads[i].dtype."""
    fn = "bucket_unpack_int8"
    C = _records_chunk(records, 2, fn)
    total = _check_grads(grads, records.device, fn)
    N = records.shape[1]
    if total > N * C:
        raise ValueError(f"{fn}: the gradients' {total} elements exceed the {N} chunks of {C} "
                         f"in records")
    if not total:
        return
    flat = torch.empty(N * C, dtype=torch.float32, device=records.device)
    bucket_dequantize_sum(records, flat)
    bucket_unpack(flat, grads, 1.0)


def bucket_requantize_int8(records, residual, out):
    """v = bucket_dequantize_sum(records) + residual, quantized into out; residual = what it lost."""
    fn = "bucket_requantize_int8"
    C = _records_chunk(records, 2, fn)
    _check_residual(residual, records, C, fn)
    N = records.shape[1]
    if _records_chunk(out, 1, fn, "out") != C or out.shape[0] != N:
        raise ValueError(f"{fn}: out must have shape [{N}, {C + 4}] (one record per chunk), got "
                         f"{tuple(out.shape)}")
    if out.device != records.device:
        raise ValueError(f"{fn}: out is on {out.device}, records on {records.device}")
    total = torch.empty(N * C, dtype=torch.float32, device=records.device)
    bucket_dequantize_sum(records, total)
    bucket_quantize_int8([total], residual, out, 1.0)
