"""`scalenn bench quantize`: per-row int8 quantization, scalenn's kernel vs the same computation
composed from torch ops (what a user would write without scalenn)."""
import torch

from .. import ops
from . import harness


def torch_composed(x: torch.Tensor):
    """Per-row symmetric int8 quantization from stock torch ops."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = amax / 127.0
    q = torch.round(x.float() / scale.clamp_min(1e-30)).clamp_(-127, 127).to(torch.int8)
    return q, scale


SHAPES = [(1, 4096), (16, 4096), (128, 4096), (1024, 4096), (4096, 4096), (64, 65536)]


def run(args) -> harness.Report:
    report = harness.Report(
        name="quantize",
        columns=["dtype", "shape", "threads", "variant", "median_us", "iqr_us", "GB/s",
                 "speedup_vs_torch"])
    shapes = SHAPES[:3] if args.quick else SHAPES
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            for rows, K in shapes:
                nbytes = rows * K * dtype.itemsize
                xs = harness.Rotator([torch.randn(rows, K).to(dtype)
                                      for _ in range(harness.copies_for(nbytes))])
                variants = {
                    "torch ops": lambda: torch_composed(xs.next()),
                    "scalenn": lambda: ops.quantize_per_row(xs.next()),
                }
                times = harness.interleaved_times(variants, rounds=args.rounds)
                base = harness.median(times["torch ops"])
                moved = nbytes + rows * K + rows * 4  # read x, write q and scale
                for name, ts in times.items():
                    med = harness.median(ts)
                    report.add(dtype=str(dtype).replace("torch.", ""), shape=f"{rows}x{K}",
                               threads=threads, variant=name, median_us=med * 1e6,
                               iqr_us=harness.iqr(ts) * 1e6, **{"GB/s": moved / med / 1e9},
                               speedup_vs_torch=base / med)
    report.notes.append("speedup_vs_torch = median time of the torch-ops composition / median "
                        "time of the variant (same run, interleaved, inputs rotated from memory)")
    report.plot = _plot
    return report


def _plot(report, fig):
    rows = [r for r in report.rows if r["variant"] == "scalenn"]
    labels = [f"{r['dtype']} {r['shape']} t{r['threads']}" for r in rows]
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(rows)), [r["speedup_vs_torch"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up of scalenn over torch ops (x, log scale)")
