"""Data-parallel training on torch.distributed with a fused, bucketed, optionally compressed
gradient all-reduce (FusedAllReduce) and the same compression as a DDP comm hook."""
from .comm_hook import CompressedHookState, compressed_hook
from .fused_allreduce import FusedAllReduce
from .wire import CollectiveError

fused_hook = compressed_hook  # the name DESIGN.md uses

__all__ = ["FusedAllReduce", "compressed_hook", "fused_hook", "CompressedHookState",
           "CollectiveError"]
