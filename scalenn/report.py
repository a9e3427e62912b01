"""The comparison table (terminal + markdown) and the plot (accuracy vs sparsity, latency bars)
that `scalenn demo` and `scalenn compress` write into their output folder.

A row is a dict: variant, top1 (0..1), params, nonzero, bytes, latency {batch: seconds}, and
status ("ok", what the row does and does not contain, or why it is missing, e.g. "skipped:
no CUDA device"). Missing numbers print as "-".
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

Curve = Tuple[str, List[Tuple[float, float]]]  # (label, [(sparsity, top1), ...])


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def _ratio(x: Optional[float], base: Optional[float]) -> str:
    return "" if x is None or not base else f" ({base / x:.2f}x)"


def table_rows(rows: Sequence[Dict], batch_sizes: Sequence[int]) -> Tuple[List[str], List[List[str]]]:
    """Header and cells; latency and bytes carry the ratio to the first row (dense baseline):
    >1x means smaller / faster than it."""
    header = ["variant", "test top-1", "params (nonzero)", "bytes (safetensors)"] + \
        [f"latency b={b}" for b in batch_sizes] + ["status"]
    base = rows[0] if rows else {}
    cells = []
    for r in rows:
        lat = r.get("latency") or {}
        top1 = r.get("top1")
        params = "-" if r.get("params") is None else (
            f"{r['params']:,}" + (f" ({r['nonzero']:,})" if r.get("nonzero") is not None else ""))
        cells.append([
            r["variant"], "-" if top1 is None else f"{100 * top1:.2f}%", params,
            _fmt_bytes(r.get("bytes")) + (_ratio(r.get("bytes"), base.get("bytes"))
                                           if r is not base else ""),
            *[_fmt_time(lat.get(b)) + (_ratio(lat.get(b), (base.get("latency") or {}).get(b))
                                       if r is not base else "") for b in batch_sizes],
            r.get("status", "ok")])
    return header, cells


def format_table(rows: Sequence[Dict], batch_sizes: Sequence[int] = (1, 256)) -> str:
    """Fixed-width text table for the terminal."""
    header, cells = table_rows(rows, batch_sizes)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells)]
    line = lambda vals: "  ".join(str(v).ljust(w) for v, w in zip(vals, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in cells])


def markdown_table(rows: Sequence[Dict], batch_sizes: Sequence[int] = (1, 256)) -> str:
    header, cells = table_rows(rows, batch_sizes)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(out)


def plot(path: str, rows: Sequence[Dict], curves: Sequence[Curve],
         batch_sizes: Sequence[int] = (1, 256), title: str = "") -> str:
    """PNG: accuracy vs sparsity (left) and one latency bar chart per batch size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 1 + len(batch_sizes), figsize=(5 + 4 * len(batch_sizes), 4.2))
    ax = axes[0]
    drawn = False
    for label, points in curves:
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot([100 * x for x in xs], [100 * y for y in ys], marker="o", label=label)
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pruning in this build", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("sparsity of the Linear weights (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs sparsity")
    ax.grid(alpha=0.3)
    timed = [r for r in rows if r.get("latency")]
    for ax, b in zip(axes[1:], batch_sizes):
        names = [r["variant"] for r in timed]
        vals = [r["latency"].get(b, 0) * 1e3 for r in timed]
        ax.barh(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per forward (median, interleaved)")
        ax.set_title(f"latency, batch {b}")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out_dir: str, name: str, title: str, rows: Sequence[Dict], curves: Sequence[Curve],
          sections: Sequence[Tuple[str, str]] = (), batch_sizes: Sequence[int] = (1, 256)) -> Dict[str, str]:
    """`<name>.md` (title, the table, extra (heading, markdown) sections, the plot) and
    `<name>.png` in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    png = plot(os.path.join(out_dir, f"{name}.png"), rows, curves, batch_sizes, title)
    md = [f"# {title}", "", markdown_table(rows, batch_sizes), "",
          "Ratios in parentheses are relative to the first row (higher = smaller / faster). "
          "Latencies are medians over interleaved rounds in one process.", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body.rstrip(), ""]
    md += [f"![accuracy vs sparsity and latency]({os.path.basename(png)})", ""]
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    return {"md": md_path, "png": png}
