"""Wire formats of one bucket: how its gradients are packed, which collectives carry them, and
how the result is unpacked. One class per compression; all share the flat layout

    [gradients back to back | one "used" flag per parameter | padding]

The flags (1.0 where this rank produced a gradient for that parameter in this step, else 0.0)
travel in the same collective as the gradients, so learning which parameters were used on any
rank costs no extra round trip. Flags are never scaled by 1/W: the receiver sees how many ranks
used each parameter, exactly on the float wires (small integers are exact in bf16/fp16) and to
about 1e-6 on the int8 wire (flags get chunks of their own, so their scale is 1/127); "used"
means a sum above 0.5.

Collectives are started asynchronously (`launch`), optionally continued (`middle`, used by the
two-phase int8 exchange) and finished (`finish`) in bucket order on every rank, so ranks always
issue the same collectives in the same order.
"""
import datetime
from typing import List, Optional

import torch
import torch.distributed as dist

from .. import ops

COMPRESSIONS = (None, "bf16", "fp16", "int8")
WIRE_DTYPE = {None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CollectiveError(RuntimeError):
    """A collective failed or timed out (a peer rank died, stopped, or ran different code)."""


# torch >= 2.12 names it all_gather_single; older releases all_gather_into_tensor.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def wait_work(work, timeout: datetime.timedelta, what: str, rank: int) -> None:
    try:
        ok = work.wait(timeout)
    except Exception as exc:  # gloo/NCCL raise RuntimeError/DistBackendError with their detail
        raise CollectiveError(
            f"scalenn.distributed: {what} failed on rank {rank} (a peer rank may have died, "
            f"stopped, or be running a different model/step; timeout {timeout.total_seconds():g}s)"
            f": {exc}") from exc
    if ok is False:
        raise CollectiveError(f"scalenn.distributed: {what} did not finish on rank {rank} within "
                              f"{timeout.total_seconds():g}s (a peer rank may have stopped)")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FloatWire:
    """Uncompressed (float32) or cast (bf16/fp16) all-reduce of one flat buffer.

    The gradients are multiplied by 1/world_size while packing (so fp16 cannot overflow on the
    sum and the result is the mean), and the backend sums in the wire dtype (gloo and NCCL sum
    bf16/fp16 natively; with 2 ranks that is a single rounding)."""

    def __init__(self, numel: int, nflags: int, compression, group, world: int, device):
        self.numel, self.nflags, self.group, self.world = numel, nflags, group, world
        self.dtype = WIRE_DTYPE[compression]
        self.flat = torch.zeros(numel + nflags, dtype=self.dtype, device=device)
        self.work = None

    # -- the result after finish(): flag sums, non-finite check --
    def has_nonfinite(self) -> bool:
        return not bool(torch.isfinite(self.flat[:self.numel]).all())

    def flag_sums(self) -> torch.Tensor:
        return self.flat[self.numel:self.numel + self.nflags].float()

    def payload_bytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def sent_bytes(self) -> int:
        # ring all-reduce: every rank sends 2 (W-1)/W of the buffer
        return int(2 * (self.world - 1) / self.world * self.payload_bytes())

    def launch(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor],
               in_place: bool = False) -> None:
        if in_place:  # grads already live in self.flat (gradient-as-bucket-view mode)
            self.flat[:self.numel].mul_(1.0 / self.world)
        else:
            ops.bucket_pack(grads, self.flat, 1.0 / self.world)
        if flags is not None:
            self.flat[self.numel:].copy_(flags)
        self.work = dist.all_reduce(self.flat, group=self.group, async_op=True)

    def middle(self, timeout, rank: int, what: str) -> None:
        pass

    def finish(self, grads: Optional[List[torch.Tensor]], timeout, rank: int, what: str) -> None:
        work, self.work = self.work, None
        wait_work(work, timeout, what, rank)
        self.finish_local(grads)

    def finish_local(self, grads: Optional[List[torch.Tensor]]) -> None:
        """After the collective completed: write the mean into `grads` (if given)."""
        if grads:
            ops.bucket_unpack(self.flat, grads, 1.0)


class HalfFp32SumWire(FloatWire):
    """bf16/fp16 on the wire, summed in float32: all_to_all of the packed bucket, each rank sums
    its shard in fp32 and rounds once, all_gather of the shards. Same bytes per rank as a ring
    all-reduce, one rounding instead of W - 1, and it avoids gloo's slow fp16 summation."""

    def __init__(self, numel: int, nflags: int, compression, group, world: int, device):
        self.numel, self.nflags, self.group, self.world = numel, nflags, group, world
        self.dtype = WIRE_DTYPE[compression]
        padded = _ceil_div(numel + nflags, world) * world
        self.shard_len = padded // world
        self.flat = torch.zeros(padded, dtype=self.dtype, device=device)
        self.recv = torch.empty(padded, dtype=self.dtype, device=device)
        self.shard = torch.empty(self.shard_len, dtype=self.dtype, device=device)
        self.work = None

    def sent_bytes(self) -> int:
        return int(2 * (self.world - 1) / self.world * self.payload_bytes())

    def launch(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor],
               in_place: bool = False) -> None:
        ops.bucket_pack(grads, self.flat, 1.0 / self.world)
        if flags is not None:
            self.flat[self.numel:self.numel + self.nflags].copy_(flags)
        self.work = dist.all_to_all_single(self.recv, self.flat, group=self.group, async_op=True)

    def middle(self, timeout, rank: int, what: str) -> None:
        work, self.work = self.work, None
        wait_work(work, timeout, what + " (reduce-scatter phase)", rank)
        self.shard.copy_(torch.sum(self.recv.view(self.world, self.shard_len), dim=0,
                                   dtype=torch.float32))
        self.work = _all_gather_single(self.flat, self.shard, group=self.group, async_op=True)


def _residual(nchunks: int, chunk: int, device) -> torch.Tensor:
    """Error-feedback state for `nchunks` chunks: on the CPU int8 records like the wire's (the
    residual quantized per chunk, a quarter of float32's memory; what that storage drops is at
    most 1/254 of the residual, csrc/cpu/bucket_kernels.h), elsewhere float32 values."""
    if torch.device(device).type == "cpu":
        return torch.zeros(nchunks, chunk + 4, dtype=torch.uint8, device=device)
    return torch.zeros(nchunks * chunk, dtype=torch.float32, device=device)


class _Int8Records:
    """Shared pieces of the int8 wires: chunked layout, error-feedback quantization into
    records, flags and non-finite detection read straight from records."""

    def _layout(self, numel: int, nflags: int, chunk: int, multiple: int, device) -> None:
        grad_chunks = _ceil_div(numel, chunk)
        self.flag_offset = grad_chunks * chunk  # flags start a chunk of their own
        self.flag_chunks = _ceil_div(nflags, chunk)
        self.nchunks = _ceil_div(grad_chunks + self.flag_chunks, multiple) * multiple
        # Zeros between the last gradient and the flags, so the flags quantize as segments.
        self.flag_gap = torch.zeros(self.flag_offset - numel, device=device)

    def _quantize(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor]) -> None:
        if not self.error_feedback:
            self.residual.zero_()
        segments = list(grads)
        if self.nflags:
            # Flags are set, not accumulated: they carry no error feedback. Quantized with the
            # gradients' scale 1/W, so they go in multiplied by W.
            first = self.flag_offset // self.C
            (self.residual[first:] if self.residual.dtype == torch.uint8
             else self.residual[self.flag_offset:]).zero_()
            if flags is not None:
                segments += [self.flag_gap, flags * self.world]
        ops.bucket_quantize_int8(segments, self.residual, self.send, 1.0 / self.world)

    def _result_records(self) -> torch.Tensor:
        """[W', N, C + 4]: the record arrays whose sum is the averaged bucket."""
        raise NotImplementedError

    def flag_sums(self) -> torch.Tensor:
        records = self._result_records()
        first = self.flag_offset // self.C
        part = records[:, first:first + self.flag_chunks]
        out = torch.empty(self.flag_chunks * self.C, dtype=torch.float32,
                          device=records.device)
        ops.bucket_dequantize_sum(part.contiguous(), out)
        return out[:self.nflags]

    def has_nonfinite(self) -> bool:
        # q is a finite int8 and |s| <= FLT_MAX / 127, so a dequantized value is NaN/Inf exactly
        # when its chunk's scale is (the kernels poison a chunk's scale with NaN).
        scales = self._result_records()[..., -4:].contiguous().view(torch.float32)
        return not bool(torch.isfinite(scales).all())


class Int8Wire(_Int8Records):
    """Int8 with per-chunk scales and error feedback, as a reduce-scatter + all-gather.

    int8 cannot be summed by an all-reduce, so:
      1. quantize v = grad / W + residual into records (C int8 values + a float32 scale per
         chunk); residual = what quantization lost (error feedback, added to the next step);
      2. all_to_all_single: rank r receives every rank's records for its shard r;
      3. dequantize, sum in float32 and requantize the shard in one kernel (with a second,
         per-shard residual when error feedback is on);
      4. all_gather the requantized shards in place in the send buffer (free by then: the
         requantization writes this rank's shard straight into its slot); every rank
         dequantizes the same records straight into .grad, so all ranks agree bit for bit.
    Wire bytes: (C + 4) / C bytes per value and phase, vs 4 (fp32) or 2 (bf16). Memory, in
    copies of the float32 gradients: send and receive records 2 x (C + 4) / 4C, and the
    residuals (the state of error feedback) (1 + 1/W) x (C + 4) / 4C on the CPU (records),
    1 + 1/W elsewhere (float32): 0.88 copies at W = 2 on the CPU.
    """

    def __init__(self, numel: int, nflags: int, group, world: int, device, chunk: int,
                 error_feedback: bool):
        self.numel, self.nflags, self.group, self.world = numel, nflags, group, world
        self.C, self.error_feedback = chunk, error_feedback
        self._layout(numel, nflags, chunk, world, device)
        self.shard_chunks = self.nchunks // world
        C, N, S = chunk, self.nchunks, self.shard_chunks
        self.rank = dist.get_rank(group)
        self.residual = _residual(N, C, device)
        self.send = torch.empty(N, C + 4, dtype=torch.uint8, device=device)
        self.recv = torch.empty(N, C + 4, dtype=torch.uint8, device=device)
        self.shard_residual = _residual(S, C, device)
        self.work = None

    def _result_records(self) -> torch.Tensor:
        return self.send.view(1, self.nchunks, self.C + 4)  # all_gather lands in send

    def payload_bytes(self) -> int:
        return 2 * self.send.numel()

    def sent_bytes(self) -> int:
        # all_to_all and all_gather: every rank sends (W-1)/W of the full record array, twice
        return int(2 * (self.world - 1) / self.world * self.send.numel())

    def launch(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor],
               in_place: bool = False) -> None:
        self._quantize(grads, flags)
        self.work = dist.all_to_all_single(self.recv, self.send, group=self.group, async_op=True)

    def middle(self, timeout, rank: int, what: str) -> None:
        work, self.work = self.work, None
        wait_work(work, timeout, what + " (int8 reduce-scatter phase)", rank)
        self.reduce_shard_and_gather()

    def reduce_shard_and_gather(self) -> None:
        """After the all_to_all completed: sum this rank's shard in fp32 and requantize it (one
        kernel), then start the all_gather (self.work)."""
        if not self.error_feedback:
            self.shard_residual.zero_()
        S = self.shard_chunks
        mine = self.send[self.rank * S:(self.rank + 1) * S]
        ops.bucket_requantize_int8(self.recv.view(self.world, S, self.C + 4),
                                   self.shard_residual, mine)
        self.work = _all_gather_single(self.send, mine, group=self.group, async_op=True)

    def finish(self, grads: Optional[List[torch.Tensor]], timeout, rank: int, what: str) -> None:
        work, self.work = self.work, None
        wait_work(work, timeout, what + " (int8 all-gather phase)", rank)
        self.finish_local(grads)

    def finish_local(self, grads: Optional[List[torch.Tensor]]) -> None:
        if grads:
            ops.bucket_unpack_int8(self._result_records(), grads)


class Int8GatherWire(_Int8Records):
    """Int8 with per-chunk scales and error feedback in ONE collective: every rank all-gathers
    every rank's records and sums them in fp32 locally, straight into the gradients (the same
    records in the same order on every rank, so all ranks agree bit for bit).

    Used by the DDP comm hook: DDP's futures run callbacks on backend threads, and a second
    collective issued from a callback can interleave differently with the next bucket's on
    different ranks (a deadlock), so the hook needs a single-collective scheme. Bytes sent per
    rank: (W - 1) x records, the same as the two-phase scheme at W = 2, growing with W."""

    def __init__(self, numel: int, nflags: int, group, world: int, device, chunk: int,
                 error_feedback: bool):
        self.numel, self.nflags, self.group, self.world = numel, nflags, group, world
        self.C, self.error_feedback = chunk, error_feedback
        self._layout(numel, nflags, chunk, 1, device)
        C, N = chunk, self.nchunks
        self.residual = _residual(N, C, device)
        self.send = torch.empty(N, C + 4, dtype=torch.uint8, device=device)
        self.gathered = torch.empty(world * N, C + 4, dtype=torch.uint8, device=device)
        self.work = None

    def _result_records(self) -> torch.Tensor:
        return self.gathered.view(self.world, self.nchunks, self.C + 4)

    def payload_bytes(self) -> int:
        return self.send.numel() + self.gathered.numel()

    def sent_bytes(self) -> int:
        return (self.world - 1) * self.send.numel()

    def launch(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor],
               in_place: bool = False) -> None:
        self._quantize(grads, flags)
        self.work = _all_gather_single(self.gathered, self.send, group=self.group, async_op=True)

    def middle(self, timeout, rank: int, what: str) -> None:
        pass

    def finish(self, grads: Optional[List[torch.Tensor]], timeout, rank: int, what: str) -> None:
        work, self.work = self.work, None
        wait_work(work, timeout, what + " (int8 all-gather)", rank)
        self.finish_local(grads)

    def finish_local(self, grads: Optional[List[torch.Tensor]]) -> None:
        if grads:
            ops.bucket_unpack_int8(self._result_records(), grads)


def make_wire(numel: int, nflags: int, compression, group, world: int, device, chunk: int,
              error_feedback: bool, int8_single_collective: bool = False,
              half_sum_fp32: bool = False):
    if compression == "int8" and int8_single_collective:
        return Int8GatherWire(numel, nflags, group, world, device, chunk, error_feedback)
    if compression in ("bf16", "fp16") and half_sum_fp32:
        return HalfFp32SumWire(numel, nflags, compression, group, world, device)
    if compression == "int8":
        return Int8Wire(numel, nflags, group, world, device, chunk, error_feedback)
    return FloatWire(numel, nflags, compression, group, world, device)


def check_compression(compression) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of None, 'bf16', 'fp16', 'int8', got "
                         f"{compression!r}")
