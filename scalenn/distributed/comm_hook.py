"""The same compressed all-reduce as a DDP communication hook, for users who keep DDP:

    state = scalenn.distributed.CompressedHookState(compression="int8")
    ddp.register_comm_hook(state, scalenn.distributed.compressed_hook)

DDP hands the hook one flat gradient bucket at a time (bucket.buffer()); the hook packs it with
the scalenn kernels (scale by 1/world_size and cast or quantize in one pass), runs the
collective(s) asynchronously and returns a future that resolves to the averaged bucket. Unlike
torch's bf16 hook this works on CPU/gloo; int8 keeps an error-feedback residual per DDP bucket
index (reset when DDP rebuilds its buckets and a bucket's size changes). Every scheme is ONE
collective per bucket issued from the hook itself (int8: all_gather of every rank's records,
summed locally in fp32), never one issued from a future's callback, whose order relative to the
next bucket's collective could differ between ranks.
"""
from typing import Dict, Optional

import torch
import torch.distributed as dist

from .wire import check_compression, make_wire


class CompressedHookState:
    """State of compressed_hook: the compression, per-bucket wire buffers and residuals, and
    byte counters (`payload_bytes` / `sent_bytes_per_rank` summed over all hook calls)."""

    def __init__(self, process_group=None, compression: Optional[str] = "bf16",
                 error_feedback: bool = True, int8_chunk: int = 1024):
        check_compression(compression)
        if isinstance(int8_chunk, bool) or not isinstance(int8_chunk, int) or int8_chunk < 16:
            raise ValueError(f"int8_chunk must be an integer >= 16, got {int8_chunk!r}")
        self.process_group = process_group
        self.compression = compression
        self.error_feedback = bool(error_feedback)
        self.int8_chunk = int8_chunk
        self.wires: Dict[int, object] = {}
        self.payload_bytes = 0
        self.sent_bytes_per_rank = 0

    def wire_for(self, index: int, buffer: torch.Tensor):
        wire = self.wires.get(index)
        if wire is None or wire.numel != buffer.numel():
            world = dist.get_world_size(self.process_group)
            wire = make_wire(buffer.numel(), 0, self.compression, self.process_group, world,
                             buffer.device, self.int8_chunk, self.error_feedback,
                             int8_single_collective=True)
            self.wires[index] = wire
        return wire


def compressed_hook(state: CompressedHookState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: mean of the bucket over ranks, compressed as `state.compression` says."""
    if not isinstance(state, CompressedHookState):
        raise TypeError(f"compressed_hook needs a scalenn.distributed.CompressedHookState as its "
                        f"state, got {type(state).__name__}")
    buffer = bucket.buffer()
    if buffer.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"compressed_hook: gradient bucket must be float32, bfloat16 or float16, "
                        f"got {buffer.dtype}")
    wire = state.wire_for(bucket.index(), buffer)
    state.payload_bytes += wire.payload_bytes()
    state.sent_bytes_per_rank += wire.sent_bytes()
    wire.launch([buffer], None)
    first, wire.work = wire.work, None

    def unpack(fut):
        fut.value()  # re-raises a failed collective
        wire.finish_local([buffer])
        return buffer
    return first.get_future().then(unpack)
