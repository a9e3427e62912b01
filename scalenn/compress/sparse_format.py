"""Packing a pruned weight into scalenn's canonical sparse layouts, and back.

A layout is the persistent, device-neutral state of a sparse layer (plain tensors: values,
indices, offsets), named by a string the kernels parse:

  "csr"      values f32 [nnz]; indices int16 (read as uint16; used when in_features <= 65536)
             or int32 [nnz], columns ascending within a row; offsets int32 [out + 1].
  "bsr:RxC"  values f32 [nblocks, R, C]; indices int32 [nblocks] (block column, in units of C);
             offsets int32 [out / R + 1] over block rows; blocks ascending within a block row.
  "nm:N:M"   values f32 [out, in / M * N]; indices uint8 positions 0..M-1 (ascending within a
             group of M along in_features); offsets empty. A group with fewer than N nonzeros
             stores explicit zeros.

`pack(weight, mask, layout)` is the one mask -> layout function (SparseLinear uses it, and so can
other compressed layers built on the same masks); `unpack` is its inverse; `check_layout`
validates tensors that came from a file before a kernel reads them.
"""
import re
from typing import NamedTuple, Optional, Tuple

import torch

_BSR = re.compile(r"bsr:(\d+)x(\d+)$")
_NM = re.compile(r"nm:(\d+):(\d+)$")


class Packed(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    layout: str


def parse_layout(layout: str) -> Tuple[str, int, int]:
    """("csr", 1, 1) | ("bsr", R, C) | ("nm", N, M); ValueError for anything else."""
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a str, got {type(layout).__name__}")
    if layout == "csr":
        return "csr", 1, 1
    m = _BSR.match(layout)
    if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
        return "bsr", int(m.group(1)), int(m.group(2))
    m = _NM.match(layout)
    if m and 1 <= int(m.group(1)) <= int(m.group(2)) <= 256:
        return "nm", int(m.group(1)), int(m.group(2))
    raise ValueError(f"unknown sparse layout {layout!r}: expected 'csr', 'bsr:RxC' (e.g. "
                     f"'bsr:4x4') or 'nm:N:M' with N <= M <= 256 (e.g. 'nm:2:4')")


def _as_2d_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape "
                         f"{tuple(weight.shape)}")
    return weight.detach()


def pack(weight: torch.Tensor, mask: Optional[torch.Tensor], layout: str) -> Packed:
    """Pack `weight * mask` (mask None: the nonzeros of weight) into `layout`.

    bsr keeps every block holding a kept element; nm requires at most N kept per group of M.
    """
    w = _as_2d_weight(weight).float()
    keep = (w != 0) if mask is None else mask.to(torch.bool)
    if keep.shape != w.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match weight {tuple(w.shape)}")
    w = torch.where(keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
    kind, a, b = parse_layout(layout)
    if int(keep.count_nonzero()) >= 2 ** 31:
        raise ValueError("pack: more than 2**31 - 1 kept weights; the layouts use int32 offsets")
    out_f, in_f = w.shape
    if kind == "csr":
        rows, cols = keep.nonzero(as_tuple=True)  # row-major order: columns ascending per row
        counts = torch.bincount(rows, minlength=out_f) if rows.numel() else \
            torch.zeros(out_f, dtype=torch.long, device=w.device)
        offsets = torch.zeros(out_f + 1, dtype=torch.int32, device=w.device)
        offsets[1:] = counts.cumsum(0).to(torch.int32)
        idx_dtype = torch.int16 if in_f <= 65536 else torch.int32
        # uint16 columns stored in int16: values >= 32768 wrap, the kernels read them as unsigned
        indices = cols.to(torch.int32)
        indices = (indices - (indices >= 32768).to(torch.int32) * 65536).to(idx_dtype) \
            if idx_dtype == torch.int16 else indices
        return Packed(w[rows, cols].contiguous(), indices.contiguous(), offsets, layout)
    if kind == "bsr":
        R, C = a, b
        if out_f % R or in_f % C:
            raise ValueError(f"block {R}x{C} does not divide the weight [{out_f}, {in_f}]")
        blocks_keep = keep.reshape(out_f // R, R, in_f // C, C).any(dim=3).any(dim=1)
        brow, bcol = blocks_keep.nonzero(as_tuple=True)
        wb = w.reshape(out_f // R, R, in_f // C, C).permute(0, 2, 1, 3)  # [br, bc, R, C]
        values = wb[brow, bcol].contiguous()
        counts = torch.bincount(brow, minlength=out_f // R) if brow.numel() else \
            torch.zeros(out_f // R, dtype=torch.long, device=w.device)
        offsets = torch.zeros(out_f // R + 1, dtype=torch.int32, device=w.device)
        offsets[1:] = counts.cumsum(0).to(torch.int32)
        return Packed(values.reshape(-1, R, C), bcol.to(torch.int32).contiguous(), offsets, layout)
    N, M = a, b
    if in_f % M:
        raise ValueError(f"N:M pattern {N}:{M} needs in_features divisible by {M}, got {in_f}")
    groups = keep.reshape(out_f, in_f // M, M)
    if bool((groups.sum(dim=2) > N).any()):
        raise ValueError(f"the mask keeps more than {N} of some group of {M}: not {N}:{M} sparse")
    # Kept positions first (ascending), then pad with the lowest dropped positions (zeros).
    pos = torch.arange(M, device=w.device).expand_as(groups)
    order_key = (~groups).to(torch.int64) * M + pos
    chosen = order_key.argsort(dim=2)[..., :N].sort(dim=2).values  # [out, groups, N] ascending
    wg = w.reshape(out_f, in_f // M, M)
    values = torch.gather(wg, 2, chosen).reshape(out_f, -1).contiguous()
    return Packed(values, chosen.to(torch.uint8).reshape(out_f, -1).contiguous(),
                  torch.zeros(0, dtype=torch.int32, device=w.device), layout)


def columns(indices: torch.Tensor) -> torch.Tensor:
    """csr indices as int64 columns (int16 storage is read as unsigned)."""
    cols = indices.to(torch.int64)
    return cols & 0xFFFF if indices.dtype == torch.int16 else cols


def row_of_values(offsets: torch.Tensor, count: int) -> torch.Tensor:
    groups = offsets.numel() - 1
    return torch.repeat_interleave(torch.arange(groups, device=offsets.device),
                                   (offsets[1:] - offsets[:-1]).to(torch.int64),
                                   output_size=count)


def dense_index(indices: torch.Tensor, offsets: torch.Tensor, layout: str,
                out_features: int, in_features: int, num_values: int) -> torch.Tensor:
    """For each stored value (in values order), its flat position n * in_features + k in W."""
    kind, a, b = parse_layout(layout)
    if kind == "csr":
        rows = row_of_values(offsets, num_values)
        return rows * in_features + columns(indices)
    if kind == "bsr":
        R, C = a, b
        nb = indices.numel()
        brow = row_of_values(offsets, nb)
        r = torch.arange(R, device=indices.device).view(1, R, 1)
        c = torch.arange(C, device=indices.device).view(1, 1, C)
        rows = brow.view(nb, 1, 1) * R + r
        cols = indices.to(torch.int64).view(nb, 1, 1) * C + c
        return (rows * in_features + cols).reshape(-1)
    N, M = a, b
    L = in_features // M * N
    j = torch.arange(L, device=indices.device)
    cols = (j // N) * M + indices.to(torch.int64)  # [out, L]
    rows = torch.arange(out_features, device=indices.device).view(-1, 1)
    return (rows * in_features + cols).reshape(-1)


def unpack(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, layout: str,
           out_features: int, in_features: int) -> torch.Tensor:
    """The dense [out_features, in_features] weight (differentiable with respect to values)."""
    flat = dense_index(indices, offsets, layout, out_features, in_features, values.numel())
    dense = values.new_zeros(out_features * in_features)
    # Positions are unique in a valid layout, so this is a plain scatter (differentiable wrt
    # values: the gradient of each stored value is the dense gradient at its position).
    dense = dense.index_put((flat,), values.reshape(-1))
    return dense.view(out_features, in_features)


def check_layout(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, layout: str,
                 out_features: int, in_features: int) -> None:
    """Full validation (shapes, dtypes, monotone offsets, indices in range and ascending), so a
    kernel never reads out of bounds; raises ValueError/TypeError naming what is wrong."""
    kind, a, b = parse_layout(layout)
    if values.dtype != torch.float32:
        raise TypeError(f"sparse values must be float32, got {values.dtype}")
    if kind == "nm":
        N, M = a, b
        if in_features % M:
            raise ValueError(f"N:M {N}:{M} needs in_features divisible by {M}, got {in_features}")
        shape = (out_features, in_features // M * N)
        if tuple(values.shape) != shape or tuple(indices.shape) != shape:
            raise ValueError(f"nm values/indices must be {shape}, got {tuple(values.shape)} and "
                             f"{tuple(indices.shape)}")
        if indices.dtype != torch.uint8:
            raise TypeError(f"nm indices must be uint8, got {indices.dtype}")
        if indices.numel():
            pos = indices.view(out_features, -1, N).to(torch.int64)
            if int(pos.max()) >= M or (N > 1 and bool((pos[..., 1:] <= pos[..., :-1]).any())):
                raise ValueError(f"nm positions must be ascending and < {M} within each group")
        return
    groups = out_features if kind == "csr" else (out_features // a if out_features % a == 0 else -1)
    if groups < 0 or (kind == "bsr" and in_features % b):
        raise ValueError(f"block {a}x{b} does not divide the weight [{out_features}, {in_features}]")
    if offsets.dtype != torch.int32 or offsets.shape != (groups + 1,):
        raise ValueError(f"offsets must be int32 [{groups + 1}], got {offsets.dtype} "
                         f"{tuple(offsets.shape)}")
    count = indices.numel()
    if int(offsets[0]) != 0 or int(offsets[-1]) != count or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must start at 0, never decrease, and end at the number of "
                         f"stored entries ({count})")
    if kind == "csr":
        if indices.dtype not in (torch.int16, torch.int32):
            raise TypeError(f"csr indices must be int16 or int32, got {indices.dtype}")
        if values.shape != (count,):
            raise ValueError(f"csr values must be [{count}], got {tuple(values.shape)}")
        limit, cols = in_features, columns(indices)
    else:
        if indices.dtype != torch.int32:
            raise TypeError(f"bsr indices must be int32, got {indices.dtype}")
        if tuple(values.shape) != (count, a, b):
            raise ValueError(f"bsr values must be [{count}, {a}, {b}], got {tuple(values.shape)}")
        limit, cols = in_features // b, indices.to(torch.int64)
    if count:
        if int(cols.min()) < 0 or int(cols.max()) >= limit:
            raise ValueError(f"sparse indices out of range [0, {limit})")
        rows = row_of_values(offsets, count)
        same_row = rows[1:] == rows[:-1]
        if bool((same_row & (cols[1:] <= cols[:-1])).any()):
            raise ValueError("sparse indices must be strictly ascending within a row")
