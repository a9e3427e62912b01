"""scalenn.distributed without spawning processes: bucket planning and argument errors (the
multi-process behaviour is in test_distributed.py)."""
import pytest
import torch
import torch.distributed as dist

from scalenn.distributed import CompressedHookState, FusedAllReduce
from scalenn.distributed.buckets import plan_buckets


def test_plan_buckets_caps_and_order():
    numels = [10, 300, 20, 5, 1000, 7]
    order = [5, 4, 3, 2, 1, 0]
    # first cap 40 bytes (10 floats), then 1300 bytes (325 floats); oversized tensors alone
    got = plan_buckets(order, numels, bucket_bytes=1300, first_bucket_bytes=40)
    assert got == [[5], [4], [3, 2, 1], [0]]
    assert sorted(i for b in got for i in b) == list(range(6))
    assert plan_buckets([], [], 100, 10) == []
    assert plan_buckets([0, 1], [1, 1], 10**9, 10**9) == [[0, 1]]


def test_argument_errors_are_clear():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got Tensor"):
        FusedAllReduce(torch.zeros(3))
    with pytest.raises(ValueError, match="compression must be one of None, 'bf16', 'fp16', 'int8', got 'int4'"):
        FusedAllReduce(model, compression="int4")
    with pytest.raises(ValueError, match="bucket_mb must be a positive number of MB, got 0"):
        FusedAllReduce(model, bucket_mb=0)
    with pytest.raises(ValueError, match="int8_chunk must be an integer >= 16, got 8"):
        FusedAllReduce(model, int8_chunk=8)
    with pytest.raises(ValueError, match="grad_as_bucket_view needs the float32 wire"):
        FusedAllReduce(model, compression="bf16", grad_as_bucket_view=True)
    with pytest.raises(ValueError, match="compression must be one of"):
        CompressedHookState(compression="fp8")
    with pytest.raises(ValueError, match="transport must be 'auto', 'shm' or 'backend', got 'tcp'"):
        FusedAllReduce(model, transport="tcp")
    with pytest.raises(ValueError, match="int8 compression only pays on a network"):
        FusedAllReduce(model, compression="int8", transport="shm")


@pytest.mark.skipif(dist.is_available() and dist.is_initialized(),
                    reason="a process group already exists in this test process")
def test_needs_an_initialized_process_group():
    with pytest.raises(RuntimeError, match="call torch.distributed.init_process_group"):
        FusedAllReduce(torch.nn.Linear(4, 4))
