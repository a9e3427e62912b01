"""bucket_pack / bucket_unpack / bucket_quantize_int8 / bucket_dequantize_sum: plain-PyTorch
references (the test oracle) and fake kernels. The contracts are in csrc/ops.cpp's schema
comments and csrc/cpu/bucket_kernels.h: all arithmetic in float32, round to nearest even on
every cast, no fused multiply-add.

Layout: gradient i of a bucket occupies flat elements [o_i, o_i + n_i), o_i = n_0 + ... + n_{i-1}.
int8 wire records: one per chunk of C values, C int8 values followed by the float32 scale.
"""
from typing import List, Tuple

import torch

QMAX = 127.0


def _f32(scale: float) -> torch.Tensor:
    # The kernels multiply by float(scale) in fp32; make the reference do exactly that.
    return torch.tensor(scale, dtype=torch.float32)


def bucket_pack_reference(grads: List[torch.Tensor], flat: torch.Tensor, scale: float) -> None:
    o = 0
    for g in grads:
        n = g.numel()
        flat[o:o + n] = (g.reshape(-1).float() * _f32(scale)).to(flat.dtype)
        o += n


def bucket_unpack_reference(flat: torch.Tensor, grads: List[torch.Tensor], scale: float) -> None:
    o = 0
    for g in grads:
        n = g.numel()
        g.copy_((flat[o:o + n].float() * _f32(scale)).to(g.dtype).view(g.shape))
        o += n


def quantize_chunks_reference(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v float32 [N, C] -> (q int8 [N, C], s float32 [N], residual float32 [N, C])."""
    amax = v.abs().amax(dim=1) if v.shape[1] else v.new_zeros(v.shape[0])
    finite = torch.isfinite(amax)
    s = torch.where(finite, amax / QMAX, torch.full_like(amax, float("nan")))
    nz = finite & (amax > 0)
    inv = torch.where(nz, torch.full_like(amax, QMAX) / torch.where(nz, amax, torch.ones_like(amax)),
                      torch.zeros_like(amax))
    q = torch.round(v * inv[:, None]).clamp_(-QMAX, QMAX)
    q = torch.where(finite[:, None], q, torch.zeros_like(q))
    residual = torch.where(finite[:, None], v - q * s[:, None], torch.zeros_like(v))
    return q.to(torch.int8), s, residual


def records_from(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[N, C] int8 + [N] float32 -> [N, C + 4] uint8 wire records."""
    return torch.cat([q.view(torch.uint8), s.reshape(-1, 1).contiguous().view(torch.uint8)], dim=1)


def records_split(records: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[..., N, C + 4] uint8 -> (q int8 [..., N, C], s float32 [..., N])."""
    q = records[..., :-4].contiguous().view(torch.int8)
    s = records[..., -4:].contiguous().view(torch.float32).squeeze(-1)
    return q, s


def bucket_quantize_int8_reference(grads: List[torch.Tensor], residual: torch.Tensor,
                                   records: torch.Tensor, scale: float) -> None:
    """residual: float32 [N * C], or uint8 records [N, C + 4] (the residual quantized per
    chunk, read as its dequantization and stored as a record of its own)."""
    N, C = records.shape[0], records.shape[1] - 4
    as_records = residual.dtype == torch.uint8
    if as_records:
        v = torch.empty(N * C)
        bucket_dequantize_sum_reference(residual[None], v)
    else:
        v = residual.clone()
    o = 0
    for g in grads:
        n = g.numel()
        v[o:o + n] = g.reshape(-1).float() * _f32(scale) + v[o:o + n]
        o += n
    q, s, r = quantize_chunks_reference(v.view(N, C))
    if as_records:
        residual.copy_(records_from(*quantize_chunks_reference(r)[:2]))
    else:
        residual.copy_(r.reshape(-1))
    records.copy_(records_from(q, s))


def bucket_dequantize_sum_reference(records: torch.Tensor, out: torch.Tensor) -> None:
    q, s = records_split(records)
    acc = torch.zeros(q.shape[1:], dtype=torch.float32)
    for w in range(q.shape[0]):
        acc = acc + q[w].float() * s[w][:, None]
    out.copy_(acc.reshape(-1))


def bucket_unpack_int8_reference(records: torch.Tensor, grads: List[torch.Tensor]) -> None:
    out = torch.empty(records.shape[1] * (records.shape[2] - 4))
    bucket_dequantize_sum_reference(records, out)
    bucket_unpack_reference(out, grads, 1.0)


def bucket_requantize_int8_reference(records: torch.Tensor, residual: torch.Tensor,
                                     out: torch.Tensor) -> None:
    total = torch.empty(records.shape[1] * (records.shape[2] - 4))
    bucket_dequantize_sum_reference(records, total)
    bucket_quantize_int8_reference([total], residual, out, 1.0)


@torch.library.register_fake("scalenn::bucket_pack")
def _bucket_pack_fake(grads, flat, scale):
    return None


@torch.library.register_fake("scalenn::bucket_unpack")
def _bucket_unpack_fake(flat, grads, scale):
    return None


@torch.library.register_fake("scalenn::bucket_quantize_int8")
def _bucket_quantize_int8_fake(grads, residual, records, scale):
    return None


@torch.library.register_fake("scalenn::bucket_dequantize_sum")
def _bucket_dequantize_sum_fake(records, out):
    return None


@torch.library.register_fake("scalenn::bucket_unpack_int8")
def _bucket_unpack_int8_fake(records, grads):
    return None


@torch.library.register_fake("scalenn::bucket_requantize_int8")
def _bucket_requantize_int8_fake(records, residual, out):
    return None


@torch.library.register_fake("scalenn::shm_post")
def _shm_post_fake(counters, index, value):
    return None


@torch.library.register_fake("scalenn::shm_wait")
def _shm_wait_fake(counters, first, stride, count, target, timeout_s):
    return -1
