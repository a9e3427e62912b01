"""Same-host transport of FusedAllReduce: the ranks of one machine average their buckets through
one shared-memory file instead of the backend's sockets.

Why: gloo moves every byte through TCP loopback - a copy into the kernel and a copy out on each
rank, plus its own threads - and on this 2-core machine a 74.5 MB fp32 all-reduce took ~55 ms
of the 103 ms DDP step (benchmarks/results/allreduce.md). Through shared memory the same
average costs the memory passes alone: pack, sum one shard, copy the other shards. NCCL does the
same between GPUs of one node; gloo has no such transport.

Several machines with the same number of ranks each ("shm+backend"): the exchange below runs
within each machine, and between steps 2 and 3 every rank all-reduces its reduced shard with
the ranks of the same local index on the other machines (one backend collective per local
index, so K ranks per machine share the network traffic: each machine sends the bucket once,
not K times). Otherwise (uneven machines, one rank per machine, /dev/shm missing or too small
anywhere) FusedAllReduce uses the backend alone.

Layout of the file: a control block of progress counters, then for each bucket one "slot" per
rank of the machine ([W, S * W] elements of the wire dtype, W ranks, shard length S). Protocol
for bucket b in its g-th use (every rank launches the same buckets in the same order, so g
agrees):
  1. pack: wait until every rank has finished use g-1 (it read this rank's slot), pack this
     rank's gradients divided by the number of ranks on all machines into its slot; post
     ARRIVED = g.
  2. reduce: wait for every rank's ARRIVED; shard r of slot r = the sum over ranks q (in order
     0..W-1, float32, one rounding) of shard r of slot q; post REDUCED = g.
  3. gather: wait for every rank's REDUCED; copy shard q of slot q into slot r for q != r; post
     DONE = g. Slot r now holds the mean, and .grad is unpacked from it (or is a view of it).
A rank that never posts makes the others raise CollectiveError after the timeout; one whose
process is gone, within about half a second (each rank holds a POSIX lock on its byte of the
file, which the kernel drops when the process dies, whatever killed it).
"""
import datetime
import fcntl
import hashlib
import mmap
import os
import secrets
import socket
import sys
import time
from typing import List, Optional

import torch
import torch.distributed as dist

from .. import ops
from .wire import WIRE_DTYPE, CollectiveError, FloatWire, _ceil_div, wait_work

SHM_DIR = "/dev/shm"
# Processes with the same value count as one machine. For containers whose hostname and boot id
# do not identify the machine, and for tests that pretend to be several machines.
HOST_ID_ENV = "SCALENN_HOST_ID"
_LINE = 8     # int64 counters per (rank, bucket): one cache line, so ranks never share one
_ARRIVED, _REDUCED, _DONE = 0, 1, 2
_ALIGN = 4096  # slots start on page boundaries
_LIVENESS_S = 0.5  # a blocked wait checks this often whether the rank it waits for still lives


def _host_id() -> int:
    """Equal on processes of one machine (hostname and kernel boot id), different elsewhere."""
    name = os.environ.get(HOST_ID_ENV)
    if not name:
        boot = ""
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            pass
        name = f"{socket.gethostname()}/{boot}"
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True) >> 1  # 63 bits: -x cannot overflow


class Topology:
    """Where the ranks of `group` run (collective: one all_gather of host ids). `nodes`: group
    ranks per machine, in rank order; `local`: this rank's machine; `mode`: "shm" (one machine),
    "shm+backend" (several, the same number of ranks on each, more than one), or None."""

    def __init__(self, group, rank: int, world: int):
        ids = torch.zeros(world, dtype=torch.int64)
        usable = sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)
        # a rank without /dev/shm is a machine of its own: no shared memory with anyone
        mine = torch.tensor([_host_id() if usable else -1 - rank], dtype=torch.int64)
        dist.all_gather_into_tensor(ids, mine, group=group)
        nodes = {}
        for r, h in enumerate(ids.tolist()):
            nodes.setdefault(h, []).append(r)
        self.nodes = list(nodes.values())
        self.local = next(n for n in self.nodes if rank in n)
        self.local_rank = self.local.index(rank)
        sizes = {len(n) for n in self.nodes}
        if len(self.nodes) == 1:
            self.mode = "shm"
        elif len(sizes) == 1 and len(self.local) > 1:
            self.mode = "shm+backend"
        else:
            self.mode = None

    def subgroups(self, group):
        """(this machine's ranks, this local index's ranks on every machine) as new process
        groups; created only by their members (use_local_synchronization)."""
        def global_rank(r):
            return dist.get_global_rank(group, r) if group is not None else r
        local = dist.new_group([global_rank(r) for r in self.local],
                               use_local_synchronization=True)
        cross = dist.new_group([global_rank(n[self.local_rank]) for n in self.nodes],
                               use_local_synchronization=True)
        return local, cross


class SharedRegion:
    """One shared-memory file mapped by every rank of `group` (created by the group's rank 0,
    unlinked as soon as every rank has mapped it, so nothing is left behind if a rank dies).
    Use `SharedRegion.open(...)`, which returns None (on every rank) when the ranks cannot
    share memory."""

    def __init__(self, mapping: mmap.mmap, nbytes: int, fd: int):
        self._mapping = mapping  # kept alive as long as the tensors viewing it
        self._fd = fd  # open for the region's life: it holds this rank's liveness lock
        self.bytes = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes)

    def alive(self, rank: int) -> bool:
        """Whether `rank`'s process still holds its lock (taken when it mapped the file)."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, rank)
        except OSError:
            return True  # its exclusive lock is there
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, rank)
        return False

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    @classmethod
    def open(cls, nbytes: int, group, rank: int) -> Optional["SharedRegion"]:
        """Collective over `group`, whose ranks Topology found on one machine. None when
        /dev/shm is missing or lacks the space, or any rank fails to map the file."""
        header = torch.zeros(3, dtype=torch.int64)  # ok, creator pid, random name part
        path = None
        if rank == 0:
            header[1], header[2] = os.getpid(), secrets.randbits(62)
            path = cls._path(int(header[1]), int(header[2]))
            header[0] = int(cls._create(path, nbytes))
        src = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast(header, src=src, group=group)
        region = None
        if int(header[0]):
            path = cls._path(int(header[1]), int(header[2]))
            region = cls._map(path, nbytes, rank)
        ok = torch.tensor([int(region is not None)], dtype=torch.int64)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
        if rank == 0 and path is not None and int(header[0]):
            try:
                os.unlink(path)  # every rank has mapped it (or given up): the name is not needed
            except OSError:
                pass
        return region if int(ok[0]) else None

    @staticmethod
    def _path(pid: int, token: int) -> str:
        return os.path.join(SHM_DIR, f"scalenn-{pid}-{token:x}")

    @staticmethod
    def _create(path: str, nbytes: int) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError:
            return False
        try:
            # Reserve the pages now: a tmpfs that runs out later raises SIGBUS on first touch
            # (Docker's default /dev/shm is 64 MB), here it is a clean "no".
            os.posix_fallocate(fd, 0, nbytes)
            return True
        except OSError:
            os.unlink(path)
            return False
        finally:
            os.close(fd)

    @classmethod
    def _map(cls, path: str, nbytes: int, rank: int) -> Optional["SharedRegion"]:
        """Maps the file and locks byte `rank` of it for as long as the region lives. (POSIX
        locks belong to the process and go when it closes any descriptor of the file: hence
        one descriptor, kept, per region.)"""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < nbytes:
                raise ValueError("smaller than expected")
            mapping = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
            return cls(mapping, nbytes, fd)
        except (OSError, ValueError):
            os.close(fd)
            return None


def _aligned(n: int) -> int:
    return _ceil_div(n, _ALIGN) * _ALIGN


class ShmBuckets:
    """The shared region of one bucket plan: counters and every bucket's W slots."""

    def __init__(self, sizes: List[int], compression, group, rank: int, world: int,
                 timeout: datetime.timedelta, cross_group=None, total_world: Optional[int] = None):
        """sizes: elements (gradients + flags) per bucket; group/rank/world: this machine's
        ranks; cross_group: the same local index on the other machines (None: one machine);
        total_world: ranks on all machines (the 1/W of the mean). Collective over `group`;
        check `.region`."""
        self.rank, self.world, self.timeout = rank, world, timeout
        self.cross_group = cross_group
        self.total_world = total_world or world
        self.dtype = WIRE_DTYPE[compression]
        self.nbuckets = len(sizes)
        self.shard = [_ceil_div(n, world) for n in sizes]
        self.itemsize = itemsize = torch.empty(0, dtype=self.dtype).element_size()
        control = _aligned(world * self.nbuckets * _LINE * 8)
        self.offsets, total = [], control
        for s in self.shard:
            self.offsets.append(total)
            total += _aligned(world * s * world * itemsize)
        self.region = SharedRegion.open(total, group, rank)
        if self.region is not None:
            self.counters = self.region.bytes[:control].view(torch.int64)

    def slots(self, b: int) -> torch.Tensor:
        """[W, S * W] view of bucket b's slots (row q: rank q's)."""
        n = self.world * self.shard[b] * self.world
        raw = self.region.bytes[self.offsets[b]:self.offsets[b] + n * self.itemsize]
        return raw.view(self.dtype).view(self.world, self.shard[b] * self.world)

    def post(self, b: int, phase: int, gen: int) -> None:
        ops.shm_post(self.counters, (self.rank * self.nbuckets + b) * _LINE + phase, gen)

    def wait(self, b: int, phase: int, gen: int, block: bool, what: str) -> bool:
        """True once every rank posted `gen` for (b, phase); False if not yet (block=False);
        CollectiveError after the timeout, or as soon as the awaited rank's process is gone
        (block=True)."""
        timeout = self.timeout.total_seconds() if block else 0.0
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            missing = ops.shm_wait(self.counters, b * _LINE + phase, self.nbuckets * _LINE,
                                   self.world, gen, max(0.0, min(left, _LIVENESS_S)))
            if missing < 0:
                return True
            if not block:
                return False
            gone = not self.region.alive(missing)
            if gone or left <= _LIVENESS_S:
                break
        step = {_ARRIVED: "packing", _REDUCED: "reducing its shard", _DONE: "reading"}[phase]
        why = "its process exited" if gone else f"it did not finish {step}"
        raise CollectiveError(
            f"scalenn.distributed: {what} failed on rank {self.rank} (a peer rank may have "
            f"died, stopped, or be running a different model/step; timeout {timeout:g}s): "
            f"rank {missing} of this machine: {why} (shared-memory transport)")


class ShmWire(FloatWire):
    """One bucket on the same-host transport. As FloatWire, `flat` is this rank's slot
    (gradients then flags; it holds the mean after finish, so FloatWire's result accessors and
    unpack apply); launch / middle / finish follow the protocol above, and `poll()` advances it
    without blocking (called as later buckets launch, so the sums overlap the rest of the
    backward pass when a peer is ready). sent_bytes: what the other ranks of this machine read
    from this rank's slot ((W-1) shards to reduce, then its reduced shard W-1 times: the ring
    all-reduce's 2 (W-1)/W of the buffer), plus what the all-reduce of its shard between
    machines sends."""

    def __init__(self, numel: int, nflags: int, plan: ShmBuckets, index: int):
        self.numel, self.nflags, self.plan, self.index = numel, nflags, plan, index
        self.world, self.rank = plan.world, plan.rank
        self.work = None  # the all-reduce of this rank's shard between machines
        self.dtype = plan.dtype
        self.slots = plan.slots(index)
        self.flat = self.slots[self.rank, :numel + nflags]
        self.S = plan.shard[index]
        self.gen = 0
        self.state = "done"
        self.in_place = False
        self.what = f"bucket {index}"

    def launch(self, grads: List[torch.Tensor], flags: Optional[torch.Tensor],
               in_place: bool = False) -> None:
        plan = self.plan
        # every rank must have read this slot's previous contents (its step-3 copies)
        plan.wait(self.index, _DONE, self.gen, True, self.what)
        self.gen += 1
        self.in_place = in_place
        scale = 1.0 / plan.total_world
        if in_place:
            self.flat[:self.numel].mul_(scale)
        else:
            ops.bucket_pack(grads, self.flat, scale)
        if flags is not None:
            self.flat[self.numel:].copy_(flags)
        plan.post(self.index, _ARRIVED, self.gen)
        self.state = "arrived"

    def sent_bytes(self) -> int:
        local = super().sent_bytes()
        if self.plan.cross_group is None:
            return local
        machines = self.plan.total_world // self.world
        shard = self.S * self.flat.element_size()
        return local + int(2 * (machines - 1) / machines * shard)

    def poll(self) -> bool:
        """Advance without blocking; True once past the local sum (its shard's all-reduce
        between machines started, or done). The caller stops at the first False, so those
        collectives start in bucket order on every rank."""
        self._progress(block=False)
        return self.state != "arrived"

    def middle(self, timeout, rank: int, what: str) -> None:
        # Only this rank's own step (the local sum, and starting its shard's collective): the
        # rest may wait on peers that are still starting later buckets' collectives.
        self._progress(block=True, local_sum_only=True)

    def finish(self, grads: Optional[List[torch.Tensor]], timeout, rank: int, what: str) -> None:
        self._progress(block=True)
        if self.in_place:
            # .grad is a view of this slot, and the next backward (or zero_grad) writes into it
            # as soon as wait() returns: first every rank must have copied this rank's shard.
            self.plan.wait(self.index, _DONE, self.gen, True, self.what)
        self.finish_local(grads)

    def _progress(self, block: bool, local_sum_only: bool = False) -> None:
        plan, b, g, S, r = self.plan, self.index, self.gen, self.S, self.rank
        if self.state == "arrived":
            if not plan.wait(b, _ARRIVED, g, block, self.what):
                return
            mine = self.slots[r, r * S:(r + 1) * S]
            self._reduce_shard(self.slots[:, r * S:(r + 1) * S], mine)
            if plan.cross_group is None:
                plan.post(b, _REDUCED, g)
                self.state = "reduced"
            else:
                self.work = dist.all_reduce(mine, group=plan.cross_group, async_op=True)
                self.state = "crossing"
        if local_sum_only:
            return
        if self.state == "crossing":
            if not block and not self.work.is_completed():
                return
            work, self.work = self.work, None
            wait_work(work, plan.timeout, self.what + " (between machines)", r)
            plan.post(b, _REDUCED, g)
            self.state = "reduced"
        if self.state == "reduced":
            if not plan.wait(b, _REDUCED, g, block, self.what):
                return
            for q in range(self.world):
                if q != r:
                    self.slots[r, q * S:(q + 1) * S].copy_(self.slots[q, q * S:(q + 1) * S])
            plan.post(b, _DONE, g)
            self.state = "done"

    def _reduce_shard(self, shards: torch.Tensor, out: torch.Tensor) -> None:
        """out = shards[0] + ... + shards[W-1] in float32, rounded once to the wire dtype (out
        aliases one row of shards: elementwise, so in place is safe)."""
        if self.world == 2:  # torch adds bf16/fp16 in float32 and rounds once
            torch.add(shards[0], shards[1], out=out)
            return
        acc = shards[0].to(torch.float32, copy=True)
        for q in range(1, self.world):
            acc.add_(shards[q])
        out.copy_(acc)
