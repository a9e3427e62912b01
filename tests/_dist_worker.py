"""One rank of a multi-process scalenn.distributed test: `python _dist_worker.py SCENARIO RANK
WORLD OUTDIR`. Uses gloo over loopback only (GLOO_SOCKET_IFNAME=lo, a file store in OUTDIR).
Writes OUTDIR/rank<R>.json: {"ok": bool, "error": traceback or "", "report": {...}}. Checks run
inside the worker against references computed with plain torch.distributed collectives."""
import copy
import datetime
import json
import os
import sys
import time
import traceback
import zlib

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

import scalenn  # noqa: E402
from scalenn.distributed import CollectiveError, FusedAllReduce  # noqa: E402

torch.set_num_threads(1)
PG_TIMEOUT = datetime.timedelta(seconds=60)


class Net(nn.Module):
    """Many small parameters, two large ones, a bf16 one, a frozen layer, a branch used only on
    rank 0 and a layer never used."""

    def __init__(self, gain_dtype=torch.bfloat16):
        super().__init__()
        self.small = nn.ModuleList([nn.Linear(8, 8) for _ in range(12)])
        self.big = nn.Linear(256, 384)
        self.big2 = nn.Linear(384, 64)
        self.gain = nn.Parameter(torch.ones(64, dtype=gain_dtype))
        self.frozen = nn.Linear(64, 64)
        self.frozen.requires_grad_(False)
        self.rank0_only = nn.Linear(64, 10)
        self.never_used = nn.Linear(64, 10)
        self.head = nn.Linear(64, 10)

    def forward(self, x, rank0_branch: bool):
        h = x[:, :8]
        for layer in self.small:
            h = torch.tanh(layer(h))
        z = torch.relu(self.big(torch.cat([h, x[:, 8:]], dim=1)))
        z = torch.relu(self.big2(z)) * self.gain.float()
        z = self.frozen(z)
        out = self.head(z)
        if rank0_branch:
            out = out + self.rank0_only(z)
        return out


def micro_batches(rank: int, step: int, n: int = 2):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [(torch.randn(16, 256, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


def gather(t: torch.Tensor, world: int):
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return out


# Per-element error bound of the averaged gradient, in units of mean(|g_r|), per wire.
ROUNDING = {None: 2.0**-23, "bf16": 2.0**-7, "fp16": 2.0**-9}
UNDERFLOW = {None: 0.0, "bf16": 0.0, "fp16": 2.0**-24}


# (compression, bucket views, half_sum_fp32, transport): "auto" is the same-host shared memory
# for the float wires here (asserted below), the backend (gloo) for int8
ALL_CONFIGS = [(None, False, False, "auto"), (None, True, False, "auto"),
               ("bf16", False, False, "auto"), ("fp16", False, False, "auto"),
               ("int8", False, False, "auto"),
               (None, False, False, "backend"), (None, True, False, "backend"),
               ("bf16", False, False, "backend"), ("bf16", False, True, "backend"),
               ("fp16", False, False, "backend"), ("fp16", False, True, "backend")]


def check_configs(rank, world, report, configs, shm_transport="shm"):
    """3 steps of each config against the mean of per-rank reference gradients."""
    loss_fn = nn.CrossEntropyLoss()
    for compression, view, half_sum_fp32, transport in configs:
        gain_dtype = torch.float32 if view else torch.bfloat16
        torch.manual_seed(0)
        model = Net(gain_dtype)
        ref = Net(gain_dtype)
        ref.load_state_dict(model.state_dict())
        sync = FusedAllReduce(model, bucket_mb=0.05, first_bucket_mb=0.005,
                              compression=compression, grad_as_bucket_view=view, timeout=60,
                              int8_chunk=256, half_sum_fp32=half_sum_fp32, transport=transport)
        key = (f"{compression}{'_view' if view else ''}{'_fp32sum' if half_sum_fp32 else ''}"
               f"{'_backend' if transport == 'backend' else ''}")
        shm_usable = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
        expected = (shm_transport if transport == "auto" and compression != "int8" and shm_usable
                    else "backend")
        assert sync.transport == expected, (key, sync.transport)
        int8_errors = []
        assert len(sync.buckets) >= 4, sync.bucket_order()
        for step in range(3):
            batches = micro_batches(rank, step)
            # reference: local gradients from a hook-free copy, averaged with plain collectives
            ref.zero_grad(set_to_none=True)
            for x, y in batches:
                loss_fn(ref(x, rank == 0), y).backward()
            # scalenn: accumulate the first micro-batch without communication
            model.zero_grad(set_to_none=not view)
            with sync.no_sync():
                x, y = batches[0]
                loss_fn(model(x, rank == 0), y).backward()
            x, y = batches[1]
            loss_fn(model(x, rank == 0), y).backward()
            sync.wait()
            assert not sync.found_inf
            step_got, step_ref = [], []
            for (name, p), (_, pr) in zip(model.named_parameters(), ref.named_parameters()):
                if not p.requires_grad:
                    assert p.grad is None, f"{key}: frozen {name} got a gradient"
                    continue
                if name.startswith("never_used"):
                    if view:
                        assert p.grad is not None and not p.grad.any(), name
                    else:
                        assert p.grad is None, f"{key}: {name} unused everywhere got a gradient"
                    continue
                local = pr.grad if pr.grad is not None else torch.zeros_like(pr)
                per_rank = [g.double() for g in gather(local.float(), world)]
                mean = sum(per_rank) / world
                mag = sum(g.abs() for g in per_rank) / world
                got = p.grad.double()
                # identical on every rank, bit for bit
                others = gather(p.grad.float(), world)
                assert all(torch.equal(others[0], o) for o in others), f"{key}: {name} differs"
                if compression == "int8":
                    # per-chunk scales: judged on the whole gradient vector of the step (a tiny
                    # tensor sharing a chunk with a large one is mostly carried by the residual)
                    step_got.append(got.flatten())
                    step_ref.append(mean.flatten())
                    continue
                # W roundings of size u (the 1/W scalings and W - 1 sums): W/2 x the 2-rank
                # bound; below fp16's normal range W + 1 roundings of half its spacing
                bound = (ROUNDING[compression] * max(1.0, world / 2) * mag
                         + UNDERFLOW[compression] * (world + 1) / 2)
                if p.dtype == torch.bfloat16:  # the gradient itself is stored in bf16
                    bound = bound + 2.0**-8 * mean.abs()
                err = (got - mean).abs()
                assert bool((err <= bound).all()), (
                    f"{key} step {step}: {name} max error {err.max().item():.3e}, bound "
                    f"{bound.flatten()[err.argmax()].item():.3e}")
            if compression == "int8":
                got, ref_mean = torch.cat(step_got), torch.cat(step_ref)
                int8_errors.append(((got - ref_mean).norm() / ref_mean.norm()).item())
        if compression == "int8":
            report["int8_rel_error_per_step"] = int8_errors
            report["int8_rel_error_max"] = max(int8_errors)
            report["int8_rel_error_median"] = sorted(int8_errors)[len(int8_errors) // 2]
            assert max(int8_errors) < 0.05, int8_errors
        # rebuilt from rank 0's observed order on every rank: rank0_only (the last layer of
        # rank 0's forward, so its first gradient) leads even on rank 1, which never sees a
        # gradient for it; parameters never seen go last, in reverse registration order
        flat_order = [n for b in sync.bucket_order() for n in b]
        assert flat_order[-2:] == ["never_used.bias", "never_used.weight"], flat_order
        assert flat_order[0].startswith("rank0_only."), flat_order
        orders = gather(torch.tensor([zlib.crc32(repr(sync.bucket_order()).encode())]), world)
        assert all(torch.equal(orders[0], o) for o in orders), "bucket orders differ after rebuild"
        report[f"bytes_{key}"] = sync.last_bytes
        report[f"buckets_{key}"] = len(sync.buckets)
        sync.close()


def scenario_exact(rank, world, report):
    check_configs(rank, world, report, ALL_CONFIGS)
    loss_fn = nn.CrossEntropyLoss()

    # NaN on one rank is propagated to every rank and detected (int8 on gloo, float32 on the
    # default transport); the int8 one stays for the misuse checks below
    for compression in (None, "int8"):
        torch.manual_seed(0)
        model = Net()
        sync = FusedAllReduce(model, bucket_mb=0.05, first_bucket_mb=0.005,
                              compression=compression, timeout=60, int8_chunk=256)
        x, y = micro_batches(rank, 0)[0]
        out = model(x, False)
        if rank == 1:
            out = out * model.head.bias.sum() * float("nan")
        loss_fn(out, y).backward()
        sync.wait()
        assert sync.found_inf, compression
        assert torch.isnan(model.head.bias.grad).any(), f"{compression}: NaN was not propagated"
        if compression is None:
            sync.close()
    report["nan_propagated"] = True

    # misuse: wait twice, step before wait, wait inside no_sync, backward twice
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    errors = {}
    try:
        sync.wait()
    except RuntimeError as exc:
        errors["wait_twice"] = str(exc)
    model.zero_grad()
    loss_fn(model(x, False), y).backward()
    try:
        opt.step()
    except RuntimeError as exc:
        errors["step_before_wait"] = str(exc)
    sync.wait()
    opt.step()
    with sync.no_sync():
        try:
            sync.wait()
        except RuntimeError as exc:
            errors["wait_in_no_sync"] = str(exc)
    try:
        loss_fn(model(x, False), y).backward()
        loss_fn(model(x, False), y).backward()
    except RuntimeError as exc:
        errors["backward_twice"] = str(exc)
    assert set(errors) == {"wait_twice", "step_before_wait", "wait_in_no_sync",
                           "backward_twice"}, errors
    assert "called twice" in errors["wait_twice"]
    assert "before sync.wait()" in errors["step_before_wait"]
    assert "no_sync" in errors["wait_in_no_sync"]
    assert "backward() ran again" in errors["backward_twice"]
    report["misuse_errors"] = errors
    sync.close()


def scenario_shm_world3(rank, world, report):
    """The shared-memory transport with 3 ranks (3 shards, float32 sums over 3 slots)."""
    check_configs(rank, world, report, [c for c in ALL_CONFIGS if c[3] == "auto" and c[0] != "int8"])


def scenario_two_machines(rank, world, report):
    """2 x 2 ranks: shared memory on each "machine", the shards' all-reduce between them."""
    check_configs(rank, world, report, [c for c in ALL_CONFIGS if c[3] == "auto"],
                  shm_transport="shm+backend")


def scenario_view_race(rank, world, report):
    """Bucket views on shared memory: .grad is this rank's slot, which the other ranks still
    read (their step 3) after this rank's wait() returned. Rank 1 is made slow to read; rank 0
    zeroes its .grad right after wait(). Both must still end with the same mean."""
    from scalenn.distributed import shm
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    sync = FusedAllReduce(model, grad_as_bucket_view=True, transport="shm", timeout=30,
                          bucket_mb=0.01, first_bucket_mb=0.001)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(rank))
    if rank == 1:
        original = shm.ShmBuckets.post

        def slow_post(self, b, phase, gen):
            original(self, b, phase, gen)
            if phase == shm._REDUCED:
                time.sleep(0.2)  # rank 0 gets its mean now and goes on; this rank copies later
        shm.ShmBuckets.post = slow_post
    for step in range(3):
        model.zero_grad(set_to_none=False)
        model(x).pow(2).sum().backward()
        sync.wait()
        mine = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
        if rank == 0:
            model.zero_grad(set_to_none=False)  # writes this rank's slot at once
        got = gather(mine, world)
        assert torch.equal(got[0], got[1]), f"step {step}: the ranks' means differ"
    report["steps"] = 3


def scenario_ddp_hook(rank, world, report):
    from torch.nn.parallel import DistributedDataParallel as DDP
    from scalenn.distributed import CompressedHookState, compressed_hook
    loss_fn = nn.CrossEntropyLoss()
    for compression in (None, "bf16", "fp16", "int8"):
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                             nn.Linear(256, 10))  # > DDP's 1 MiB first bucket: several buckets
        ref = copy.deepcopy(base)
        ddp = DDP(base, bucket_cap_mb=0.1)
        state = CompressedHookState(compression=compression, int8_chunk=256)
        ddp.register_comm_hook(state, compressed_hook)
        errs = []
        for step in range(3):
            x, y = micro_batches(rank, step, 1)[0]
            ref.zero_grad(set_to_none=True)
            loss_fn(ref(x), y).backward()
            ddp.zero_grad(set_to_none=True)
            loss_fn(ddp(x), y).backward()
            for p, pr in zip(ddp.module.parameters(), ref.parameters()):
                per_rank = [g.double() for g in gather(pr.grad, world)]
                mean = sum(per_rank) / world
                mag = sum(g.abs() for g in per_rank) / world
                got = p.grad.double()
                others = gather(p.grad, world)
                assert all(torch.equal(others[0], o) for o in others)
                if compression == "int8":
                    errs.append(((got - mean).norm() / mean.norm()).item())
                else:
                    bound = ROUNDING[compression] * mag + UNDERFLOW[compression]
                    assert bool(((got - mean).abs() <= bound).all()), (compression, step)
        if errs:
            report["ddp_int8_rel_error_max"] = max(errs)
            assert max(errs) < 0.05, errs
        report[f"ddp_{compression}_buckets"] = len(state.wires)
        assert len(state.wires) >= 2, "the test wants several DDP buckets"
        report[f"ddp_{compression}_sent_bytes_per_rank"] = state.sent_bytes_per_rank
        # DDP reset: its hook state is per model
        del ddp


def train_run(rank, world, compression, steps=200, error_feedback=True):
    """A small MLP on a fixed synthetic 10-class problem; returns the final full-data loss."""
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(10, 32, generator=g) * 1.5
    labels = torch.randint(0, 10, (4096,), generator=g)
    data = centers[labels] + 2.5 * torch.randn(4096, 32, generator=g)  # overlapping classes
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    sync = FusedAllReduce(model, bucket_mb=0.02, first_bucket_mb=0.005, compression=compression,
                          timeout=60, int8_chunk=256, error_feedback=error_feedback)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()
    shard = torch.arange(rank, 4096, world)
    bg = torch.Generator().manual_seed(99 + rank)
    for step in range(steps):
        idx = shard[torch.randint(0, shard.numel(), (128,), generator=bg)]
        opt.zero_grad()
        loss_fn(model(data[idx]), labels[idx]).backward()
        sync.wait()
        opt.step()
    with torch.no_grad():
        final = loss_fn(model(data), labels).item()
    # Everything the wires hold (buffers and error-feedback state), in copies of the float32
    # gradients.
    held = sum(t.numel() * t.element_size() for b in sync.buckets
               for t in vars(b.wire).values() if isinstance(t, torch.Tensor))
    sync.close()
    return final, held / (4 * sum(p.numel() for p in model.parameters()))


def scenario_train(rank, world, report):
    runs = {str(c): train_run(rank, world, c) for c in (None, "bf16", "int8")}
    runs["int8 without error feedback"] = train_run(rank, world, "int8", error_feedback=False)
    losses = {c: loss for c, (loss, _) in runs.items()}
    report["final_loss"] = losses
    report["wire_memory_copies"] = {c: copies for c, (_, copies) in runs.items()}
    base = losses["None"]
    for c in ("bf16", "int8"):
        assert abs(losses[c] - base) <= 0.02 * base, (c, losses)
    # int8 on the CPU: records, residuals included, within one copy of the gradients.
    assert report["wire_memory_copies"]["int8"] <= 1.0, report["wire_memory_copies"]


def scenario_mismatch(rank, world, report):
    cases = {
        "shape": lambda: nn.Linear(16, 8 if rank == 0 else 9),
        "count": lambda: nn.Linear(16, 8, bias=(rank == 0)),
        "dtype": lambda: nn.Linear(16, 8, dtype=torch.float32 if rank == 0 else torch.bfloat16),
    }
    for name, build in cases.items():
        try:
            FusedAllReduce(build(), timeout=30)
        except ValueError as exc:
            report[name] = str(exc)
        else:
            raise AssertionError(f"mismatched models ({name}) were accepted")
    assert "shape (8, 16) on rank 0 and (9, 16) on rank 1" in report["shape"], report["shape"]
    assert "rank 0 has 2 parameters, rank 1 has 1" in report["count"], report["count"]
    assert "dtype float32 on rank 0 and bfloat16 on rank 1" in report["dtype"], report["dtype"]


def _fault_setup(rank):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, torch.randn(8, 64)


def scenario_kill(rank, world, report, timeout=20.0, transport="backend"):
    """Rank 1 dies in the middle of its second backward pass (after its first bucket was sent);
    rank 0 must raise CollectiveError within the timeout."""
    model, x = _fault_setup(rank)
    sync = FusedAllReduce(model, timeout=timeout, bucket_mb=0.01, first_bucket_mb=0.001,
                          transport=transport)
    assert sync.transport == transport
    assert len(sync.buckets) >= 2
    model(x).sum().backward()
    sync.wait()
    if rank == 1:
        # abrupt death mid-backward: no cleanup, sockets closed by the OS
        model[0].weight.register_hook(lambda grad: os._exit(17))
    model(x).sum().backward()
    t0 = time.monotonic()
    try:
        sync.wait()
    except CollectiveError as exc:
        report["error"] = str(exc)
        report["seconds"] = time.monotonic() - t0
        report["timeout"] = timeout
    else:
        raise AssertionError("wait() succeeded although rank 1 died")


def scenario_kill_shm(rank, world, report):
    """As kill, on the shared-memory transport: rank 0 sees rank 1's liveness lock gone."""
    scenario_kill(rank, world, report, transport="shm")


def scenario_hang(rank, world, report, transport="shm"):
    """Rank 1 stops (sleeps) mid-run; rank 0 must raise CollectiveError after ~timeout."""
    timeout = 3.0
    model, x = _fault_setup(rank)
    sync = FusedAllReduce(model, timeout=timeout, transport=transport)
    model(x).sum().backward()
    sync.wait()
    if rank == 1:
        time.sleep(3600)  # the test kills this process
    model(x).sum().backward()
    t0 = time.monotonic()
    try:
        sync.wait()
    except CollectiveError as exc:
        report["error"] = str(exc)
        report["seconds"] = time.monotonic() - t0
        report["timeout"] = timeout
    else:
        raise AssertionError("wait() succeeded although rank 1 stopped")


def scenario_hang_backend(rank, world, report):
    scenario_hang(rank, world, report, transport="backend")


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items()
             if name.startswith("scenario_")}


def main():
    scenario, rank, world, outdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    result = {"ok": False, "error": "", "report": {}}
    try:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(outdir, 'store')}",
                                rank=rank, world_size=world, timeout=PG_TIMEOUT)
        SCENARIOS[scenario](rank, world, result["report"])
        result["ok"] = True
    except BaseException:
        result["error"] = traceback.format_exc()
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    sys.stdout.flush()
    # Skip process-group teardown: after a fault it can block on the dead peer.
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
