"""Triton bucket kernels (kernels/bucket_pack.py) against the plain-PyTorch references of the
scalenn::bucket_* ops (scalenn/_ops/bucket.py), bit for bit. On this CPU machine they run under
the Triton interpreter (tests/conftest.py); on a GPU machine the same tests run on the GPU."""
import pytest
import torch

from scalenn._ops import bucket as ref

pytest.importorskip("triton", reason="Triton is not installed")
from scalenn.kernels import bucket_pack as tb  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# Output dtypes: the Triton interpreter casts float32 -> bfloat16 by truncation (GPUs round to
# nearest even), so bfloat16 is checked as an output only on a GPU; as an input it is exact.
OUT_FLOATS = FLOATS if DEVICE == "cuda" else [torch.float32, torch.float16]
# empty, 1 element, odd sizes, one crossing a 2048-element piece boundary (several programs)
SHAPES = [(0,), (1,), (5, 7), (2049,), (3,)]


def make_grads(dtypes, scale=3.0):
    return [(torch.randn(s) * scale).to(dtypes[i % len(dtypes)]).to(DEVICE)
            for i, s in enumerate(SHAPES)]


def cpu(ts):
    return [t.cpu().clone() for t in ts]


def same(a, b):
    """Bitwise equality, signed zeros included; NaN matches NaN whatever its payload (NVIDIA GPUs
    return the canonical NaN from arithmetic where x86 propagates the input's)."""
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.is_floating_point():
        nan = torch.isnan(a)
        assert torch.equal(nan, torch.isnan(b))
        a, b = a.masked_fill(nan, 0), b.masked_fill(nan, 0)
        a, b = a.view(torch.int16 if a.element_size() == 2 else torch.int32), \
            b.view(torch.int16 if b.element_size() == 2 else torch.int32)
    assert torch.equal(a, b)


@pytest.mark.parametrize("flat_dtype", OUT_FLOATS)
def test_pack_unpack_mixed_dtypes_bit_exact(flat_dtype):
    grads = make_grads(FLOATS)  # a bucket mixing all three grad dtypes: one launch per dtype
    total = sum(g.numel() for g in grads)
    flat = torch.full((total + 3,), 7.0, dtype=flat_dtype, device=DEVICE)  # tail stays 7
    expect = flat.cpu().clone()
    ref.bucket_pack_reference(cpu(grads), expect, 0.37)
    tb.bucket_pack(grads, flat, 0.37)
    same(flat, expect)

    outs = [torch.full_like(g, 5.0) for g in make_grads(OUT_FLOATS)]
    outs_ref = cpu(outs)
    tb.bucket_unpack(flat, outs, 1.9)
    ref.bucket_unpack_reference(flat.cpu(), outs_ref, 1.9)
    for o, r in zip(outs, outs_ref):
        same(o, r)


@pytest.mark.parametrize("C", [16, 37])
def test_quantize_int8_with_error_feedback_bit_exact(C):
    grads = make_grads([torch.float32, torch.bfloat16])
    grads[2][1, 3] = float("nan")  # poisons one chunk only
    total = sum(g.numel() for g in grads)
    N = -(-total // C) + 1  # one chunk past the grads: v = residual there
    residual = torch.randn(N * C, device=DEVICE) * 0.01
    residual[-C:] = -0.0  # an all-zero chunk: s = 0, q = 0 (and -0.0: rint's sign of zero)
    grads[3][:40] = -0.0
    records = torch.full((N, C + 4), 0xAB, dtype=torch.uint8, device=DEVICE)
    r_ref, rec_ref = residual.cpu().clone(), records.cpu().clone()
    for step in range(2):  # the second step feeds the first one's residual back
        tb.bucket_quantize_int8(grads, residual, records, 0.5)
        ref.bucket_quantize_int8_reference(cpu(grads), r_ref, rec_ref, 0.5)
        same(records, rec_ref)
        same(residual, r_ref)
    q, s = ref.records_split(records.cpu())
    assert torch.isnan(s).sum() == 1 and s[-1] == 0
    bad = int(torch.isnan(s).nonzero())
    assert (q[bad] == 0).all() and (residual.cpu()[bad * C:(bad + 1) * C] == 0).all()


def random_records(W, N, C):
    q = torch.randint(-127, 128, (W, N, C), dtype=torch.int8)
    s = torch.rand(W, N) / 50
    s[0, 1] = float("nan")  # a poisoned chunk of rank 0 poisons the sum of chunk 1
    s[1 % W, 0] = 0.0
    return torch.cat([q.view(torch.uint8), s.unsqueeze(-1).contiguous().view(torch.uint8)], -1)


@pytest.mark.parametrize("W,C", [(1, 16), (3, 37)])
def test_dequantize_sum_unpack_requantize_bit_exact(W, C):
    N = 5
    records = random_records(W, N, C)
    out, out_ref = torch.empty(N * C, device=DEVICE), torch.empty(N * C)
    tb.bucket_dequantize_sum(records.to(DEVICE), out)
    ref.bucket_dequantize_sum_reference(records, out_ref)
    same(out, out_ref)
    assert torch.isnan(out.cpu()[C:2 * C]).all()

    grads = [torch.empty(s, dtype=d, device=DEVICE)
             for s, d in [((7,), torch.float16), ((0,), torch.float32), ((3, 11), torch.float32),
                          ((N * C - 40,), OUT_FLOATS[-1])]]
    grads_ref = cpu(grads)
    tb.bucket_unpack_int8(records.to(DEVICE), grads)
    ref.bucket_unpack_int8_reference(records, grads_ref)
    for g, r in zip(grads, grads_ref):
        same(g, r)

    residual = torch.randn(N * C) * 1e-3
    r_dev = residual.clone().to(DEVICE)
    out_rec = torch.empty(N, C + 4, dtype=torch.uint8, device=DEVICE)
    out_rec_ref = torch.empty(N, C + 4, dtype=torch.uint8)
    tb.bucket_requantize_int8(records.to(DEVICE), r_dev, out_rec)
    ref.bucket_requantize_int8_reference(records, residual, out_rec_ref)
    same(out_rec, out_rec_ref)
    same(r_dev, residual)


def test_piece_table_layout():
    idx, within, flat, length = tb.chunk_table([5, 0, 8, 3], 4)
    assert idx.tolist() == [0, 0, 2, 2, 3]
    assert within.tolist() == [0, 4, 0, 4, 0]
    assert flat.tolist() == [0, 4, 5, 9, 13]
    assert length.tolist() == [4, 1, 4, 4, 3]


def test_empty_buckets_and_bad_input():
    flat = torch.zeros(4, device=DEVICE)
    tb.bucket_pack([], flat, 1.0)  # nothing to do
    tb.bucket_pack([torch.empty(0, device=DEVICE)], flat, 1.0)
    assert (flat == 0).all()
    a = torch.randn(4, device=DEVICE)
    with pytest.raises(TypeError, match=r"grads\[1\] must be float32"):
        tb.bucket_pack([a, a.int()], flat, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        tb.bucket_pack([torch.randn(3, 4, device=DEVICE).t()], torch.zeros(12, device=DEVICE), 1.)
    with pytest.raises(ValueError, match="at least the 8 elements"):
        tb.bucket_unpack(flat, [a, a.clone()], 1.0)
    with pytest.raises(TypeError, match="uint8"):
        tb.bucket_quantize_int8([a], torch.zeros(16, device=DEVICE),
                                torch.zeros(1, 20, dtype=torch.int8, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="residual must have"):
        tb.bucket_quantize_int8([a], torch.zeros(15, device=DEVICE),
                                torch.zeros(1, 20, dtype=torch.uint8, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="last dimension C \\+ 4"):
        tb.bucket_dequantize_sum(torch.zeros(1, 2, 4, dtype=torch.uint8, device=DEVICE), flat)
