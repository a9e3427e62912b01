"""Host-side layout for the 2:4 sparse tensor-core kernels (csrc/cuda/sparse24_kernels.cu, and
csrc/cuda/sparse24_wgmma_kernels.cu, whose warps take the same per-warp images: the PTX ISA
gives sparse wgmma the mma.sp metadata figures).

The CUDA kernel computes y^T = W x^T with the 2:4-sparse weight W [N, K] as the sparse `A`
operand of `mma.sp` (2 of every 4 consecutive K elements kept). Everything about where a
weight value or a metadata bit must sit in a thread's registers is decided here, once, when the
weight is packed, so the kernel only streams 16 bytes of values and 4 bytes of metadata per lane
per instruction (coalesced, no shuffles) and this file can be tested on a CPU.

Instruction tiles (PTX ISA, "Matrix fragments for mma.sp"; groupID g = lane >> 2,
threadID_in_group t = lane % 4):

- kind "f16" (fp16/bf16): mma.sp::ordered_metadata m16n8k32: a 16 x 32 logical tile, 16 x 16
  compressed. A registers as dense m16n8k16: element e of a lane (reg e//2, half e%2) is row
  g + 8*(reg%2), compressed column 2t + (e%2) + 8*(reg//2).
- kind "int8": mma.sp::ordered_metadata m16n8k64 .s8: 16 x 64 logical, 16 x 32 compressed. Byte
  p of a lane (reg p//4) is row g + 8*(reg%2), compressed column 4t + p%4 + 16*(reg//2).

Metadata: one 4-bit nibble per (row, group of 4 logical columns) holding the two 2-bit positions
of the kept elements, lower position in the low 2 bits (ordered: i0 < i1, never the invalid
0b0000/0b0101/0b1010/0b1111). Which lane and nibble carries which (row, group) is the part the
public PTX text gives only as pictures, so it is a named convention here:

- "row_chunks": lane (g, t) holds, for rows g (bits 0-15) and g+8 (bits 16-31), the 16 logical
  columns [16c, 16c+16) with c = t % chunks (chunks = 2 for f16, 4 for int8); nibble j of a
  half is group 4c + j. For f16 this is what OpenXLA's Triton sparse-dot lowering emits
  (selector 0: lanes t=0,1 are read; t=2,3 carry the same words).
- "row_halves": (int8 only) lane (g, t) holds one row, g + 8*(t%2), and the 32 logical
  columns [32h, 32h+32) with h = t//2; nibble q is group 8h + q. This is what TileLang's int8
  mma.sp lowering loads (32-bit metadata, natural nibble order from its compress()); TileLang's
  fp16 loader agrees with "row_chunks" above, which supports reading it this way.
- "owner": (int8 only) lane (g, t) holds the nibbles of the groups its own A bytes come from:
  nibble q describes row g + 8*((q//2)%2), group 2t + q%2 + 8*(q//4) (a third-party emulator's
  reading).

The default for int8 is "row_halves". NOT VERIFIED ON A GPU: tests/test_cuda_kernels.py runs
every convention on the hardware and fails, naming the one that matches, if it is not the
default; the kernel itself does not depend on the choice (it streams whatever words it gets).
"""
import functools

import torch

KINDS = {"f16": dict(logical=32, compressed=16, per_lane=8),
         "int8": dict(logical=64, compressed=32, per_lane=16)}
CONVENTIONS = ("row_chunks", "row_halves", "owner")
DEFAULT_CONVENTION = {"f16": "row_chunks", "int8": "row_halves"}


def prune_2_4(w: torch.Tensor) -> torch.Tensor:
    """Keeps the 2 largest-magnitude values of every 4 consecutive elements along the last dim
    (K must be a multiple of 4); a test/benchmark helper, not the pruning recipe."""
    if w.shape[-1] % 4:
        raise ValueError(f"prune_2_4: K must be a multiple of 4, got {w.shape[-1]}")
    g = w.reshape(*w.shape[:-1], -1, 4)
    keep = g.float().abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return (g * mask).reshape(w.shape)


def _kind_of(dtype: torch.dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "f16"
    if dtype == torch.int8:
        return "int8"
    raise TypeError(f"2:4 packing: weight must be float16, bfloat16 or int8, got {dtype}")


@functools.lru_cache(maxsize=None)
def value_map(kind: str):
    """(row, compressed column) of every (lane, element) slot: two int64 [32, per_lane]."""
    e = torch.arange(KINDS[kind]["per_lane"])
    lane = torch.arange(32)[:, None]
    g, t = lane // 4, lane % 4
    if kind == "f16":
        reg = e // 2
        row = g + 8 * (reg % 2)
        col = 2 * t + e % 2 + 8 * (reg // 2)
    else:
        reg = e // 4
        row = g + 8 * (reg % 2)
        col = 4 * t + e % 4 + 16 * (reg // 2)
    return row.expand(32, -1).contiguous(), col.expand(32, -1).contiguous()


@functools.lru_cache(maxsize=None)
def meta_map(kind: str, convention: str):
    """(row, group) described by every (lane, nibble): two int64 [32, 8]."""
    if convention not in CONVENTIONS:
        raise ValueError(f"metadata convention must be one of {CONVENTIONS}, got {convention!r}")
    q = torch.arange(8)
    lane = torch.arange(32)[:, None]
    g, t = lane // 4, lane % 4
    if convention == "row_chunks":
        chunks = KINDS[kind]["logical"] // 16
        row = g + 8 * (q // 4)
        group = 4 * (t % chunks) + q % 4
    elif kind != "int8":
        raise ValueError(f"the {convention!r} metadata convention exists only for int8")
    elif convention == "row_halves":
        row = torch.broadcast_to(g + 8 * (t % 2), (32, 8))
        group = 8 * (t // 2) + q
    else:
        row = g + 8 * ((q // 2) % 2)
        group = 2 * t + q % 2 + 8 * (q // 4)
    return row.expand(32, -1).contiguous(), group.expand(32, -1).contiguous()


def compress_2_4(w: torch.Tensor):
    """w [N, K] (K % 4 == 0) with at most 2 non-zeros per group of 4 ->
    (values [N, K/4, 2], positions uint8 [N, K/4, 2] ascending and distinct).

    A group with fewer than 2 non-zeros keeps explicit zeros at the lowest free positions, so
    every metadata nibble is valid. ValueError if some group has more than 2 non-zeros."""
    N, K = w.shape
    g = w.reshape(N, K // 4, 4)
    nz = g != 0
    if bool((nz.sum(-1) > 2).any()):
        bad = (nz.sum(-1) > 2).nonzero()[0].tolist()
        raise ValueError(f"weight is not 2:4 sparse: row {bad[0]}, columns {4 * bad[1]}.."
                         f"{4 * bad[1] + 3} hold more than 2 non-zeros (use prune_2_4 first)")
    pos = torch.arange(4)
    key = (~nz).to(torch.int64) * 4 + pos  # non-zeros first, then free slots, each by position
    idx = key.argsort(dim=-1)[..., :2].sort(dim=-1).values
    return torch.gather(g, -1, idx), idx.to(torch.uint8)


def pack_sparse24(w: torch.Tensor, convention: str = None):
    """Packs a 2:4-sparse weight [N, K] (fp16/bf16 or int8) into the kernel's register images.

    Returns (values [N16, S, 32, per_lane] in w.dtype, meta int32 [N16, S, 32]) with
    N16 = ceil(N/16) row tiles and S = ceil(K/logical) k-steps; rows/columns past N/K are zero
    padding. The kernel needs N and K separately (it gets them from the op's arguments)."""
    if w.dim() != 2:
        raise ValueError(f"pack_sparse24: weight must be 2-D [N, K], got {tuple(w.shape)}")
    kind = _kind_of(w.dtype)
    convention = convention or DEFAULT_CONVENTION[kind]
    spec = KINDS[kind]
    N, K = w.shape
    Np = -(-N // 16) * 16
    Kp = -(-K // spec["logical"]) * spec["logical"]
    wp = torch.zeros(Np, Kp, dtype=w.dtype)
    wp[:N, :K] = w.cpu()
    vals, idx = compress_2_4(wp)  # [Np, Kp/4, 2]
    S = Kp // spec["logical"]
    groups = spec["compressed"] // 2
    # [tile, row16, step, group, 2] -> compressed tile [tile, step, row16, compressed col]
    comp = vals.reshape(Np // 16, 16, S, groups, 2).permute(0, 2, 1, 3, 4).reshape(
        Np // 16, S, 16, spec["compressed"])
    pos = idx.reshape(Np // 16, 16, S, groups, 2).permute(0, 2, 1, 3, 4).to(torch.int32)
    row, col = value_map(kind)
    values = comp[:, :, row, col]  # [tile, S, 32, per_lane]
    mrow, mgroup = meta_map(kind, convention)
    nibble = pos[:, :, mrow, mgroup, 0] | (pos[:, :, mrow, mgroup, 1] << 2)  # [tile, S, 32, 8]
    shifts = torch.arange(8, dtype=torch.int64) * 4
    meta = (nibble.to(torch.int64) << shifts).sum(-1)
    meta = torch.where(meta >= 2**31, meta - 2**32, meta).to(torch.int32)
    return values.contiguous(), meta.contiguous()


def unpack_sparse24(values: torch.Tensor, meta: torch.Tensor, N: int, K: int,
                    convention: str = None) -> torch.Tensor:
    """Inverse of pack_sparse24: reads the register images the way the hardware does (value
    slot -> (row, compressed column), metadata nibble -> logical column) and rebuilds the dense
    weight [N, K]. Used by the tests as the layout oracle."""
    kind = _kind_of(values.dtype)
    convention = convention or DEFAULT_CONVENTION[kind]
    spec = KINDS[kind]
    tiles, S = values.shape[0], values.shape[1]
    row, col = value_map(kind)
    mrow, mgroup = meta_map(kind, convention)
    m = meta.to(torch.int64) & 0xFFFFFFFF
    nib = (m[..., None] >> (torch.arange(8) * 4)) & 0xF  # [tile, S, 32, 8]
    # positions[tile, S, row, group, 2]; lanes that repeat a (row, group) must agree
    positions = torch.full((tiles, S, 16, spec["compressed"] // 2, 2), -1, dtype=torch.int64)
    for q in range(8):  # 8 nibble slots, vectorized over tiles, steps and lanes
        r, gr = mrow[:, q], mgroup[:, q]
        lo, hi = nib[..., q] & 3, nib[..., q] >> 2
        prev = positions[:, :, r, gr]
        new = torch.stack([lo, hi], -1)
        if bool(((prev >= 0) & (prev != new)).any()):
            raise ValueError("metadata lanes disagree about one group")
        positions[:, :, r, gr] = new
    if bool((positions < 0).any()):
        raise ValueError("metadata does not cover every (row, group) of the tile")
    dense = torch.zeros(tiles, S, 16, spec["logical"], dtype=values.dtype)
    ccol = col  # [32, per_lane]
    group = ccol // 2
    which = ccol % 2
    logical = 4 * group[None, None] + positions[:, :, row, group, which]
    t_idx = torch.arange(tiles)[:, None, None, None]
    s_idx = torch.arange(S)[None, :, None, None]
    dense[t_idx, s_idx, row[None, None], logical] = values
    dense = dense.permute(0, 2, 1, 3).reshape(tiles * 16, S * spec["logical"])
    return dense[:N, :K]
