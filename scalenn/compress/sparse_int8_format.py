"""The packed format of SparseInt8Linear (pruned int8 weights): chunks of 16 entries with 8-bit
indices relative to a 16-bit chunk base. Layout and kernels: csrc/cpu/sparse_int8_kernels.h.

  "elem"  one kept weight per entry (unstructured pruning): ~2.2 bytes per kept weight at 90%
  "quad"  one group of 4 consecutive columns per entry (1x4 / 1x16 blocks, and 2:4): 4 value
          bytes + ~1.1 index bytes per group

`choose_format` picks the one with fewer bytes for a given weight; `pack` calls the C++ packer;
`unpack` and `entry_columns` are the plain-PyTorch inverse (references, to_dense, backward);
`check` validates tensors that came from a file before a kernel reads them.
"""
from typing import NamedTuple

import torch

FORMATS = ("elem", "quad")
ENTRIES_PER_CHUNK = 16


class PackedSparseInt8(NamedTuple):
    values: torch.Tensor       # int8 [chunks * 16 * (1 | 4)]
    rel: torch.Tensor          # uint8 [chunks * 16]
    base: torch.Tensor         # int16 (read as uint16) [chunks], in units of 4 columns
    row_offsets: torch.Tensor  # int32 [out_features + 1], in chunks
    format: str


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"sparse int8 format must be one of {FORMATS}, got {format!r}")


def _check_w_int8(w_int8: torch.Tensor) -> None:
    if not isinstance(w_int8, torch.Tensor) or w_int8.dtype != torch.int8:
        raise TypeError(f"w_int8 must be an int8 tensor, got "
                        f"{getattr(w_int8, 'dtype', type(w_int8).__name__)}")
    if w_int8.dim() != 2:
        raise ValueError(f"w_int8 must be 2-D [out_features, in_features], got shape "
                         f"{tuple(w_int8.shape)}")


def estimated_bytes(w_int8: torch.Tensor, format: str) -> int:
    """Bytes `pack(w_int8, format)` will take, within the chunk padding (no packing done)."""
    _check_w_int8(w_int8)
    _check_format(format)
    n, k = w_int8.shape
    if format == "elem":
        entries = (w_int8 != 0).sum(dim=1)
        per_entry = 2
    else:
        k4 = (k + 3) // 4 * 4
        padded = torch.nn.functional.pad(w_int8 != 0, (0, k4 - k))
        entries = padded.view(n, k4 // 4, 4).any(dim=2).sum(dim=1)
        per_entry = 5
    chunks = int(((entries + ENTRIES_PER_CHUNK - 1) // ENTRIES_PER_CHUNK).sum())
    return chunks * (ENTRIES_PER_CHUNK * per_entry + 2) + 4 * (n + 1)


def choose_format(w_int8: torch.Tensor) -> str:
    """The format with fewer bytes: quad when the kept weights cluster in groups of 4."""
    return min(FORMATS, key=lambda f: estimated_bytes(w_int8, f))


def pack(w_int8: torch.Tensor, format: str) -> PackedSparseInt8:
    """Pack the nonzeros of a symmetric int8 weight [N, K] (values in [-127, 127])."""
    _check_w_int8(w_int8)
    _check_format(format)
    values, rel, base, row_offsets = torch.ops.scalenn.sparse_int8_pack(w_int8.cpu(), format)
    return PackedSparseInt8(values, rel, base, row_offsets, format)


def _chunk_rows(row_offsets: torch.Tensor, chunks: int) -> torch.Tensor:
    counts = (row_offsets[1:] - row_offsets[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_offsets.device),
                                   counts, output_size=chunks)


def entry_columns(rel: torch.Tensor, base: torch.Tensor, format: str) -> torch.Tensor:
    """[chunks, 16] int64: each entry's column (elem) or first column of its group (quad)."""
    b = base.to(torch.int64) & 0xFFFF
    r = rel.to(torch.int64).view(-1, ENTRIES_PER_CHUNK)
    return 4 * b[:, None] + r if format == "elem" else 4 * (b[:, None] + r)


def unpack(packed: PackedSparseInt8, in_features: int) -> torch.Tensor:
    """The dense int8 weight [out_features, in_features]."""
    values, rel, base, row_offsets, format = packed
    n, chunks = row_offsets.numel() - 1, base.numel()
    width = (in_features + 3) // 4 * 4 + 4 * 256  # entries may point past K (zero weights)
    dense = torch.zeros(n, width, dtype=torch.int8, device=values.device)
    rows = _chunk_rows(row_offsets, chunks)[:, None].expand(chunks, ENTRIES_PER_CHUNK)
    cols = entry_columns(rel, base, format)
    if format == "elem":
        # Padding entries (weight 0) may share a column with a real one: write the nonzeros only.
        v = values.view(chunks, ENTRIES_PER_CHUNK)
        keep = v != 0
        dense.index_put_((rows[keep], cols[keep]), v[keep])
    else:
        v = values.view(chunks, ENTRIES_PER_CHUNK, 4)
        for j in range(4):
            keep = v[..., j] != 0
            dense.index_put_((rows[keep], cols[keep] + j), v[..., j][keep])
    return dense[:, :in_features].contiguous()


def stored_bytes(packed: PackedSparseInt8) -> int:
    return sum(t.numel() * t.element_size() for t in packed[:4])


def check(packed: PackedSparseInt8, out_features: int, in_features: int) -> None:
    """Full validation (dtypes, sizes, offsets, every entry inside the weight, values in
    [-127, 127]); raises TypeError/ValueError naming what is wrong."""
    values, rel, base, row_offsets, format = packed
    _check_format(format)
    for name, t, dtype in (("values", values, torch.int8), ("rel", rel, torch.uint8),
                           ("base", base, torch.int16), ("row_offsets", row_offsets, torch.int32)):
        if t.dtype != dtype:
            raise TypeError(f"sparse int8 {name} must be {dtype}, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"sparse int8 {name} must be 1-D, got shape {tuple(t.shape)}")
    chunks = base.numel()
    eb = 1 if format == "elem" else 4
    if rel.numel() != chunks * ENTRIES_PER_CHUNK or values.numel() != chunks * ENTRIES_PER_CHUNK * eb:
        raise ValueError(f"{chunks} chunks need rel [{chunks * ENTRIES_PER_CHUNK}] and values "
                         f"[{chunks * ENTRIES_PER_CHUNK * eb}], got {rel.numel()} and {values.numel()}")
    if row_offsets.numel() != out_features + 1:
        raise ValueError(f"row_offsets must have out_features + 1 = {out_features + 1} entries, "
                         f"got {row_offsets.numel()}")
    if int(row_offsets[0]) != 0 or int(row_offsets[-1]) != chunks or \
            bool((row_offsets[1:] < row_offsets[:-1]).any()):
        raise ValueError(f"row_offsets must start at 0, never decrease and end at the number of "
                         f"chunks ({chunks})")
    if chunks:
        last = entry_columns(rel, base, format) + (eb - 1)
        # Padding entries (zero weights) may point anywhere in the chunk's window; real ones
        # must lie inside the weight.
        nonzero = values.view(chunks, ENTRIES_PER_CHUNK, eb).ne(0).any(dim=2)
        if bool((4 * (base.to(torch.int64) & 0xFFFF) >= (in_features + 3) // 4 * 4).any()) or \
                bool((last - (eb - 1) >= in_features)[nonzero].any()):
            raise ValueError(f"sparse int8 entries point outside in_features = {in_features}")
    if values.numel() and int(values.min()) < -127:
        raise ValueError("sparse int8 values must be in [-127, 127] (symmetric int8)")
