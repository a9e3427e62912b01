"""scalenn::sparse_linear and its backward ops: every layout, every ISA, against the float64
plain-PyTorch reference; exact agreement across ISAs where the kernels promise it; odd, empty
and large shapes; NaN rows; bad input; opcheck; gradcheck (float64 reference path)."""
import pytest
import torch

import scalenn
from scalenn import _C
from scalenn._ops.sparse import (sparse_linear_grad_input_reference,
                                 sparse_linear_grad_values_reference, sparse_linear_reference)
from scalenn.compress.sparse_format import check_layout, pack, unpack

from conftest import supported_isas

LAYOUTS = ["csr", "bsr:4x4", "bsr:1x16", "bsr:2x3", "nm:2:4", "nm:1:3", "nm:3:8"]


def random_mask(layout, N, K, density=0.3):
    if layout.startswith("nm"):
        n, m = map(int, layout[3:].split(":"))
        score = torch.rand(N, K // m, m)
        keep = torch.zeros_like(score, dtype=torch.bool)
        keep.scatter_(2, score.topk(n, dim=2).indices, True)
        return keep.reshape(N, K)
    if layout.startswith("bsr"):
        R, C = map(int, layout[4:].split("x"))
        return (torch.rand(N // R, K // C) < density).repeat_interleave(R, 0).repeat_interleave(C, 1)
    return torch.rand(N, K) < density


def shape_for(layout, N, K):
    """Round N, K to what the layout needs (blocks divide the weight, M divides K)."""
    if layout.startswith("nm"):
        m = int(layout.split(":")[2])
        return N, max(m, K // m * m)
    if layout.startswith("bsr"):
        R, C = map(int, layout[4:].split("x"))
        return max(R, N // R * R), max(C, K // C * C)
    return N, K


def make(layout, N, K, density=0.3):
    N, K = shape_for(layout, N, K)
    w = torch.randn(N, K)
    p = pack(w, random_mask(layout, N, K, density), layout)
    return p, N, K


def ref_all(p, x, gy, bias, N, K):
    d = torch.float64
    y = sparse_linear_reference(x.to(d), p.values.to(d), p.indices, p.offsets,
                                None if bias is None else bias.to(d), p.layout, N, K)
    gx = sparse_linear_grad_input_reference(gy.to(d), p.values.to(d), p.indices, p.offsets,
                                            p.layout, K)
    gv = sparse_linear_grad_values_reference(gy.to(d), x.to(d), p.values.to(d), p.indices,
                                             p.offsets, p.layout, K)
    return y, gx, gv


def run_all(p, x, gy, bias, N, K):
    op = torch.ops.scalenn
    y = op.sparse_linear(x, p.values, p.indices, p.offsets, bias, p.layout, N, K)
    gx = op.sparse_linear_grad_input(gy, p.values, p.indices, p.offsets, p.layout, K)
    gv = op.sparse_linear_grad_values(gy, x, p.values, p.indices, p.offsets, p.layout, K)
    return y, gx, gv


def assert_close_f64(got, ref, K):
    # float32 sums of K products: allow a few ulps of the magnitude of the sum of |terms|
    tol = 2e-6 * max(1, K) ** 0.5 * 10
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=tol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M,N,K", [(1, 8, 48), (3, 12, 96), (4, 7, 50), (5, 16, 96),
                                   (17, 20, 48), (64, 9, 33), (130, 24, 144)])
def test_matches_reference_every_isa(isa, layout, M, N, K):
    p, N, K = make(layout, N, K)
    x, gy, bias = torch.randn(M, K), torch.randn(M, N), torch.randn(N)
    for got, ref, kk in zip(run_all(p, x, gy, bias, N, K), ref_all(p, x, gy, bias, N, K),
                            (K, N, M)):
        assert got.dtype == torch.float32
        assert_close_f64(got, ref, kk)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M", [1, 3, 9, 40, 70])
@pytest.mark.parametrize("K", [96, 296])  # N:M panels run in k-chunks of 128: 1 and 3 chunks
def test_identical_across_isas(layout, M, K):
    """Panel forward (M > 4) and grad_input accumulate each output with the same ordered FMA
    chain on every ISA: results are bit-identical."""
    isas = supported_isas()
    if len(isas) < 2:
        pytest.skip("only one ISA level on this CPU")
    p, N, K = make(layout, 24, K)
    x, gy = torch.randn(M, K), torch.randn(M, N)
    prev = _C.current_isa()
    outs = {}
    try:
        for name in isas:
            _C.set_cpu_isa(name)
            outs[name] = run_all(p, x, gy, None, N, K)
    finally:
        _C.set_cpu_isa(prev)
    first = outs[isas[0]]
    for name in isas[1:]:
        if M > 4:
            assert torch.equal(outs[name][0], first[0]), name
        assert torch.equal(outs[name][1], first[1]), name


def test_wide_inputs_16bit_and_32bit_indices(isa):
    # 40000 > 32767: 16-bit columns wrap in int16 storage and must be read as unsigned.
    for K, expect in ((40000, torch.int16), (70000, torch.int32)):
        w = torch.randn(5, K)
        mask = torch.rand(5, K) < 0.01
        mask[:, -1] = True
        p = pack(w, mask, "csr")
        assert p.indices.dtype == expect
        for M in (2, 6):
            x, gy = torch.randn(M, K), torch.randn(M, 5)
            for got, ref, kk in zip(run_all(p, x, gy, None, 5, K), ref_all(p, x, gy, None, 5, K),
                                    (K, 5, M)):
                assert_close_f64(got, ref, kk)


@pytest.mark.parametrize("layout", ["csr", "bsr:4x4", "nm:2:4"])
def test_large_shape(isa, layout):
    p, N, K = make(layout, 300, 1100, density=0.1)
    x, gy, bias = torch.randn(257, K), torch.randn(257, N), torch.randn(N)
    for got, ref, kk in zip(run_all(p, x, gy, bias, N, K), ref_all(p, x, gy, bias, N, K),
                            (K, N, 257)):
        assert_close_f64(got, ref, kk)


@pytest.mark.parametrize("layout", ["csr", "bsr:4x4", "nm:2:4"])
def test_thread_counts_give_identical_results(isa, layout):
    """Each output's sum does not depend on how rows and the activation packing (k ranges that
    split a 16-column block: K = 1203) are divided among threads."""
    p, N, K = make(layout, 203, 1203, density=0.1)
    x, gy, bias = torch.randn(37, K), torch.randn(37, N), torch.randn(N)
    prev = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_all(p, x, gy, bias, N, K))
    finally:
        torch.set_num_threads(prev)
    for got, ref, kk in zip(results[0], ref_all(p, x, gy, bias, N, K), (K, N, 37)):
        assert_close_f64(got, ref, kk)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["csr", "bsr:2x2", "nm:2:4"])
def test_empty_rows_all_zero_weight_and_zero_sizes(isa, layout):
    N, K = 8, 16
    w = torch.randn(N, K)
    mask = random_mask(layout, N, K, 0.5)
    mask[:2] = False  # 100%-pruned rows
    p = pack(w, mask, layout)
    bias = torch.randn(N)
    for M in (0, 1, 7):
        x = torch.randn(M, K)
        y = torch.ops.scalenn.sparse_linear(x, p.values, p.indices, p.offsets, bias, layout, N, K)
        assert y.shape == (M, N)
        assert_close_f64(y, sparse_linear_reference(x.double(), p.values.double(), p.indices,
                                                    p.offsets, bias.double(), layout, N, K), K)
        if M:
            assert torch.equal(y[:, :2], bias[:2].expand(M, 2))
    z = pack(torch.zeros(N, K), None, layout)  # all-zero weight
    x = torch.randn(6, K)
    y = torch.ops.scalenn.sparse_linear(x, z.values, z.indices, z.offsets, bias, layout, N, K)
    assert torch.equal(y, bias.expand(6, N))
    # K = 0 and N = 0
    e = pack(torch.zeros(3, 0), None, "csr")
    y = torch.ops.scalenn.sparse_linear(torch.randn(5, 0), e.values, e.indices, e.offsets, None,
                                        "csr", 3, 0)
    assert torch.equal(y, torch.zeros(5, 3))
    e = pack(torch.zeros(0, 4), None, "csr")
    y = torch.ops.scalenn.sparse_linear(torch.randn(5, 4), e.values, e.indices, e.offsets, None,
                                        "csr", 0, 4)
    assert y.shape == (5, 0)


@pytest.mark.parametrize("layout", ["csr", "bsr:1x16", "nm:2:4"])
@pytest.mark.parametrize("M", [3, 20])
def test_nan_stays_in_its_row(isa, layout, M):
    p, N, K = make(layout, 16, 64, density=0.5)
    x = torch.randn(M, K)
    x[1, :] = float("nan")
    x[2, 5] = float("inf")
    y = torch.ops.scalenn.sparse_linear(x, p.values, p.indices, p.offsets, None, layout, N, K)
    clean = [m for m in range(M) if m not in (1, 2)]
    assert torch.isnan(y[1]).any() or p.values.numel() == 0
    ref = sparse_linear_reference(x[clean].double(), p.values.double(), p.indices, p.offsets,
                                  None, layout, N, K)
    assert_close_f64(y[clean], ref, K)


def test_bad_input():
    p, N, K = make("csr", 8, 32)
    op = torch.ops.scalenn.sparse_linear
    x = torch.randn(3, K)
    with pytest.raises(TypeError, match="float32"):
        op(x.double(), p.values, p.indices, p.offsets, None, "csr", N, K)
    with pytest.raises(ValueError, match="columns"):
        op(torch.randn(3, K + 1), p.values, p.indices, p.offsets, None, "csr", N, K)
    with pytest.raises(ValueError, match="offsets"):
        op(x, p.values, p.indices, p.offsets[:-1], None, "csr", N, K)
    with pytest.raises(ValueError, match="layout"):
        op(x, p.values, p.indices, p.offsets, None, "coo", N, K)
    with pytest.raises(ValueError, match="layout"):
        op(x, p.values, p.indices, p.offsets, None, "bsr:0x4", N, K)
    with pytest.raises(ValueError, match="bias"):
        op(x, p.values, p.indices, p.offsets, torch.randn(N + 1), "csr", N, K)
    with pytest.raises(TypeError, match="indices"):
        op(x, p.values, p.indices.long(), p.offsets, None, "csr", N, K)
    q, N2, K2 = make("nm:2:4", 8, 32)
    with pytest.raises(ValueError, match="divisible"):
        op(torch.randn(2, 30), q.values, q.indices, q.offsets, None, "nm:2:4", N2, 30)
    with pytest.raises(ValueError, match="2-D"):
        op(torch.randn(K), p.values, p.indices, p.offsets, None, "csr", N, K)
    with pytest.raises(ValueError, match="divide"):
        pack(torch.randn(6, 8), None, "bsr:4x4")
    with pytest.raises(ValueError, match="N:M"):
        pack(torch.randn(6, 10), None, "nm:2:4")
    with pytest.raises(ValueError, match="more than 2"):
        pack(torch.randn(6, 8), torch.ones(6, 8), "nm:2:4")
    # layouts read from files are validated before any kernel runs
    bad = p.indices.clone()
    bad[0] = K  # out of range
    with pytest.raises(ValueError, match="out of range"):
        check_layout(p.values, bad, p.offsets, "csr", N, K)
    off = p.offsets.clone()
    off[3] = off[4] + 1
    with pytest.raises(ValueError, match="offsets"):
        check_layout(p.values, p.indices, off, "csr", N, K)


@pytest.mark.parametrize("layout", ["csr", "bsr:2x4", "nm:2:4"])
def test_opcheck(layout):
    p, N, K = make(layout, 12, 32)
    x = torch.randn(6, K, requires_grad=True)
    values = p.values.clone().requires_grad_(True)
    bias = torch.randn(N, requires_grad=True)
    torch.library.opcheck(torch.ops.scalenn.sparse_linear,
                          (x, values, p.indices, p.offsets, bias, layout, N, K))
    torch.library.opcheck(torch.ops.scalenn.sparse_linear,
                          (x.detach()[:2], p.values, p.indices, p.offsets, None, layout, N, K))
    gy = torch.randn(6, N)
    torch.library.opcheck(torch.ops.scalenn.sparse_linear_grad_input,
                          (gy, p.values, p.indices, p.offsets, layout, K))
    torch.library.opcheck(torch.ops.scalenn.sparse_linear_grad_values,
                          (gy, x.detach(), p.values, p.indices, p.offsets, layout, K))


@pytest.mark.parametrize("layout", ["csr", "bsr:2x2", "nm:2:4"])
def test_gradcheck_float64_reference_path(layout):
    p, N, K = make(layout, 6, 8, density=0.5)
    x = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    values = p.values.double().requires_grad_(True)
    bias = torch.randn(N, dtype=torch.float64, requires_grad=True)
    fn = lambda x, v, b: scalenn.ops.sparse_linear(x, v, p.indices, p.offsets, b, layout, N, K)
    assert torch.autograd.gradcheck(fn, (x, values, bias))


@pytest.mark.parametrize("layout", ["csr", "bsr:2x3", "nm:2:4", "nm:1:3"])
@pytest.mark.parametrize("M", [2, 33])
def test_kernel_autograd_matches_reference_autograd(isa, layout, M):
    """Backward through the kernels = backward of the float64 reference: gradients reach x, the
    stored values (only) and bias."""
    p, N, K = make(layout, 16, 48)
    x = torch.randn(M, K)
    gy = torch.randn(M, N)
    bias = torch.randn(N)
    grads = []
    for dtype in (torch.float32, torch.float64):
        xi = x.to(dtype).clone().requires_grad_(True)
        vi = p.values.to(dtype).clone().requires_grad_(True)
        bi = bias.to(dtype).clone().requires_grad_(True)
        y = scalenn.ops.sparse_linear(xi, vi, p.indices, p.offsets, bi, layout, N, K)
        (y * gy.to(dtype)).sum().backward()
        grads.append((xi.grad, vi.grad, bi.grad))
    for got, ref, kk in zip(grads[0], grads[1], (N, M, M)):
        assert got.shape == ref.shape
        assert_close_f64(got, ref, kk)


def test_roundtrip_pack_unpack_every_layout():
    for layout in LAYOUTS:
        N, K = shape_for(layout, 20, 48)
        w = torch.randn(N, K)
        mask = random_mask(layout, N, K)
        p = pack(w, mask, layout)
        check_layout(p.values, p.indices, p.offsets, layout, N, K)
        assert torch.equal(unpack(p.values, p.indices, p.offsets, layout, N, K), w * mask)
