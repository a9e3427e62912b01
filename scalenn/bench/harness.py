"""Benchmark machinery: interleaved timing, inputs rotated out of cache, medians and ratios,
and results written as json + markdown + png with the machine, the command and the date.

Rules (DESIGN.md): variants of one case run interleaved in one process (A B C A B C ...), so
drift and noise hit all of them alike; each call reads inputs (weights included) that are not in
cache, by rotating through copies that together exceed the last-level cache; we report medians
and ratios to a stated baseline, never a single run.
"""
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

# Rotated copies of the inputs of one variant should together exceed this (8x a 32 MiB L3).
# At 3x, a variant timed in its steady state still found part of its weights in the L3:
# Int8Linear 4096 x 4096, M = 1, 2 threads: 6 copies (96 MiB) ~300 us a call, 24 copies ~365.
ROTATION_BYTES = 256 * 2**20
# --quick (a smoke test of the machinery, not a measurement): 2x the L3, a fraction of the memory.
QUICK_ROTATION_BYTES = 64 * 2**20
_rotation_bytes = ROTATION_BYTES


def set_quick(quick: bool) -> None:
    """Smaller rotations for `scalenn bench --quick`."""
    global _rotation_bytes
    _rotation_bytes = QUICK_ROTATION_BYTES if quick else ROTATION_BYTES


def copies_for(bytes_per_copy: int, target: Optional[int] = None, max_copies: int = 64) -> int:
    """How many copies of an input of `bytes_per_copy` bytes to rotate through so that a call
    finds it in memory, not in cache (together `target` bytes, default the rotation size)."""
    target = _rotation_bytes if target is None else target
    if bytes_per_copy <= 0:
        return 1
    return int(max(1, min(max_copies, -(-target // bytes_per_copy))))


class Rotator:
    """Cycles through prepared argument sets; `next()` returns the next one."""

    def __init__(self, items: Sequence):
        if not items:
            raise ValueError("Rotator needs at least one item")
        self.items = list(items)
        self.i = 0

    def next(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


def interleaved_times(variants: Dict[str, Callable[[], object]], rounds: int = 15,
                      calls_per_round: int = 0, target_round_s: float = 0.02,
                      warmup: int = 2, order_seed: Optional[int] = 0,
                      settle_s: float = 0.01) -> Dict[str, List[float]]:
    """Time each variant `rounds` times, interleaved; returns seconds per call per round.

    Each round runs the variants in a fresh random order (`order_seed`; None: always the given
    order), each `calls_per_round` times back to back; by default (calls_per_round <= 0) every
    variant gets its own count, sized from a warm-up call so that it runs about
    `target_round_s`, after `settle_s` of untimed calls.

    Why: a variant runs slower for several ms after another one streamed memory (Int8Linear
    4096 x 4096, M = 1, 2 threads, 24 rotated copies, right after dense fp32: 460 us on the
    first call, 365 from the 30th). With one count for all, sized by the slowest variant, a
    0.1 ms variant ran its few calls entirely in that state while a 3 ms one mostly did not;
    in a fixed order the variant behind a heavy one paid it every round (Int8Linear behind
    dense fp32: 401 us in a fixed order, 297-313 us shuffled, otherwise identical runs). Now
    each variant is timed in its steady state, and shuffling spreads what remains evenly.

    An explicit calls_per_round (distributed benchmarks: every rank must make the same calls)
    uses that count for every variant and no settling; the order depends only on the seed and
    the variant names, so ranks agree on it.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    calls = {name: calls_per_round for name in variants}
    settle = {name: 0 for name in variants}
    if calls_per_round <= 0:
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            t = max(time.perf_counter() - t0, 1e-7)
            calls[name] = int(max(1, min(1000, target_round_s / t)))
            settle[name] = int(min(1000, -(-settle_s // t)))
    out = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(order_seed).shuffle if order_seed is not None else None
    for _ in range(rounds):
        if shuffle:
            shuffle(order)
        for name in order:
            fn, n = variants[name], calls[name]
            for _ in range(settle[name]):
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - t0) / n)
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def iqr(xs: Sequence[float]) -> float:
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


@dataclass
class Report:
    """A benchmark's table: one row per (case, variant)."""
    name: str
    columns: List[str]
    rows: List[Dict[str, object]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    plot: Optional[Callable] = None  # fn(report, matplotlib_axes_figure) -> None

    def add(self, **row):
        self.rows.append(row)


def machine_info() -> Dict[str, object]:
    from .. import _C
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": _C.current_isa(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "scalenn": _C.build_info()["version"],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["scalenn"] + sys.argv[1:]) if sys.argv else "",
    }


def format_value(v) -> str:
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 10000:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return f"{v:.3e}"
    return str(v)


def to_markdown(report: Report, meta: Dict[str, object]) -> str:
    lines = [f"# scalenn bench {report.name}", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines.append("")
    lines.append("| " + " | ".join(report.columns) + " |")
    lines.append("|" + "---|" * len(report.columns))
    for row in report.rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in report.columns) + " |")
    if report.notes:
        lines.append("")
        lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: str) -> Dict[str, str]:
    """Write NAME.json, NAME.md and (when a plot function is given) NAME.png into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    meta = machine_info()
    base = os.path.join(out_dir, report.name)
    paths = {"json": base + ".json", "md": base + ".md"}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "columns": report.columns, "rows": report.rows,
                   "notes": report.notes}, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(to_markdown(report, meta))
    if report.plot is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=(10, 5.5))
        report.plot(report, fig)
        fig.suptitle(f"scalenn bench {report.name} - {meta['cpu']} - {meta['date'][:10]}",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=110)
        plt.close(fig)
        paths["png"] = base + ".png"
    return paths


def ratio_bar_plot(group_key: str, variant_key: str, value_key: str, ylabel: str):
    """A plot function: grouped bars of `value_key` per group, one bar per variant."""
    def plot(report: Report, fig):
        ax = fig.add_subplot(1, 1, 1)
        groups = list(dict.fromkeys(str(r[group_key]) for r in report.rows))
        variants = list(dict.fromkeys(str(r[variant_key]) for r in report.rows))
        width = 0.8 / max(1, len(variants))
        for vi, v in enumerate(variants):
            xs, ys = [], []
            for gi, g in enumerate(groups):
                for r in report.rows:
                    if str(r[group_key]) == g and str(r[variant_key]) == v:
                        xs.append(gi + vi * width)
                        ys.append(float(r[value_key]))
            ax.bar(xs, ys, width=width, label=v)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.legend(fontsize=7)
    return plot


def speedup_by_shape_plot(value_key: str, ylabel: str, keep=lambda row: True):
    """A plot function: one panel per weight shape (rows of the first thread count that `keep`
    accepts), grouped log-scale bars of `value_key` per pattern, one bar per batch size M."""
    def plot(report: Report, fig):
        threads = report.rows[0]["threads"]
        rows = [r for r in report.rows if r["threads"] == threads and keep(r)]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        for si, shape in enumerate(shapes):
            ax = fig.add_subplot(1, len(shapes), si + 1)
            mine = [r for r in rows if r["shape"] == shape]
            pats = list(dict.fromkeys(r["pattern"] for r in mine))
            Ms = list(dict.fromkeys(r["M"] for r in mine))
            width = 0.8 / max(1, len(Ms))
            for mi, M in enumerate(Ms):
                ys = [next(r[value_key] for r in mine if r["M"] == M and r["pattern"] == p)
                      for p in pats]
                ax.bar([i + mi * width for i in range(len(pats))], ys, width=width,
                       label=f"M={M}")
            ax.set_yscale("log")
            ax.axhline(1.0, color="k", lw=0.6)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(pats))])
            ax.set_xticklabels(pats, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{shape}, {threads} thread(s)", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    return plot
