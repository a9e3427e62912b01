"""`scalenn bench allreduce`: gradient averaging across 2 processes (gloo on loopback, 1 thread
each, spawned by this benchmark), variants interleaved round by round, medians and IQRs.

(a) pure communication of a ResNet-50 tensor-size profile (161 tensors, ~102 MB fp32):
    per-tensor all_reduce, all_reduce_coalesced, one preallocated flat buffer (the floor: no
    packing at all), and scalenn's FusedAllReduce (its hooks fired in backward order, then
    wait(): packing, 25 MB buckets, async collectives, unpacking) on both transports: "shm"
    (the same-host shared-memory exchange, FusedAllReduce's default on one machine) and "gloo"
    (the process group's collectives, what it uses across machines), also bf16, fp16, int8.
(b) end-to-end step (forward + backward + gradient averaging) of an ~18.6M-parameter MLP,
    batch 32 per rank: no communication, DDP default, DDP gradient_as_bucket_view, DDP with
    torch's fp16 hook, DDP with scalenn's bf16 / int8 comm hook, scalenn FusedAllReduce
    uncompressed / bucket view / bf16 on each transport, int8 on gloo.
(c) the pack kernel alone, in this process: scalenn.ops.bucket_pack vs torch.cat + mul + cast.
"""
import os
import subprocess
import sys
import tempfile
import json

import torch

from .. import ops
from . import harness


def _spawn(rounds: int, quick: bool, timeout: float = 1800.0):
    out = tempfile.mkdtemp(prefix="scalenn_bench_allreduce_")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, "-m", "scalenn.bench._allreduce_worker", str(r),
                               "2", out, str(rounds), "1" if quick else "0"], env=env)
             for r in range(2)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"allreduce benchmark workers failed: exit codes "
                           f"{[p.returncode for p in procs]}")
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def _rows(report, part, data, baseline, extra_baseline=None):
    times = data["times"]
    base = harness.median(times[baseline])
    for name, ts in times.items():
        med = harness.median(ts)
        row = dict(part=part, variant=name, median_ms=med * 1e3, iqr_ms=harness.iqr(ts) * 1e3,
                   time_vs_baseline=med / base, baseline=baseline)
        if name in data["sent"]:
            row["MB_sent_per_rank"] = data["sent"][name] / 1e6
        if name in data["extra"]:
            row["extra_buffer_MB"] = data["extra"][name] / 1e6
        report.add(**row)
    if extra_baseline:
        ref = harness.median(times[extra_baseline])
        for name, ts in times.items():
            if name.startswith("scalenn"):
                report.notes.append(f"({part}) {name}: {ref / harness.median(ts):.2f}x faster "
                                    f"than {extra_baseline}")


def _pack_rows(report, rounds, quick):
    from ..bench._allreduce_worker import resnet50_shapes
    shapes = resnet50_shapes()[:60] if quick else resnet50_shapes()
    grads = [torch.randn(s) for s in shapes]
    total = sum(g.numel() for g in grads)
    torch.set_num_threads(1)
    views = [g.reshape(-1) for g in grads]
    staging = torch.empty(total)
    for dtype in (torch.float32, torch.bfloat16):
        flat = torch.empty(total, dtype=dtype)

        def torch_ops():
            # what a user writes: a new concatenated buffer each step, scaled, cast
            return torch.cat(views).mul_(0.5).to(dtype)

        def torch_prealloc():
            # the strongest plain-torch form: concatenate into a preallocated buffer, scale in
            # place, cast into the preallocated wire buffer (3 passes instead of 1)
            torch.cat(views, out=staging).mul_(0.5)
            if dtype != torch.float32:
                flat.copy_(staging)

        variants = {"torch cat+mul+cast": torch_ops,
                    "torch preallocated cat(out=)+mul_+copy_": torch_prealloc,
                    "scalenn bucket_pack": lambda: ops.bucket_pack(grads, flat, 0.5)}
        times = harness.interleaved_times(variants, rounds=rounds, calls_per_round=1)
        base = harness.median(times["torch cat+mul+cast"])
        moved = total * 4 + total * dtype.itemsize
        for name, ts in times.items():
            med = harness.median(ts)
            report.add(part=f"(c) pack to {str(dtype)[6:]}, 1 thread", variant=name,
                       median_ms=med * 1e3, iqr_ms=harness.iqr(ts) * 1e3,
                       time_vs_baseline=med / base, baseline="torch cat+mul+cast",
                       **{"GB/s": moved / med / 1e9})


def run(args) -> harness.Report:
    rounds = max(15, args.rounds)
    report = harness.Report(
        name="allreduce",
        columns=["part", "variant", "median_ms", "iqr_ms", "time_vs_baseline", "baseline",
                 "MB_sent_per_rank", "extra_buffer_MB", "GB/s"])
    load_before = os.getloadavg()
    result = _spawn(rounds, args.quick)
    a, b = result["a"], result["b"]
    part_a = f"(a) comm, ResNet-50 profile: {a['info']['tensors']} tensors, {a['info']['MB']:.0f} MB"
    _rows(report, part_a, a, "one flat buffer (floor)", extra_baseline="per-tensor all_reduce")
    part_b = (f"(b) step, MLP {b['info']['params'] / 1e6:.1f}M params, batch "
              f"{b['info']['batch']}/rank")
    _rows(report, part_b, b, "DDP default")
    _pack_rows(report, rounds, args.quick)
    report.notes += [
        "2 processes x 1 thread, gloo over loopback (127.0.0.1) on one 2-core machine: both ranks "
        f"share the cores; {rounds} interleaved rounds, barrier before each variant; median and "
        "IQR of rank 0's wall time per call; time_vs_baseline = median / baseline's median.",
        "MB_sent_per_rank: bytes each rank puts on the wire per step by the ring algorithm "
        "(all-reduce 2(W-1)/W x buffer; int8: all_to_all + all_gather of 1-byte values plus a "
        "4-byte scale per 1024 values); shm: bytes the other ranks read from this rank's slot "
        "(the same 2(W-1)/W x buffer, through memory instead of sockets).",
        "shm = scalenn's same-host transport (scalenn/distributed/shm.py): the ranks pack into "
        "slots of one shared-memory file, each sums its shard in float32 and copies the other "
        "shards; gloo = the same FusedAllReduce on the process group's collectives (TCP over "
        "loopback here, the path across machines). DDP has only the gloo path.",
        "extra_buffer_MB: scalenn's communication buffers beyond the .grad tensors, per rank "
        "(shm: the rank's own slots; bucket view: "
        "the buckets are the .grad storage, so only flags/padding count; int8: the send and "
        "receive records and the error-feedback residuals, kept as int8 records on the CPU). DDP "
        "keeps one copy of the gradients in its buckets by design (none with "
        "gradient_as_bucket_view).",
        "Loopback moves bytes at memory speed, so compression saves less here than on a real "
        "network link, and its pack/quantize passes compete with the other rank and gloo's "
        "threads for the 2 cores; (a) and (b) are the pessimistic case for bf16/int8.",
        f"machine load average (1 min) at start / end: {load_before[0]:.1f} / "
        f"{os.getloadavg()[0]:.1f} (other processes on these cores distort the timings; "
        "interleaved ratios less than absolute times).",
    ]
    report.plot = _plot
    return report


def _plot(report, fig):
    parts = list(dict.fromkeys(r["part"] for r in report.rows))
    cols = 2
    rows_n = -(-len(parts) // cols)
    fig.set_size_inches(12, 4.2 * rows_n)
    for k, part in enumerate(parts):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        rows = [r for r in report.rows if r["part"] == part]
        ax.barh(range(len(rows)), [r["median_ms"] for r in rows],
                xerr=[r["iqr_ms"] / 2 for r in rows], color="tab:blue", ecolor="k")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([r["variant"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("median ms per call (error bar: IQR)", fontsize=8)
        ax.set_title(part, fontsize=8)
