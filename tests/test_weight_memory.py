"""Packed weights on transparent huge pages (csrc/cpu/weight_memory.h): the copy is exact, big
tensors land on a 2 MiB boundary, small ones and other devices are left alone, and the packed
weights of Int8Linear (one tensor) and SparseInt8Linear (rel, values and base in one buffer)
survive construction, state_dict loading, save/load, deepcopy, share_memory and forward."""
import copy
import sys

import pytest
import torch
import torch.nn as nn

from scalenn import _C
from scalenn.nn.int8_linear import Int8Linear
import scalenn
from scalenn.nn.layer_helpers import weight_memory, weight_memory_together
from scalenn.nn.sparse_int8_linear import SparseInt8Linear

HUGE = 2 << 20


@pytest.mark.parametrize("nbytes", [HUGE * 9 // 10, HUGE, 5 * HUGE // 2, 3 * HUGE + 4])
def test_copy_is_exact_and_aligned(nbytes):
    t = torch.randint(-128, 128, (nbytes,), dtype=torch.int8)
    h = weight_memory(t)
    assert torch.equal(h, t) and h.data_ptr() != t.data_ptr()
    if sys.platform.startswith("linux"):
        assert h.data_ptr() % HUGE == 0
    h.add_(1)  # writable, and independent of the source
    assert torch.equal(h, t + 1)


def test_small_and_non_cpu_tensors_are_left_alone():
    small = torch.ones(1000)
    assert weight_memory(small) is small
    under = torch.ones(HUGE // 4 * 3 // 4)  # 1.5 MiB: a whole huge page would waste > 1/8
    assert _C.to_weight_memory(under) is under
    meta = torch.empty(4 << 20, device="meta")
    assert weight_memory(meta) is meta
    strided = torch.randn(1024, 1024)[:, ::2]  # 2 MiB, not contiguous: copied contiguously
    assert torch.equal(weight_memory(strided), strided)
    assert _C.to_weight_memory(strided) is not None


def test_int8_linear_packed_weight_on_huge_pages_round_trips():
    lin = nn.Linear(2048, 1024)
    m = Int8Linear.from_dense(lin)
    if sys.platform.startswith("linux"):
        assert m._packed.data_ptr() % HUGE == 0
    x = torch.randn(3, 2048)
    y = m(x)
    fresh = Int8Linear(2048, 1024)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), y)
    assert torch.equal(copy.deepcopy(m)(x), y)


def test_together_views_are_exact_aligned_and_independent():
    a = torch.randint(0, 256, (1_500_003,), dtype=torch.uint8)  # odd length: padded to 64
    b = torch.randint(-127, 128, (700, 999), dtype=torch.int8)
    c = torch.randint(-2**15, 2**15, (4097,), dtype=torch.int16)
    ha, hb, hc = weight_memory_together(a, b, c)
    for h, t in ((ha, a), (hb, b), (hc, c)):
        assert h.dtype == t.dtype and h.shape == t.shape and torch.equal(h, t)
        assert h.data_ptr() % 64 == 0 and h.data_ptr() != t.data_ptr()
    assert ha.untyped_storage().data_ptr() == hc.untyped_storage().data_ptr()
    assert ha.data_ptr() + ha.numel() <= hb.data_ptr()  # back to back, never overlapping
    assert hb.data_ptr() + hb.numel() <= hc.data_ptr()
    if sys.platform.startswith("linux"):
        assert ha.data_ptr() % HUGE == 0
    small = (torch.ones(10, dtype=torch.uint8), torch.ones(10, dtype=torch.int8))
    under = (torch.ones(1_200_000, dtype=torch.uint8), torch.ones(400_000, dtype=torch.int8))
    meta = (torch.empty(4 << 20, dtype=torch.uint8, device="meta"),)
    for left_alone in (small, under, meta):  # too small, < 2 MiB (to_weight_memory), not CPU
        assert all(h is t for h, t in zip(weight_memory_together(*left_alone), left_alone))


def _sparse_int8_layer(format, n=2048, k=2048, density=0.5):
    lin = nn.Linear(k, n)
    mask = torch.rand(n, k // 4).repeat_interleave(4, dim=1) < density  # 1x4 blocks
    return SparseInt8Linear.from_dense(lin, mask, format=format)


def _storage(t):
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("format", ["elem16", "quad"])
def test_sparse_int8_linear_weight_layout_round_trips(format, tmp_path):
    m = _sparse_int8_layer(format)
    values, rel, base = m.values, m.rel, m.base
    assert values.numel() + rel.numel() >= 5 << 19  # 2.5 MiB: big enough for huge pages
    if format == "elem16":  # one stream: each step's 64 rel bytes, then its 64 values
        assert values.shape == rel.shape == (base.numel(), 64)
        assert values.stride() == rel.stride() == (128, 1)
        assert values.data_ptr() == rel.data_ptr() + 64
    else:  # rel, values and base back to back in one buffer
        assert values.dim() == rel.dim() == 1
        assert _storage(rel) == _storage(values) == _storage(base)
    if sys.platform.startswith("linux"):
        assert rel.data_ptr() % HUGE == 0
    x = torch.randn(5, 2048)
    y = m(x)
    # The plain 1-D arrays in ordinary memory give the same result.
    state = m.state_dict()
    assert state["values"].shape == (values.numel(),) and state["rel"].shape == (rel.numel(),)
    assert torch.equal(state["values"], values.reshape(-1))
    plain = (state["values"].clone(), state["rel"].clone(), state["base"].clone(),
             m.row_offsets, m.row_order)
    y_plain = torch.ops.scalenn.sparse_int8_linear(x, *plain, m.weight_scale, m.bias, format)
    assert torch.equal(y_plain, y)
    scalenn.save(nn.Sequential(m), str(tmp_path / "m.safetensors"))
    loaded = scalenn.load(nn.Sequential(nn.Linear(2048, 2048)), str(tmp_path / "m.safetensors"))
    assert torch.equal(loaded(x), y)
    assert loaded[0].values.shape == values.shape and loaded[0].rel.stride() == rel.stride()
    twin = SparseInt8Linear.from_config(m.compression_config())
    twin.load_state_dict(state)
    assert torch.equal(twin(x), y)
    deep = copy.deepcopy(m)  # ordinary memory, same layout, until placed again
    assert torch.equal(deep(x), y) and deep.rel.stride() == rel.stride()
    deep.place_weights()
    assert torch.equal(deep(x), y)
    if sys.platform.startswith("linux"):
        assert deep.rel.data_ptr() % HUGE == 0
    shared = copy.deepcopy(m).share_memory()  # stays in the shared storage
    assert shared.values.is_shared() and torch.equal(shared(x), y)
