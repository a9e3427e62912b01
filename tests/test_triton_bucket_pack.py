"""Triton gradient-bucket pack/unpack against torch.cat references (interpreter on CPU)."""
import pytest
import torch

from scalenn._ops.quantize import quantize_per_row_reference

pytest.importorskip("triton", reason="Triton is not installed")
from scalenn.kernels import bucket_pack as tb  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# An empty tensor, a 1-element one, chunk-exact, chunk+1 and a multi-chunk 2-D one.
SIZES = [(0,), (1,), (32,), (33,), (5, 19)]
CHUNK = 32  # small, so that a few hundred elements already make many programs and tails


def make(dtype):
    return [(torch.randn(s) * 4).to(dtype).to(DEVICE) for s in SIZES]


@pytest.mark.parametrize("src_dtype", DTYPES)
@pytest.mark.parametrize("buf_dtype", DTYPES)
def test_pack_matches_cat(src_dtype, buf_dtype):
    tensors = make(src_dtype)
    flat = tb.bucket_pack(tensors, 0.25, buf_dtype, chunk=CHUNK)
    ref = (torch.cat([t.cpu().float().flatten() for t in tensors]) * 0.25).to(buf_dtype)
    assert flat.dtype == buf_dtype
    assert torch.equal(flat.cpu(), ref)  # one fp32 multiply then one cast: bit-exact


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpack_round_trip_and_scale(dtype):
    tensors = make(dtype)
    flat = tb.bucket_pack(tensors, 1.0, torch.float32, chunk=CHUNK)
    outs = [torch.full_like(t, 7.0) for t in tensors]
    tb.bucket_unpack(flat * 3.0, outs, 0.5, chunk=CHUNK)
    for t, o in zip(tensors, outs):
        assert torch.equal(o.cpu(), (t.cpu().float() * 3.0 * 0.5).to(dtype))


def int8_reference(tensors, scale, chunk):
    qs, ss = [], []
    for t in tensors:
        v = t.cpu().float().flatten() * scale
        if v.numel() == 0:
            continue
        pad = (-v.numel()) % chunk
        q, s = quantize_per_row_reference(torch.cat([v, v.new_zeros(pad)]).reshape(-1, chunk))
        qs.append(q.flatten()[: v.numel()])
        ss.append(s)
    return torch.cat(qs), torch.cat(ss)


def test_pack_int8_matches_per_chunk_reference_exactly():
    tensors = make(torch.float32)
    tensors[3][5] = float("nan")  # poisons chunk 0 of tensors[3] only
    tensors[4][0, 0] = 0.0
    q, s = tb.bucket_pack_int8(tensors, 0.5, chunk=CHUNK)
    q_ref, s_ref = int8_reference(tensors, 0.5, CHUNK)
    assert torch.equal(q.cpu(), q_ref)
    torch.testing.assert_close(s.cpu(), s_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(s.cpu()).sum() == 1

    outs = [torch.empty_like(t) for t in tensors]
    tb.bucket_unpack_int8(q, s, outs, 2.0, chunk=CHUNK)
    for i, (t, o) in enumerate(zip(tensors, outs)):
        if t.numel() == 0:
            continue
        if i == 3:
            assert torch.isnan(o[:CHUNK].cpu()).all() and torch.isfinite(o[CHUNK:].cpu()).all()
            continue
        # dequantization error of symmetric int8: at most half a step of its chunk's scale
        torch.testing.assert_close(o.cpu(), t.cpu(), rtol=0, atol=float(t.abs().max()) / 127)


def test_chunk_table_layout():
    idx, within, flat, length = tb.chunk_table([5, 0, 8, 3], 4)
    assert idx.tolist() == [0, 0, 2, 2, 3]
    assert within.tolist() == [0, 4, 0, 4, 0]
    assert flat.tolist() == [0, 4, 5, 9, 13]
    assert length.tolist() == [4, 1, 4, 4, 3]


def test_bucket_bad_input():
    a = torch.randn(4, device=DEVICE)
    with pytest.raises(TypeError, match="one float dtype"):
        tb.bucket_pack([a, a.half()], 1.0, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        tb.bucket_pack([torch.randn(3, 4, device=DEVICE).t()], 1.0, torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        tb.bucket_pack([a], 1.0, torch.int32)
    with pytest.raises(ValueError, match="4 elements"):
        tb.bucket_unpack(torch.zeros(5, device=DEVICE), [a], 1.0)
    with pytest.raises(ValueError, match="non-empty list"):
        tb.bucket_pack([], 1.0, torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        tb.bucket_pack([a], 1.0, torch.float32, chunk=100)
