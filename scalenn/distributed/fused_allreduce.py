"""FusedAllReduce: bucketed, backward-overlapped, optionally compressed gradient averaging on
torch.distributed (gloo on CPUs, NCCL on GPUs), for a plain nn.Module - no DDP wrapper needed.

    sync = scalenn.distributed.FusedAllReduce(model, compression="bf16")
    for x, y in data:
        loss = loss_fn(model(x), y)
        loss.backward()        # buckets are packed and sent while backward still runs
        sync.wait()            # all buckets done; .grad holds the mean over ranks
        optimizer.step(); optimizer.zero_grad()

How it works: every trainable parameter gets a post-accumulate-grad hook. When the last
gradient of a bucket arrives, one C++ kernel packs the bucket's gradients into a preallocated
flat buffer, multiplying by 1/world_size and casting (bf16/fp16) or quantizing (int8 with error
feedback) in the same pass, and an asynchronous collective starts at once. Buckets are sent in
bucket order on every rank (a bucket that is ready early waits for its predecessors), so all
ranks issue identical collective sequences. After the first step the buckets are rebuilt once
from the order in which gradients actually became ready, as observed and broadcast by rank 0.

Parameters without a gradient in a step (unused in the forward) contribute zeros; a per-
parameter "used" flag rides in the same collective, so every rank agrees: a parameter unused on
all ranks keeps its .grad untouched (None stays None), one used on any rank gets the mean.
"""
import contextlib
import datetime
import weakref
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .. import ops
from .buckets import plan_buckets
from .model_check import check_same_model
from .shm import SHM_DIR, ShmBuckets, ShmWire, Topology
from .wire import check_compression, make_wire, wait_work

_MB = 2**20
_LIVE: "weakref.WeakSet[FusedAllReduce]" = weakref.WeakSet()
_OPTIMIZER_HOOK = None


def _optimizer_step_guard(optimizer, args, kwargs):
    """Global optimizer step pre-hook: refuse a step on gradients that are still in flight."""
    for sync in list(_LIVE):
        if sync._state != "backward":
            continue
        for group in optimizer.param_groups:
            if any(id(p) in sync._param_ids for p in group["params"]):
                raise RuntimeError(
                    "scalenn.distributed.FusedAllReduce: optimizer.step() called before "
                    "sync.wait(): the gradients are still being averaged across ranks. Call "
                    "sync.wait() after backward() and before the step.")


def _as_timedelta(timeout) -> datetime.timedelta:
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"timeout must be seconds (a number) or a datetime.timedelta, got "
                        f"{type(timeout).__name__}")
    if not seconds > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {seconds}")
    return datetime.timedelta(seconds=seconds)


class _Bucket:
    def __init__(self, index: int, members: List[int], numels: List[int], wire):
        self.index = index
        self.members = members  # parameter indices, in flat-buffer order
        self.numels = [numels[i] for i in members]
        self.wire = wire
        self.flags = torch.ones(len(members), dtype=torch.float32)
        self.pending = len(members)
        self.launched = False


class FusedAllReduce:
    """Averages the gradients of `model`'s trainable parameters across the ranks of
    `process_group` (default: the world), overlapped with the backward pass.

    Args:
        model: the nn.Module every rank trains (same parameters everywhere; checked).
        process_group: a torch.distributed group, or None for the default group.
        bucket_mb: bucket size cap in MB of float32 gradients (default 25).
        first_bucket_mb: cap of the first bucket (the last layers, whose gradients are ready
            first), so communication starts early (default 1).
        compression: None (float32 on the wire), "bf16", "fp16" (cast on the wire, mean in the
            wire dtype), or "int8" (per-chunk scales, reduce-scatter + all-gather, fp32 sums).
        error_feedback: for "int8": add what quantization lost to the next step's gradient
            (both for the local and for the per-shard requantization). Ignored otherwise.
        timeout: seconds (or timedelta) to wait for any collective before raising
            CollectiveError (a peer rank died or stopped; a peer whose process died is
            usually noticed sooner: gloo sees its sockets close, the shared-memory transport
            its lock go).
        grad_as_bucket_view: (float32 wire only) make each .grad a view into its bucket, so
            gradients are accumulated in place and no unpack copy is needed. Use
            optimizer.zero_grad(set_to_none=False) with it, or the views get replaced (and
            restored by a copy) every step.
        broadcast_parameters: copy rank 0's parameters and buffers to every rank at
            construction (default True), as DDP does.
        int8_chunk: values per int8 scale (default 1024; the scale costs 4 bytes per chunk).
        half_sum_fp32: for "bf16"/"fp16": sum in float32 (all_to_all, fp32 shard sums, one
            rounding, all_gather) instead of an all-reduce that sums in the wire dtype (the
            default). More accurate with many ranks; on gloo over loopback it measured slower
            for bf16 and even for fp16 (benchmarks/results/allreduce.md), so it is opt-in.
        transport: "auto" (default), "shm" or "backend". "shm" averages the buckets through a
            shared-memory file among the ranks of each machine (scalenn/distributed/shm.py: no
            sockets, float32 sums, one rounding) and, with several machines, all-reduces each
            rank's shard between machines with the backend ("shm+backend"; the same number of
            ranks on every machine). "backend" always uses the process group's collectives.
            "auto" takes shared memory for gloo groups with compression None/"bf16"/"fp16"
            where the machines allow it and the backend otherwise (int8 exists to save network
            bytes; through shared memory it would only add rounding). The choice is in
            `self.transport`: "shm", "shm+backend" or "backend".

    Attributes after wait(): `found_inf` (any non-finite averaged gradient), `last_bytes`
    (bytes handed to collectives and bytes each rank sent in the last step), `buckets`.
    """

    def __init__(self, model: torch.nn.Module, process_group=None, bucket_mb: float = 25.0,
                 first_bucket_mb: float = 1.0, compression: Optional[str] = None,
                 error_feedback: bool = True, timeout=300.0, grad_as_bucket_view: bool = False,
                 broadcast_parameters: bool = True, int8_chunk: int = 1024,
                 half_sum_fp32: bool = False, transport: str = "auto"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_compression(compression)
        for name, v in (("bucket_mb", bucket_mb), ("first_bucket_mb", first_bucket_mb)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number of MB, got {v!r}")
        if isinstance(int8_chunk, bool) or not isinstance(int8_chunk, int) or int8_chunk < 16:
            raise ValueError(f"int8_chunk must be an integer >= 16, got {int8_chunk!r}")
        if transport not in ("auto", "shm", "backend"):
            raise ValueError(f"transport must be 'auto', 'shm' or 'backend', got {transport!r}")
        if transport == "shm" and compression == "int8":
            raise ValueError("transport='shm' carries float32/bf16/fp16 buckets; int8 compression "
                             "only pays on a network: use transport='backend' (or 'auto')")
        if grad_as_bucket_view and compression is not None:
            raise ValueError(f"grad_as_bucket_view needs the float32 wire (compression=None), "
                             f"got compression={compression!r}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("scalenn.distributed.FusedAllReduce needs torch.distributed: call "
                               "torch.distributed.init_process_group(...) first (torchrun sets "
                               "the environment for init_method='env://')")
        self.model = model
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world = dist.get_world_size(process_group)
        self.compression = compression
        self.error_feedback = bool(error_feedback)
        self.timeout = _as_timedelta(timeout)
        self.grad_as_bucket_view = bool(grad_as_bucket_view)
        self.int8_chunk = int8_chunk
        self.half_sum_fp32 = bool(half_sum_fp32)
        self.bucket_bytes = int(bucket_mb * _MB)
        self.first_bucket_bytes = int(first_bucket_mb * _MB)
        self._src = dist.get_global_rank(process_group, 0) if process_group is not None else 0

        # NCCL takes GPU tensors only; gloo takes CPU ones.
        backend = str(dist.get_backend(process_group)).lower()
        first = next(iter(model.parameters()), None)
        self._comm_device = (first.device if backend == "nccl" and first is not None
                             else torch.device("cpu"))
        if transport == "shm" and (backend != "gloo" or self._comm_device.type != "cpu"):
            raise ValueError(f"transport='shm' needs a gloo process group and CPU parameters, "
                             f"got backend {backend!r} on {self._comm_device}")
        # The same-host transport is tried at each bucket plan (_build); "backend" if refused.
        self._try_shm = (transport == "shm" or (
            transport == "auto" and backend == "gloo" and self._comm_device.type == "cpu"
            and compression in (None, "bf16", "fp16")))
        self._require_shm = transport == "shm"
        check_same_model(model, process_group, self.rank, self.world, self._comm_device)
        self._shm_groups = None  # (this machine's group, rank, size; the cross-machine group)
        if self._try_shm:
            self._shm_groups = self._shared_memory_groups()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameters with requires_grad=True to synchronize")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._param_ids = {id(p) for p in self.params}
        devices = {p.device for p in self.params}
        if len(devices) != 1:
            raise ValueError(f"all trainable parameters must be on one device, got {sorted(map(str, devices))}")
        self.device = devices.pop()
        for n, p in named:
            if p.dtype not in ops.FLOAT_DTYPES:
                raise TypeError(f"parameter {n!r} must be float32, bfloat16 or float16, got {p.dtype}")
        if grad_as_bucket_view and any(p.dtype != torch.float32 for p in self.params):
            raise ValueError("grad_as_bucket_view needs float32 parameters (the bucket is "
                             "float32), got " + ", ".join(sorted({str(p.dtype) for p in self.params})))
        self.numels = [p.numel() for p in self.params]

        # Before any gradient exists: reverse registration order (roughly backward order).
        self._build(list(reversed(range(len(self.params)))))
        if broadcast_parameters:
            self._broadcast_from_rank0()

        self._state = "idle"  # "backward" between the first gradient of a step and wait()
        self._sync_enabled = True
        self._touched = [False] * len(self.params)  # got a gradient since the last wait()
        self._fired = [False] * len(self.params)    # got a gradient in this synced backward
        self._next_launch = 0
        self._next_poll = 0  # first bucket the shared-memory transport may still advance
        self._rebuilt = False
        self._order: List[int] = []
        self._order_seen = [False] * len(self.params)
        self._synced_once = False
        self._found_inf: Optional[bool] = None
        self.last_bytes: Dict[str, int] = {}
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i))
                       for i, p in enumerate(self.params)]
        global _OPTIMIZER_HOOK
        if _OPTIMIZER_HOOK is None:
            _OPTIMIZER_HOOK = register_optimizer_step_pre_hook(_optimizer_step_guard)
        _LIVE.add(self)

    def _refuse_shm(self, why: str) -> None:
        if self._require_shm:
            raise RuntimeError(f"scalenn.distributed.FusedAllReduce: transport='shm' but {why}")

    def _shared_memory_groups(self):
        topo = Topology(self.group, self.rank, self.world)
        if topo.mode is None:
            self._refuse_shm("the machines hold different numbers of ranks, or one rank each "
                             f"(or lack {SHM_DIR})")
            return None
        if topo.mode == "shm":
            return self.group, self.rank, self.world, None
        local, cross = topo.subgroups(self.group)
        return local, topo.local_rank, len(topo.local), cross

    def _shared_memory_plan(self, groups: List[List[int]]) -> Optional[ShmBuckets]:
        """The shared region for this bucket plan, or None (then on every rank) to use the
        backend."""
        local, local_rank, local_world, cross = self._shm_groups
        sizes = [sum(self.numels[i] for i in members) + len(members) for members in groups]
        plan = ShmBuckets(sizes, self.compression, local, local_rank, local_world, self.timeout,
                          cross_group=cross, total_world=self.world)
        ok = torch.tensor([int(plan.region is not None)], dtype=torch.int64)
        if cross is not None:  # every machine must agree, or the collectives would differ
            dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=self.group)
        if not int(ok[0]):
            self._refuse_shm(f"some ranks could not map a shared file (no {SHM_DIR}, or too "
                             "little space in it)")
            return None
        return plan

    # ------------------------------------------------------------------ buckets
    def _build(self, order: List[int]) -> None:
        groups = plan_buckets(order, self.numels, self.bucket_bytes, self.first_bucket_bytes)
        shm = self._shared_memory_plan(groups) if self._shm_groups is not None else None
        self.transport = ("backend" if shm is None else
                          "shm" if shm.cross_group is None else "shm+backend")
        self.buckets: List[_Bucket] = []
        self._bucket_of = [0] * len(self.params)
        self._offset_in_bucket = [0] * len(self.params)
        for bi, members in enumerate(groups):
            numel = sum(self.numels[i] for i in members)
            if shm is not None:
                wire = ShmWire(numel, len(members), shm, bi)
            else:
                wire = make_wire(numel, len(members), self.compression, self.group, self.world,
                                 self.device, self.int8_chunk, self.error_feedback,
                                 half_sum_fp32=self.half_sum_fp32)
            self.buckets.append(_Bucket(bi, members, self.numels, wire))
            off = 0
            for i in members:
                self._bucket_of[i] = bi
                self._offset_in_bucket[i] = off
                off += self.numels[i]
        if self.grad_as_bucket_view:
            for i, p in enumerate(self.params):
                view = self._view(i)
                if p.grad is not None:
                    view.copy_(p.grad)
                else:
                    view.zero_()
                p.grad = view

    def _view(self, i: int) -> torch.Tensor:
        b = self.buckets[self._bucket_of[i]]
        off = self._offset_in_bucket[i]
        return b.wire.flat[off:off + self.numels[i]].view(self.params[i].shape)

    @torch.no_grad()
    def _broadcast_from_rank0(self) -> None:
        for b in self.buckets:
            data = [self.params[i].detach() for i in b.members]
            flat = torch.empty(sum(b.numels), dtype=torch.float32, device=self.device)
            ops.bucket_pack(data, flat, 1.0)
            dist.broadcast(flat, src=self._src, group=self.group)
            ops.bucket_unpack(flat, data, 1.0)
        for buf in self.model.buffers():
            if buf.device == self.device:  # the backend's device (gloo: CPU, NCCL: the GPU)
                dist.broadcast(buf, src=self._src, group=self.group)

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, i: int):
        def hook(param: torch.Tensor) -> None:
            self._on_grad(i)
        return hook

    def _on_grad(self, i: int) -> None:
        self._touched[i] = True
        if not self._rebuilt and not self._order_seen[i]:
            self._order_seen[i] = True
            self._order.append(i)
        if not self._sync_enabled:
            return
        if self._state == "idle":
            self._begin_step()
        b = self.buckets[self._bucket_of[i]]
        if self._fired[i]:
            if b.launched:
                raise RuntimeError(
                    f"scalenn.distributed.FusedAllReduce: parameter {self.names[i]!r} got a "
                    f"second gradient after its bucket was sent: backward() ran again before "
                    f"sync.wait(). Call wait() after each backward, or accumulate inside "
                    f"`with sync.no_sync():`")
            return
        self._fired[i] = True
        b.pending -= 1
        if b.pending == 0:
            self._launch_ready()

    def _begin_step(self) -> None:
        self._state = "backward"
        self._fired = [False] * len(self.params)
        for b in self.buckets:
            b.pending = len(b.members)
            b.launched = False
        self._next_launch = 0
        self._next_poll = 0
        self._found_inf = None

    def _launch_ready(self, force: bool = False) -> None:
        while self._next_launch < len(self.buckets):
            b = self.buckets[self._next_launch]
            if b.pending and not force:
                return
            self._launch(b)
            self._next_launch += 1

    def _launch(self, b: _Bucket) -> None:
        grads = []
        unused = []  # positions in the bucket without a gradient on this rank
        for k, i in enumerate(b.members):
            p = self.params[i]
            g = p.grad if self._touched[i] else None
            if g is not None and g.is_sparse:
                raise TypeError(f"parameter {self.names[i]!r} has a sparse gradient; "
                                f"FusedAllReduce supports dense gradients only")
            if g is None:
                unused.append(k)
                g = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
                if self.grad_as_bucket_view:
                    self._view(i).zero_()
            elif self.grad_as_bucket_view:
                view = self._view(i)
                if g.data_ptr() != view.data_ptr():  # .grad was replaced (set_to_none)
                    view.copy_(g)
                    p.grad = view
            elif not g.is_contiguous():
                g = g.contiguous()
            grads.append(g)
        b.flags.fill_(1.0)
        if unused:
            b.flags[unused] = 0.0
        b.wire.launch(grads, b.flags, in_place=self.grad_as_bucket_view)
        b.launched = True
        if self.transport != "backend":  # sum earlier buckets whose peers have caught up
            for earlier in self.buckets[self._next_poll:b.index]:
                if not earlier.wire.poll():
                    break  # in bucket order: the collectives between machines must match
                if earlier.index == self._next_poll and earlier.wire.state == "done":
                    self._next_poll += 1  # finished: not visited again this step

    # ------------------------------------------------------------------ public
    def wait(self) -> None:
        """Finish every bucket and write the mean gradients into .grad (all ranks agree).
        Raises CollectiveError when a collective fails or exceeds the timeout."""
        if not self._sync_enabled:
            raise RuntimeError("scalenn.distributed.FusedAllReduce: wait() called inside "
                               "no_sync(); leave the no_sync() block and run a backward pass first")
        if self._state != "backward":
            raise RuntimeError("scalenn.distributed.FusedAllReduce: wait() called without a "
                               "backward pass since the last wait() (wait() called twice?)")
        try:
            self._launch_ready(force=True)
            for b in self.buckets:
                b.wire.middle(self.timeout, self.rank, f"bucket {b.index}")
            for b in self.buckets:
                b.wire.finish(None, self.timeout, self.rank, f"bucket {b.index}")
                self._write_back(b)
        finally:
            self._state = "idle"
            self._touched = [False] * len(self.params)
        self._synced_once = True
        self.last_bytes = {
            "payload_bytes": sum(b.wire.payload_bytes() for b in self.buckets),
            "sent_bytes_per_rank": sum(b.wire.sent_bytes() for b in self.buckets),
            "fp32_gradient_bytes": 4 * sum(self.numels),
            "buckets": len(self.buckets),
        }
        if not self._rebuilt:
            _ = self.found_inf  # computed from the buckets about to be replaced
            self._rebuild_from_observed_order()

    @torch.no_grad()
    def _write_back(self, b: _Bucket) -> None:
        used = b.wire.flag_sums() > 0.5
        if self.grad_as_bucket_view:
            return  # .grad already is the averaged bucket slice
        all_used = bool(used.all())
        targets, copies = [], []
        for k, i in enumerate(b.members):
            p = self.params[i]
            if not all_used and not bool(used[k]):
                # unused on every rank: leave .grad as it is; unpack into scratch
                targets.append(torch.empty(self.numels[i], dtype=p.dtype, device=p.device))
                continue
            if p.grad is None:
                p.grad = torch.empty(p.shape, dtype=p.dtype, device=p.device)
            if p.grad.is_contiguous():
                targets.append(p.grad)
            else:
                tmp = torch.empty(p.shape, dtype=p.grad.dtype, device=p.device)
                targets.append(tmp)
                copies.append((p.grad, tmp))
        b.wire.finish_local(targets)
        for dst, src in copies:
            dst.copy_(src)

    def _rebuild_from_observed_order(self) -> None:
        """Once, after the first step: rank 0's observed gradient order, broadcast, defines the
        buckets on every rank (parameters never seen keep reverse registration order)."""
        seen = set(self._order)
        order = self._order + [i for i in reversed(range(len(self.params))) if i not in seen]
        t = torch.tensor(order, dtype=torch.int64, device=self._comm_device)
        work = dist.broadcast(t, src=self._src, group=self.group, async_op=True)
        wait_work(work, self.timeout, "broadcast of the bucket order", self.rank)
        agreed = t.cpu().tolist()
        if sorted(agreed) != list(range(len(self.params))):
            raise RuntimeError("scalenn.distributed.FusedAllReduce: rank 0 sent an invalid "
                               "bucket order (models differ between ranks?)")
        if self.grad_as_bucket_view:
            # The averaged gradients live in the old buckets: detach them so _build copies them
            # into the new views.
            for p in self.params:
                p.grad = p.grad.clone()
        self._build(agreed)
        self._rebuilt = True

    @property
    def found_inf(self) -> bool:
        """True when any averaged gradient of the last wait() is NaN or Inf (propagated, never
        zeroed: skip the step, as a GradScaler would)."""
        if not self._synced_once:
            raise RuntimeError("found_inf is known only after a wait()")
        if self._found_inf is None:
            self._found_inf = any(b.wire.has_nonfinite() for b in self.buckets)
        return self._found_inf

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (no communication) for the backward passes inside; the
        next backward outside the block (then wait()) averages the accumulated sum."""
        if self._state == "backward":
            raise RuntimeError("scalenn.distributed.FusedAllReduce: no_sync() entered between "
                               "backward() and wait(); call wait() first")
        previous = self._sync_enabled
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = previous

    def bucket_order(self) -> List[List[str]]:
        """Parameter names per bucket, in send order (for inspection and tests)."""
        return [[self.names[i] for i in b.members] for b in self.buckets]

    def close(self) -> None:
        """Remove the hooks; the object cannot be used afterwards."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        _LIVE.discard(self)
