"""bucket_pack / bucket_unpack / bucket_quantize_int8 / bucket_dequantize_sum: CPU kernels on
every ISA against the plain-PyTorch references (bit-exact: same fp32 roundings, no FMA), odd
and zero sizes, mixed dtypes, NaN/Inf, bad input, opcheck and torch.compile."""
import pytest
import torch

import scalenn
from scalenn import ops
from scalenn._ops.bucket import (bucket_dequantize_sum_reference, bucket_pack_reference,
                                 bucket_quantize_int8_reference, bucket_unpack_reference,
                                 records_split)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# zero-size tensors, lengths below / around one vector, odd lengths, one large tensor
SIZES = [[0], [1], [7, 0, 16, 17], [33, 5, 1000, 3], [15, 65536 + 3], [8] * 40]
SCALES = [1.0, 0.5, 1.0 / 3.0]


def make_grads(sizes, dtypes, magnitude=1.0):
    return [(torch.randn(n) * magnitude * torch.rand(1)).to(dtypes[i % len(dtypes)])
            for i, n in enumerate(sizes)]


def equal_with_nan(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


@pytest.mark.parametrize("flat_dtype", DTYPES)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"n{sum(s)}x{len(s)}")
@pytest.mark.parametrize("scale", SCALES)
def test_pack_unpack_match_reference_exactly(isa, flat_dtype, sizes, scale):
    grads = make_grads(sizes, DTYPES)
    total = sum(sizes)
    flat = torch.full((total + 5,), 7.0, dtype=flat_dtype)  # tail must stay untouched
    expect = flat.clone()
    ops.bucket_pack(grads, flat, scale)
    bucket_pack_reference(grads, expect, scale)
    assert torch.equal(flat, expect)
    assert (flat[total:] == 7).all()
    out = [torch.empty_like(g) for g in grads]
    ref = [torch.empty_like(g) for g in grads]
    ops.bucket_unpack(flat, out, 1.0 / scale)
    bucket_unpack_reference(flat, ref, 1.0 / scale)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_pack_keeps_shapes_and_nonfinite(isa):
    grads = [torch.randn(3, 5, 7), torch.randn(2, 1, 9).bfloat16()]
    grads[0][1, 2, 3] = float("nan")
    grads[1][1, 0, 8] = float("-inf")
    for flat_dtype in DTYPES:
        flat = torch.empty(105 + 18, dtype=flat_dtype)
        ops.bucket_pack(grads, flat, 0.5)
        expect = torch.empty_like(flat)
        bucket_pack_reference(grads, expect, 0.5)
        assert equal_with_nan(flat.float(), expect.float())
        assert torch.isnan(flat[1 * 35 + 2 * 7 + 3]) and flat[105 + 17] == float("-inf")


@pytest.mark.parametrize("C", [16, 33, 256, 1024])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"n{sum(s)}x{len(s)}")
def test_quantize_int8_matches_reference_exactly(isa, C, sizes):
    grads = make_grads(sizes, DTYPES, magnitude=1e-3)
    N = -(-max(1, sum(sizes)) // C) + 1  # one chunk of pure padding
    residual = torch.randn(N * C) * 1e-5
    records = torch.empty(N, C + 4, dtype=torch.uint8)
    r_ref, rec_ref = residual.clone(), records.clone()
    for step, scale in enumerate(SCALES):  # residual carried between steps, as in training
        ops.bucket_quantize_int8(grads, residual, records, scale)
        bucket_quantize_int8_reference(grads, r_ref, rec_ref, scale)
        q, s = records_split(records)
        q_ref, s_ref = records_split(rec_ref)
        assert torch.equal(q, q_ref), f"step {step}"
        assert torch.equal(s, s_ref), f"step {step}"
        assert torch.equal(residual, r_ref), f"step {step}"


def _records_residual(N, C, magnitude):
    """A residual stored as records (the CPU wire's), holding small random values."""
    residual = torch.zeros(N, C + 4, dtype=torch.uint8)
    ops.bucket_quantize_int8([torch.randn(N * C) * magnitude], torch.zeros(N * C), residual, 1.0)
    return residual


@pytest.mark.parametrize("C", [16, 33, 1024])
@pytest.mark.parametrize("sizes", SIZES[1:], ids=lambda s: f"n{sum(s)}x{len(s)}")
def test_quantize_int8_with_records_residual_matches_reference_exactly(isa, C, sizes):
    grads = make_grads(sizes, DTYPES, magnitude=1e-3)
    N = -(-max(1, sum(sizes)) // C) + 1  # one chunk of pure padding
    residual = _records_residual(N, C, 1e-5)
    records = torch.empty(N, C + 4, dtype=torch.uint8)
    r_ref, rec_ref = residual.clone(), records.clone()
    for step, scale in enumerate(SCALES):  # residual carried between steps, as in training
        ops.bucket_quantize_int8(grads, residual, records, scale)
        bucket_quantize_int8_reference(grads, r_ref, rec_ref, scale)
        assert torch.equal(records, rec_ref), f"step {step}"
        assert torch.equal(residual, r_ref), f"step {step}"


def test_records_residual_keeps_error_feedback_to_1_in_254():
    # v = grad + residual; after a step, dequant(records) + dequant(residual) is v but for what
    # storing the residual as int8 drops: at most half its step, s_r / 2 <= s / 508.
    N, C = 6, 256
    residual = _records_residual(N, C, 1e-3)
    v = torch.empty(N * C)
    bucket_dequantize_sum_reference(residual[None], v)
    g = torch.randn(N * C) * 0.01
    v = g * 0.5 + v
    records = torch.empty(N, C + 4, dtype=torch.uint8)
    ops.bucket_quantize_int8([g], residual, records, 0.5)
    sent, kept = torch.empty(N * C), torch.empty(N * C)
    bucket_dequantize_sum_reference(records[None], sent)
    bucket_dequantize_sum_reference(residual[None], kept)
    s = records_split(records)[1]
    err = (sent + kept - v).abs().view(N, C)
    assert (err <= s[:, None] / 508 * (1 + 1e-3) + 1e-12).all()
    assert (err.amax(dim=1) > 0).any()  # the storage does round: the bound is not vacuous


def test_quantize_int8_error_feedback_is_exact_bookkeeping(isa):
    # residual after = v - q * s exactly, so dequantized + residual reconstructs v (to fp32).
    C, N = 64, 10
    g = [torch.randn(N * C - 13)]
    residual = torch.randn(N * C) * 0.01
    v = residual.clone()
    v[:g[0].numel()] = g[0] * torch.tensor(0.5) + v[:g[0].numel()]
    records = torch.empty(N, C + 4, dtype=torch.uint8)
    ops.bucket_quantize_int8(g, residual, records, 0.5)
    out = torch.empty(N * C)
    ops.bucket_dequantize_sum(records.view(1, N, C + 4), out)
    torch.testing.assert_close(out + residual, v, rtol=1e-6, atol=1e-7)
    q, s = records_split(records)
    assert (q.abs() <= 127).all() and (q.abs().amax(dim=1) == 127).all()  # max hits 127
    assert (residual.abs().view(N, C) <= s[:, None] / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantize_int8_nonfinite_chunk_is_poisoned_and_contained(isa, bad):
    C, N = 32, 4
    g = torch.randn(N * C)
    g[C + 5] = bad  # chunk 1
    residual = torch.randn(N * C) * 0.01
    records = torch.empty(N, C + 4, dtype=torch.uint8)
    r_ref, rec_ref = residual.clone(), records.clone()
    ops.bucket_quantize_int8([g], residual, records, 1.0)
    bucket_quantize_int8_reference([g], r_ref, rec_ref, 1.0)
    q, s = records_split(records)
    assert torch.isnan(s[1]) and (q[1] == 0).all() and (residual[C:2 * C] == 0).all()
    assert torch.isfinite(s[[0, 2, 3]]).all()
    assert torch.equal(records, rec_ref) and torch.equal(residual, r_ref)
    out = torch.empty(N * C)
    ops.bucket_dequantize_sum(records.view(1, N, C + 4), out)
    assert torch.isnan(out[C:2 * C]).all() and torch.isfinite(out[:C]).all()


@pytest.mark.parametrize("W", [1, 2, 3, 8])
@pytest.mark.parametrize("C", [16, 40, 1024])
def test_dequantize_sum_matches_reference_exactly(isa, W, C):
    N = 5
    records = torch.empty(W, N, C + 4, dtype=torch.uint8)
    for w in range(W):
        residual = torch.zeros(N * C)
        ops.bucket_quantize_int8([torch.randn(N * C - 3) * (w + 1)], residual, records[w], 1.0)
    out, ref = torch.empty(N * C), torch.empty(N * C)
    ops.bucket_dequantize_sum(records, out)
    bucket_dequantize_sum_reference(records, ref)
    assert torch.equal(out, ref)


def test_zero_size_everything(isa):
    ops.bucket_pack([], torch.empty(0), 1.0)
    ops.bucket_unpack(torch.empty(0), [], 1.0)
    ops.bucket_pack([torch.empty(0)], torch.empty(3), 1.0)
    ops.bucket_quantize_int8([], torch.empty(0), torch.empty(0, 20, dtype=torch.uint8), 1.0)
    ops.bucket_dequantize_sum(torch.empty(2, 0, 20, dtype=torch.uint8), torch.empty(0))


def test_multithreaded_equals_single_threaded():
    grads = make_grads([300001, 5, 70000], DTYPES)
    prev = torch.get_num_threads()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        flat = torch.empty(370006, dtype=torch.bfloat16)
        ops.bucket_pack(grads, flat, 0.5)
        residual = torch.zeros(1024 * 362)
        records = torch.empty(362, 1028, dtype=torch.uint8)
        ops.bucket_quantize_int8(grads, residual, records, 0.5)
        results.append((flat, residual, records))
    torch.set_num_threads(prev)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_bad_input_errors():
    g = [torch.randn(10)]
    with pytest.raises(TypeError, match=r"grads\[0\] must be float32, bfloat16 or float16, got torch.int32"):
        torch.ops.scalenn.bucket_pack([torch.zeros(3, dtype=torch.int32)], torch.empty(3), 1.0)
    with pytest.raises(ValueError, match="flat must hold at least the 10 elements"):
        torch.ops.scalenn.bucket_pack(g, torch.empty(9), 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\] must be contiguous"):
        torch.ops.scalenn.bucket_pack([torch.randn(4, 4).t()], torch.empty(16), 1.0)
    with pytest.raises(ValueError, match="flat must be 1-D"):
        torch.ops.scalenn.bucket_unpack(torch.empty(2, 5), g, 1.0)
    with pytest.raises(TypeError, match="flat must be float32, bfloat16 or float16, got torch.float64"):
        torch.ops.scalenn.bucket_pack(g, torch.empty(10, dtype=torch.float64), 1.0)
    with pytest.raises(TypeError, match="records must be torch.uint8, got torch.int8"):
        torch.ops.scalenn.bucket_quantize_int8(g, torch.empty(16), torch.empty(1, 20, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="last dimension C \\+ 4"):
        torch.ops.scalenn.bucket_quantize_int8(g, torch.empty(0), torch.empty(1, 4, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="residual must have N \\* C = 16"):
        torch.ops.scalenn.bucket_quantize_int8(g, torch.empty(15), torch.empty(1, 20, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="do not fit in 1 chunks of 8"):
        torch.ops.scalenn.bucket_quantize_int8(g, torch.empty(8), torch.empty(1, 12, dtype=torch.uint8), 1.0)
    with pytest.raises(TypeError, match="residual must be torch.float32"):
        torch.ops.scalenn.bucket_quantize_int8(g, torch.empty(16).half(), torch.empty(1, 20, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="out must have records.size\\(1\\) \\* C = 32"):
        torch.ops.scalenn.bucket_dequantize_sum(torch.empty(2, 2, 20, dtype=torch.uint8), torch.empty(31))
    with pytest.raises(TypeError, match="grads must be a list of tensors"):
        ops.bucket_pack(torch.randn(3), torch.empty(3))


def test_opcheck():
    grads = [torch.randn(5, 3), torch.randn(7).bfloat16()]
    torch.library.opcheck(torch.ops.scalenn.bucket_pack.default, (grads, torch.empty(30), 0.5))
    torch.library.opcheck(torch.ops.scalenn.bucket_unpack.default,
                          (torch.randn(30), [torch.empty(5, 3), torch.empty(7).half()], 2.0))
    torch.library.opcheck(torch.ops.scalenn.bucket_quantize_int8.default,
                          (grads, torch.randn(32) * 0.01, torch.empty(2, 20, dtype=torch.uint8), 0.5))
    records = torch.empty(2, 20, dtype=torch.uint8)
    ops.bucket_quantize_int8(grads, torch.zeros(32), records, 1.0)
    torch.library.opcheck(torch.ops.scalenn.bucket_dequantize_sum.default,
                          (torch.stack([records, records]), torch.empty(32)))


def test_torch_compile_fullgraph():
    def step(grads, flat, out_grads):
        ops.bucket_pack(grads, flat, 0.5)
        ops.bucket_unpack(flat, out_grads, 2.0)
        return flat.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = [torch.randn(5, 3), torch.randn(7)]
    flat, outs = torch.empty(22), [torch.empty(5, 3), torch.empty(7)]
    compiled(grads, flat, outs)
    assert all(torch.equal(a, b) for a, b in zip(grads, outs))


def _random_records(W, N, C, magnitude=1.0):
    records = torch.empty(W, N, C + 4, dtype=torch.uint8)
    for w in range(W):
        residual = torch.zeros(N * C)
        ops.bucket_quantize_int8([torch.randn(N * C) * magnitude * (w + 1)], residual, records[w],
                                 1.0)
    return records


@pytest.mark.parametrize("W", [1, 2, 3])
@pytest.mark.parametrize("C", [16, 40, 1024])
@pytest.mark.parametrize("sizes", [[0], [1], [7, 0, 16, 17], [33, 5, 1000, 3]],
                         ids=lambda s: f"n{sum(s)}x{len(s)}")
def test_unpack_int8_matches_reference_exactly(isa, W, C, sizes):
    N = -(-max(1, sum(sizes)) // C) + 1
    records = _random_records(W, N, C)
    records[0, 0, C:] = torch.tensor([float("nan")]).view(torch.uint8)  # a poisoned chunk
    grads = [torch.empty(n, dtype=DTYPES[i % 3]) for i, n in enumerate(sizes)]
    ref = [torch.empty_like(g) for g in grads]
    ops.bucket_unpack_int8(records, grads)
    from scalenn._ops.bucket import bucket_unpack_int8_reference
    bucket_unpack_int8_reference(records, ref)
    assert all(equal_with_nan(a.float(), b.float()) for a, b in zip(grads, ref))


@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("C", [16, 33, 256])
def test_requantize_int8_matches_reference_exactly(isa, W, C):
    from scalenn._ops.bucket import bucket_requantize_int8_reference
    N = 9
    records = _random_records(W, N, C, magnitude=1e-2)
    records[W - 1, 3, C:] = torch.tensor([float("inf")]).view(torch.uint8)  # poisons chunk 3
    residual = torch.randn(N * C) * 1e-4
    out = torch.empty(N, C + 4, dtype=torch.uint8)
    r_ref, out_ref = residual.clone(), out.clone()
    for _ in range(2):
        ops.bucket_requantize_int8(records, residual, out)
        bucket_requantize_int8_reference(records, r_ref, out_ref)
        assert torch.equal(out, out_ref) and torch.equal(residual, r_ref)
    _, s = records_split(out)
    assert torch.isnan(s[3]) and torch.isfinite(s[[0, 1, 2, 4, 5, 6, 7, 8]]).all()
    # The same with the residual stored as records.
    residual = _records_residual(N, C, 1e-4)
    r_ref = residual.clone()
    for _ in range(2):
        ops.bucket_requantize_int8(records, residual, out)
        bucket_requantize_int8_reference(records, r_ref, out_ref)
        assert torch.equal(out, out_ref) and torch.equal(residual, r_ref)
    assert (records_split(residual)[0][3] == 0).all()  # the poisoned chunk keeps no residual


def test_int8_fused_ops_opcheck_and_errors():
    records = _random_records(2, 3, 16)
    torch.library.opcheck(torch.ops.scalenn.bucket_unpack_int8.default,
                          (records, [torch.empty(20), torch.empty(7).bfloat16()]))
    torch.library.opcheck(torch.ops.scalenn.bucket_requantize_int8.default,
                          (records, torch.zeros(48), torch.empty(3, 20, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="exceed the 3 chunks of 16"):
        torch.ops.scalenn.bucket_unpack_int8(records, [torch.empty(49)])
    with pytest.raises(ValueError, match=r"out must have shape \[3, 20\]"):
        torch.ops.scalenn.bucket_requantize_int8(records, torch.zeros(48),
                                                 torch.empty(2, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must be 3-D"):
        torch.ops.scalenn.bucket_requantize_int8(records[0], torch.zeros(48),
                                                 torch.empty(3, 20, dtype=torch.uint8))
    torch.library.opcheck(torch.ops.scalenn.bucket_requantize_int8.default,
                          (records, torch.zeros(3, 20, dtype=torch.uint8),
                           torch.empty(3, 20, dtype=torch.uint8)))
    with pytest.raises(ValueError, match=r"residual records must have shape \[3, 20\]"):
        torch.ops.scalenn.bucket_requantize_int8(records, torch.zeros(3, 21, dtype=torch.uint8),
                                                 torch.empty(3, 20, dtype=torch.uint8))
    with pytest.raises(TypeError, match="residual must be torch.float32 .* or torch.uint8"):
        torch.ops.scalenn.bucket_requantize_int8(records, torch.zeros(48, dtype=torch.int32),
                                                 torch.empty(3, 20, dtype=torch.uint8))


def test_quantize_int8_sign_of_zero_matches_reference(isa):
    # v = -0.0 exactly (e.g. -0 grads on a -0 residual): rint(-0 * inv) is -0 and the residual
    # -0 - (-0 * s) is +0 on every ISA, as in the reference (torch.equal ignores zero signs).
    C = 40
    g = torch.randn(3 * C)
    g[:C] = -0.0  # chunk 0: all -0 (amax 0)
    g[C:C + 7] = -0.0  # chunk 1: some -0 among non-zeros
    residual = torch.zeros(3 * C)
    residual[:2 * C] = -0.0
    records = torch.empty(3, C + 4, dtype=torch.uint8)
    r_ref, rec_ref = residual.clone(), records.clone()
    ops.bucket_quantize_int8([g], residual, records, 1.0)
    bucket_quantize_int8_reference([g], r_ref, rec_ref, 1.0)
    assert torch.equal(records, rec_ref)
    assert torch.equal(residual.view(torch.int32), r_ref.view(torch.int32))
