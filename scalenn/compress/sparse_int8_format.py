"""The packed format of SparseInt8Linear (pruned int8 weights): chunks of entries of one row
with 8-bit indices relative to a 16-bit base. Layout and kernels: csrc/cpu/sparse_int8_kernels.h.

  "elem16" one kept weight per entry (unstructured pruning); rows in groups of 16 that advance
           in steps of 64 entries (a chunk of 4 per row) sharing a base: ~2.5 bytes per kept
           weight at 90%
  "quad"   one group of 4 consecutive columns per entry (1x4 / 1x16 blocks), chunks of 16:
           4 value bytes + ~1.1 index bytes per group

`choose_format` picks the one with fewer bytes for a given weight; `pack` calls the C++ packer;
`unpack` and `entry_columns` are the plain-PyTorch inverse (references, to_dense, backward);
`check` validates tensors that came from a file before a kernel reads them; `step_stream` /
`step_views` give elem16's rel and values as the one stream SparseInt8Linear keeps in memory
(the ops take both layouts; files always hold the 1-D arrays).
"""
from typing import NamedTuple

import torch

FORMATS = ("elem16", "quad")
GROUP_ROWS = 16  # elem16: rows per group = chunks per step (one base per step)


def chunk_entries(format: str) -> int:
    """Entries per chunk: 4 (elem16: a row's share of a step) or 16 (quad)."""
    return 4 if format == "elem16" else 16


class PackedSparseInt8(NamedTuple):
    values: torch.Tensor       # int8 [entries (elem16) | entries * 4 (quad)]
    rel: torch.Tensor          # uint8 [entries], entries = chunks * chunk_entries(format)
    base: torch.Tensor         # int16 (read as uint16) [chunks] (quad) or [chunks / 16] (elem16)
    row_offsets: torch.Tensor  # int32 [out_features + 1], in chunks (see chunk_rows)
    row_order: torch.Tensor    # int32 [out_features]: packed row p is output row row_order[p]
    format: str


def check_format(format: str) -> None:
    if format == "elem":
        raise ValueError("sparse int8 format 'elem' (one row per chunk run) was replaced by "
                         "'elem16' (rows in groups of 16 sharing each window); re-create the "
                         "layer from its dense or int8 weight")
    if format not in FORMATS:
        raise ValueError(f"sparse int8 format must be one of {FORMATS}, got {format!r}")


def chunks_per_base(format: str) -> int:
    return GROUP_ROWS if format == "elem16" else 1


def _check_w_int8(w_int8: torch.Tensor) -> None:
    if not isinstance(w_int8, torch.Tensor) or w_int8.dtype != torch.int8:
        raise TypeError(f"w_int8 must be an int8 tensor, got "
                        f"{getattr(w_int8, 'dtype', type(w_int8).__name__)}")
    if w_int8.dim() != 2:
        raise ValueError(f"w_int8 must be 2-D [out_features, in_features], got shape "
                         f"{tuple(w_int8.shape)}")


def estimated_bytes(w_int8: torch.Tensor, format: str) -> int:
    """A lower bound on the bytes `pack(w_int8, format)` takes (no packing done): quad chunks
    of 16 groups per row; elem16 as many steps per group as its fullest row needs, ignoring
    the windows."""
    _check_w_int8(w_int8)
    check_format(format)
    n, k = w_int8.shape
    offsets_and_order = 4 * (n + 1) + 4 * n
    if format == "elem16":
        # Groups of 16 rows in decreasing kept order, as the packer sorts them.
        counts = (w_int8 != 0).sum(dim=1).sort(descending=True).values
        steps = int(((counts[::GROUP_ROWS] + 3) // 4).sum())
        return steps * (GROUP_ROWS * 4 * 2 + 2) + offsets_and_order
    k4 = (k + 3) // 4 * 4
    padded = torch.nn.functional.pad(w_int8 != 0, (0, k4 - k))
    entries = padded.view(n, k4 // 4, 4).any(dim=2).sum(dim=1)
    chunks = int(((entries + 15) // 16).sum())
    return chunks * (16 * 5 + 2) + offsets_and_order


def choose_format(w_int8: torch.Tensor) -> str:
    """The format with fewer bytes: quad when the kept weights cluster in groups of 4."""
    return min(FORMATS, key=lambda f: estimated_bytes(w_int8, f))


def pack(w_int8: torch.Tensor, format: str) -> PackedSparseInt8:
    """Pack the nonzeros of a symmetric int8 weight [N, K] (values in [-127, 127])."""
    _check_w_int8(w_int8)
    check_format(format)
    return PackedSparseInt8(*torch.ops.scalenn.sparse_int8_pack(w_int8.cpu(), format), format)


def chunk_rows(row_offsets: torch.Tensor, chunks: int, format: str) -> torch.Tensor:
    """[chunks] int64: the packed row of each chunk. quad: row n owns chunks [row_offsets[n],
    row_offsets[n + 1]). elem16: group g (rows 16g..16g+15) owns chunks [row_offsets[16g],
    row_offsets[min(16g + 16, N)]), chunk i of it belongs to row 16g + i % 16."""
    n = row_offsets.numel() - 1
    if format == "quad":
        counts = (row_offsets[1:] - row_offsets[:-1]).to(torch.int64)
        return torch.repeat_interleave(torch.arange(n, device=row_offsets.device), counts,
                                       output_size=chunks)
    bounds = torch.cat([row_offsets[:-1:GROUP_ROWS], row_offsets[-1:]]).to(torch.int64)
    groups = torch.repeat_interleave(torch.arange(bounds.numel() - 1, device=row_offsets.device),
                                     bounds[1:] - bounds[:-1], output_size=chunks)
    within = torch.arange(chunks, device=row_offsets.device) - bounds[groups]
    return GROUP_ROWS * groups + within % GROUP_ROWS


def entry_columns(rel: torch.Tensor, base: torch.Tensor, format: str) -> torch.Tensor:
    """[chunks, chunk_entries] int64: each entry's column (elem16) or first column of its group
    (quad)."""
    b = (base.to(torch.int64) & 0xFFFF).repeat_interleave(chunks_per_base(format))
    r = rel.to(torch.int64).view(-1, chunk_entries(format))
    return 4 * b[:, None] + r if format == "elem16" else 4 * (b[:, None] + r)


def unpack(packed: PackedSparseInt8, in_features: int) -> torch.Tensor:
    """The dense int8 weight [out_features, in_features]."""
    values, rel, base, row_offsets, row_order, format = flat(packed)
    e = chunk_entries(format)
    n, chunks = row_offsets.numel() - 1, rel.numel() // e
    width = (in_features + 3) // 4 * 4 + 4 * 256  # entries may point past K (zero weights)
    # elem16's last group may have rows >= n (all padding): spare rows absorb them.
    dense = torch.zeros(n + GROUP_ROWS, width, dtype=torch.int8, device=values.device)
    rows = chunk_rows(row_offsets, chunks, format)[:, None].expand(chunks, e)
    cols = entry_columns(rel, base, format)
    if format == "elem16":
        # Padding entries (weight 0) may share a column with a real one: write the nonzeros only.
        v = values.view(chunks, e)
        keep = v != 0
        dense.index_put_((rows[keep], cols[keep]), v[keep])
    else:
        v = values.view(chunks, e, 4)
        for j in range(4):
            keep = v[..., j] != 0
            dense.index_put_((rows[keep], cols[keep] + j), v[..., j][keep])
    out = torch.empty(n, in_features, dtype=torch.int8, device=values.device)
    out[row_order.long()] = dense[:n, :in_features]
    return out


def step_stream(values: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """elem16: ONE [steps, 128] uint8 array holding each step's 64 rel bytes, then its 64
    values; `step_views` gives values and rel back as views of it, which the ops take as they
    are. A batch-1 call streams the packed weight from memory, and one stream beat two side by
    side: SparseInt8Linear 4096 x 4096, 90%, M = 1, in one run with the separate arrays
    (variants in random order, rotated from memory): 0.92-0.97x the time on 4 KiB pages,
    0.85-0.95x on huge pages (csrc/cpu/sparse_int8_kernels.h: SparseInt8Weight.step_bytes)."""
    steps = rel.numel() // (4 * GROUP_ROWS)
    return torch.cat([rel.reshape(steps, 4 * GROUP_ROWS),
                      values.reshape(steps, 4 * GROUP_ROWS).view(torch.uint8)], dim=1)


def step_views(stream: torch.Tensor):
    """(values, rel) of an elem16 step stream: [steps, 64] views with row stride 128."""
    half = stream.shape[1] // 2
    return stream[:, half:].view(torch.int8), stream[:, :half]


def flat(packed: PackedSparseInt8) -> PackedSparseInt8:
    """`packed` with 1-D contiguous values and rel (copies of interleaved steps)."""
    return packed._replace(values=packed.values.reshape(-1), rel=packed.rel.reshape(-1))


def stored_bytes(packed: PackedSparseInt8) -> int:
    return sum(t.numel() * t.element_size() for t in packed[:5])


def check(packed: PackedSparseInt8, out_features: int, in_features: int) -> None:
    """Full validation (dtypes, sizes, offsets, every entry inside the weight, values in
    [-127, 127]); raises TypeError/ValueError naming what is wrong."""
    values, rel, base, row_offsets, row_order, format = packed
    check_format(format)
    for name, t, dtype in (("values", values, torch.int8), ("rel", rel, torch.uint8),
                           ("base", base, torch.int16), ("row_offsets", row_offsets, torch.int32),
                           ("row_order", row_order, torch.int32)):
        if t.dtype != dtype:
            raise TypeError(f"sparse int8 {name} must be {dtype}, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"sparse int8 {name} must be 1-D, got shape {tuple(t.shape)}")
    eb = 1 if format == "elem16" else 4
    e = chunk_entries(format)
    chunks = base.numel() * chunks_per_base(format)
    if rel.numel() != chunks * e or values.numel() != chunks * e * eb:
        raise ValueError(f"{base.numel()} bases of the {format!r} format need rel "
                         f"[{chunks * e}] and values [{chunks * e * eb}], got {rel.numel()} and "
                         f"{values.numel()}")
    if row_offsets.numel() != out_features + 1:
        raise ValueError(f"row_offsets must have out_features + 1 = {out_features + 1} entries, "
                         f"got {row_offsets.numel()}")
    if int(row_offsets[0]) != 0 or int(row_offsets[-1]) != chunks or \
            bool((row_offsets[1:] < row_offsets[:-1]).any()):
        raise ValueError(f"row_offsets must start at 0, never decrease and end at the number of "
                         f"chunks ({chunks})")
    if row_order.numel() != out_features or not torch.equal(
            torch.sort(row_order.long()).values, torch.arange(out_features, device=row_order.device)):
        raise ValueError(f"row_order must be a permutation of 0..{out_features - 1}")
    if format == "elem16":
        heads = row_offsets[:-1:GROUP_ROWS].repeat_interleave(GROUP_ROWS)[:out_features]
        if bool((row_offsets[:-1] != heads).any()) or bool((row_offsets % GROUP_ROWS != 0).any()):
            raise ValueError(f"elem16 row_offsets must give the {GROUP_ROWS} rows of a group the "
                             f"same first chunk, a multiple of {GROUP_ROWS}")
    if chunks:
        last = entry_columns(rel, base, format) + (eb - 1)
        # Padding entries (zero weights) may point anywhere in the chunk's window; real ones
        # must lie inside the weight.
        nonzero = values.view(chunks, e, eb).ne(0).any(dim=2)
        if bool((4 * (base.to(torch.int64) & 0xFFFF) >= (in_features + 3) // 4 * 4).any()) or \
                bool((last - (eb - 1) >= in_features)[nonzero].any()):
            raise ValueError(f"sparse int8 entries point outside in_features = {in_features}")
    if values.numel() and int(values.min()) < -127:
        raise ValueError("sparse int8 values must be in [-127, 127] (symmetric int8)")
