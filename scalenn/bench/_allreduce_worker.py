"""One rank of `scalenn bench allreduce` (spawned by scalenn/bench/allreduce.py; 1 thread,
gloo on loopback). Rank 0 writes the timings as JSON. Every rank runs the same fixed schedule
(no timing-dependent decisions), so collectives always match."""
import datetime
import json
import os
import sys
import time
import warnings

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

from scalenn.distributed import FusedAllReduce  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def resnet50_shapes():
    """Parameter shapes of torchvision's ResNet-50 (161 tensors, 25.6M values, ~102 MB fp32)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (width * 4, width, 1, 1), (width * 4,), (width * 4,)]
            if b == 0:
                shapes += [(width * 4, inplanes, 1, 1), (width * 4,), (width * 4,)]
            inplanes = width * 4
    shapes += [(1000, 2048), (1000,)]
    return shapes


class ShapesModule(nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes])


def mlp_20m():
    """~18.6M parameters: 784 -> 1024, 4 x (1024 -> 2048 -> 1024), 1024 -> 1000."""
    layers = [nn.Linear(784, 1024), nn.GELU()]
    for _ in range(4):
        layers += [nn.Linear(1024, 2048), nn.GELU(), nn.Linear(2048, 1024), nn.GELU()]
    layers += [nn.Linear(1024, 1000)]
    return nn.Sequential(*layers)


def timed(variants, rounds, calls):
    """Interleaved: every round runs each variant `calls` times; a barrier aligns the ranks
    before each variant so one rank's lateness is not charged to the next variant."""
    out = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - t0) / calls)
    return out


def part_a(rounds, quick):
    shapes = resnet50_shapes()
    if quick:
        shapes = shapes[:60]
    def grads():
        return [torch.randn(s) for s in shapes]
    per_tensor = grads()
    coalesced = grads()
    flat = torch.randn(sum(t.numel() for t in per_tensor))

    def run_per_tensor():
        for t in per_tensor:
            dist.all_reduce(t)

    def run_flat():
        dist.all_reduce(flat)

    def run_coalesced():
        dist.all_reduce_coalesced(coalesced)

    syncs = {}
    variants = {"per-tensor all_reduce": run_per_tensor, "all_reduce_coalesced": run_coalesced,
                "one flat buffer (floor)": run_flat}
    for label, comp, view, fp32sum, transport in (
            ("scalenn shm", None, False, None, "shm"),
            ("scalenn shm bucket view", None, True, None, "shm"),
            ("scalenn shm bf16", "bf16", False, False, "shm"),
            ("scalenn gloo", None, False, None, "backend"),
            ("scalenn gloo bucket view", None, True, None, "backend"),
            ("scalenn gloo bf16", "bf16", False, False, "backend"),
            ("scalenn gloo bf16, fp32 sum", "bf16", False, True, "backend"),
            ("scalenn gloo fp16", "fp16", False, False, "backend"),
            ("scalenn gloo int8", "int8", False, None, "backend")):
        module = ShapesModule(shapes)
        for p in module.parameters():
            p.grad = torch.randn(p.shape)
        sync = FusedAllReduce(module, compression=comp, timeout=600, broadcast_parameters=False,
                              grad_as_bucket_view=view, half_sum_fp32=bool(fp32sum),
                              transport=transport)
        n = len(sync.params)

        def run(sync=sync, n=n):
            # what backward's hooks do, in backward order, without the backward compute
            for i in reversed(range(n)):
                sync._on_grad(i)
            sync.wait()
        syncs[label] = sync
        variants[label] = run
    for fn in variants.values():  # warm-up (also the bucket rebuild)
        fn()
        fn()
    times = timed(variants, rounds, 1)
    nbytes = 4 * flat.numel()
    sent = {"per-tensor all_reduce": nbytes, "all_reduce_coalesced": nbytes,
            "one flat buffer (floor)": nbytes}
    extra = {}
    for label, sync in syncs.items():
        sent[label] = sync.last_bytes["sent_bytes_per_rank"]
        extra[label] = _buffer_bytes(sync) - (nbytes if "bucket view" in label else 0)
    return times, sent, extra, {"tensors": len(shapes), "MB": nbytes / 1e6}


def _buffer_bytes(sync):
    """This rank's communication buffers: the wires' tensors (on the shared-memory transport,
    the rank's own slots; the other ranks' slots are theirs)."""
    total = 0
    for b in sync.buckets:
        for name, t in vars(b.wire).items():
            if isinstance(t, torch.Tensor) and name != "slots":
                total += t.numel() * t.element_size()
    return total


def part_b(rounds, quick, batch):
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    torch.manual_seed(0)
    base = mlp_20m() if not quick else nn.Sequential(nn.Linear(784, 1024), nn.GELU(),
                                                     nn.Linear(1024, 1000))
    nparams = sum(p.numel() for p in base.parameters())
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def copy():
        m = mlp_20m() if not quick else nn.Sequential(nn.Linear(784, 1024), nn.GELU(),
                                                      nn.Linear(1024, 1000))
        m.load_state_dict(base.state_dict())
        return m

    variants, extra, syncs = {}, {}, {}

    def plain_step(model, set_to_none=True):
        def step():
            model.zero_grad(set_to_none=set_to_none)
            loss_fn(model(x), y).backward()
        return step

    def sync_step(model, sync, set_to_none=True):
        def step():
            model.zero_grad(set_to_none=set_to_none)
            loss_fn(model(x), y).backward()
            sync.wait()
        return step

    variants["no communication"] = plain_step(copy())
    variants["DDP default"] = plain_step(DDP(copy()))
    variants["DDP gradient_as_bucket_view"] = plain_step(
        DDP(copy(), gradient_as_bucket_view=True), set_to_none=False)
    ddp_fp16 = DDP(copy())
    ddp_fp16.register_comm_hook(None, default_hooks.fp16_compress_hook)
    variants["DDP fp16 hook"] = plain_step(ddp_fp16)
    from scalenn.distributed import CompressedHookState, compressed_hook
    for comp in ("bf16", "int8"):
        ddp = DDP(copy())
        ddp.register_comm_hook(CompressedHookState(compression=comp), compressed_hook)
        variants[f"DDP + scalenn {comp} hook"] = plain_step(ddp)
    for label, comp, view, transport in (
            ("scalenn shm", None, False, "shm"), ("scalenn shm bucket view", None, True, "shm"),
            ("scalenn shm bf16", "bf16", False, "shm"),
            ("scalenn gloo", None, False, "backend"),
            ("scalenn gloo bucket view", None, True, "backend"),
            ("scalenn gloo bf16", "bf16", False, "backend"),
            ("scalenn gloo int8", "int8", False, "backend")):
        m = copy()
        sync = FusedAllReduce(m, compression=comp, grad_as_bucket_view=view, timeout=600,
                              transport=transport)
        syncs[label] = sync
        variants[label] = sync_step(m, sync, set_to_none=not view)
    for fn in variants.values():
        fn()
        fn()
    times = timed(variants, rounds, 2)
    sent, extra = {}, {}
    for label, sync in syncs.items():
        sent[label] = sync.last_bytes["sent_bytes_per_rank"]
        buf = _buffer_bytes(sync)
        # with bucket views the flat buffer IS the gradient storage: not an extra copy
        extra[label] = buf - (4 * nparams if "bucket view" in label else 0)
    return times, sent, extra, {"params": nparams, "batch": batch}


def main():
    rank, world, out, rounds, quick = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                       int(sys.argv[4]), sys.argv[5] == "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'store')}",
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    result = {}
    a = part_a(rounds, quick)
    result["a"] = dict(zip(("times", "sent", "extra", "info"), a))
    b = part_b(rounds, quick, batch=32)
    result["b"] = dict(zip(("times", "sent", "extra", "info"), b))
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
