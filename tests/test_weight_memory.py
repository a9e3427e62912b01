"""Packed weights on transparent huge pages (csrc/cpu/weight_memory.h): the copy is exact, big
tensors land on a 2 MiB boundary, small ones and other devices are left alone, and Int8Linear's
packed weight (the one user) survives construction, state_dict loading, deepcopy and forward."""
import copy
import sys

import pytest
import torch
import torch.nn as nn

from scalenn import _C
from scalenn.nn.int8_linear import Int8Linear
from scalenn.nn.layer_helpers import weight_memory

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
