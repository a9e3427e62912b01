"""Host-side 2:4 packing for the mma.sp kernels (scalenn/_ops/sparse24_layout.py), on the CPU.

What these tests establish: the packing is lossless (decode(pack(W)) == W exactly, padding
included), every metadata nibble is valid and ordered, the fp16 metadata words equal the
formula OpenXLA's Triton lowering uses (computed independently here), and value slots follow
the PTX fragment formulas. What they cannot establish: that the hardware reads the images the
same way; tests/test_cuda_kernels.py does that on a GPU.
"""
import pytest
import torch

from scalenn._ops import sparse24_layout as L

CASES = [("f16", "row_chunks"), ("int8", "row_chunks"), ("int8", "row_halves"),
         ("int8", "owner")]
SHAPES = [(16, 32), (16, 64), (37, 100), (5, 4), (64, 192)]


def random_2_4(N, K, kind):
    if kind == "int8":
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    else:
        w = torch.randn(N, K).to(torch.float16)
    w = L.prune_2_4(w)
    # some groups with a single non-zero and some all-zero: the padding positions must be valid
    g = w.view(N, K // 4, 4)
    g[0, 0] = 0
    if K >= 8:
        g[-1, 1, :] = 0
        g[-1, 1, 3] = 1
    return w


@pytest.mark.parametrize("kind,convention", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_unpack_round_trip_is_exact(kind, convention, shape):
    N, K = shape
    w = random_2_4(N, K, kind)
    values, meta = L.pack_sparse24(w, convention)
    spec = L.KINDS[kind]
    assert values.shape == (-(-N // 16), -(-K // spec["logical"]), 32, spec["per_lane"])
    assert meta.shape == values.shape[:3] and meta.dtype == torch.int32
    assert torch.equal(L.unpack_sparse24(values, meta, N, K, convention), w)


@pytest.mark.parametrize("kind,convention", CASES)
def test_metadata_nibbles_are_valid_and_ordered(kind, convention):
    w = random_2_4(48, 128, kind)
    _, meta = L.pack_sparse24(w, convention)
    m = meta.to(torch.int64) & 0xFFFFFFFF
    nib = (m[..., None] >> (torch.arange(8) * 4)) & 0xF
    lo, hi = nib & 3, nib >> 2
    assert bool((lo < hi).all()), "ordered metadata: first index < second index in every group"
    for invalid in (0b0000, 0b0101, 0b1010, 0b1111):
        assert not bool((nib == invalid).any())


def test_f16_metadata_matches_the_openxla_lowering_formula():
    # OpenXLA (triton_xla sparse dot, Ampere): meta16[row][c] packs the 2-bit indices of the 16
    # logical columns [16c, 16c+16) of a row; lane (g, t) passes meta16[g + 8][t % 2] << 16 |
    # meta16[g][t % 2] with sparsity selector 0. Recomputed here from compress_2_4 alone.
    N, K = 32, 64
    w = random_2_4(N, K, "f16")
    _, meta = L.pack_sparse24(w, "row_chunks")
    _, idx = L.compress_2_4(w)  # [N, K/4, 2]
    code = (idx[..., 0].long() | (idx[..., 1].long() << 2))  # [N, K/4]
    meta16 = (code.view(N, K // 16, 4) << (torch.arange(4) * 4)).sum(-1)  # [N, K/16]
    for tile in range(N // 16):
        for step in range(K // 32):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                r0 = tile * 16 + g
                c = step * 2 + t % 2
                expected = (int(meta16[r0 + 8, c]) << 16) | int(meta16[r0, c])
                assert int(meta[tile, step, lane]) & 0xFFFFFFFF == expected


def test_int8_row_halves_metadata_matches_the_tilelang_loader_formula():
    # TileLang (int8 A, 32-bit metadata): E32[row][c] packs the 8 groups of logical columns
    # [32c, 32c+32) of a row in natural order; lane l loads E32[l//4 + 8*(l%2)][(l%4)//2].
    N, K = 32, 128
    w = random_2_4(N, K, "int8")
    _, meta = L.pack_sparse24(w, "row_halves")
    _, idx = L.compress_2_4(w)
    code = (idx[..., 0].long() | (idx[..., 1].long() << 2))  # [N, K/4]
    e32 = (code.view(N, K // 32, 8) << (torch.arange(8) * 4)).sum(-1)  # [N, K/32]
    for tile in range(N // 16):
        for step in range(K // 64):
            for lane in range(32):
                row = tile * 16 + lane // 4 + 8 * (lane % 2)
                col = step * 2 + (lane % 4) // 2
                assert int(meta[tile, step, lane]) & 0xFFFFFFFF == int(e32[row, col])


def test_value_slots_follow_the_ptx_fragment_formulas():
    # f16 (dense m16n8k16 A layout): lane 5 = (g 1, t 1); element 0 -> (row 1, ccol 2),
    # element 3 -> reg 1 half 1 -> (row 9, ccol 3), element 6 -> reg 3 half 0 -> (row 9, ccol 10)
    row, col = L.value_map("f16")
    assert (int(row[5, 0]), int(col[5, 0])) == (1, 2)
    assert (int(row[5, 3]), int(col[5, 3])) == (9, 3)
    assert (int(row[5, 6]), int(col[5, 6])) == (9, 10)
    # int8 (dense m16n8k32 A layout): lane 30 = (g 7, t 2); byte 0 -> (7, 8), byte 5 ->
    # reg 1 -> (15, 9), byte 11 -> reg 2 -> (7, 27)
    row, col = L.value_map("int8")
    assert (int(row[30, 0]), int(col[30, 0])) == (7, 8)
    assert (int(row[30, 5]), int(col[30, 5])) == (15, 9)
    assert (int(row[30, 11]), int(col[30, 11])) == (7, 27)
    for kind in ("f16", "int8"):  # every (row, ccol) of the tile exactly once
        row, col = L.value_map(kind)
        flat = (row * L.KINDS[kind]["compressed"] + col).flatten()
        assert torch.equal(flat.sort().values, torch.arange(16 * L.KINDS[kind]["compressed"]))


def test_prune_and_compress():
    w = torch.tensor([[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 7.0]])
    p = L.prune_2_4(w)
    assert p.tolist() == [[0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 7.0]]
    vals, idx = L.compress_2_4(p)
    assert idx.tolist() == [[[1, 2], [0, 3]]]  # second group: one non-zero, padded at 0
    assert vals.tolist() == [[[-3.0, 2.0], [0.0, 7.0]]]
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        L.compress_2_4(torch.ones(2, 8))
    with pytest.raises(TypeError, match="float16, bfloat16 or int8"):
        L.pack_sparse24(torch.zeros(16, 32))
    with pytest.raises(ValueError, match="convention"):
        L.pack_sparse24(torch.zeros(16, 32, dtype=torch.int8), "diagonal")
    with pytest.raises(ValueError, match="only for int8"):
        L.pack_sparse24(torch.zeros(16, 32, dtype=torch.float16), "owner")
    with pytest.raises(ValueError, match="only for int8"):
        L.pack_sparse24(torch.zeros(16, 32, dtype=torch.float16), "row_halves")
