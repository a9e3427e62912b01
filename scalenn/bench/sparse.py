"""`scalenn bench sparse`: pruned Linear layers, scalenn's SparseLinear kernels vs dense fp32
nn.Linear, dense bf16, and torch.sparse CSR (int32 indices) / BSR matmul on the same weights.

For each weight shape, thread count and batch M, every variant of every pattern runs in one
interleaved group (A B C ... A B C ...), weights rotated through copies so that each call reads
them from memory. Patterns: unstructured 50/75/90/95%, 2:4, block 1x16 and 4x4 at 90%.
`auto` is what scalenn.sparsify would run for that layer (its measured cost-model choice, made
before the timed run): the sparse kernel, or dense fp32 when sparse was not faster.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import compress
from ..compress.sparsify import DEFAULT_BATCH_SIZES, calibrate
from ..nn.sparse_linear import SparseLinear
from . import harness

SHAPES = [(4096, 4096), (4096, 11008)]  # (in_features K, out_features N)
BATCHES = [1, 16, 128, 1024]
PATTERNS = [("unstructured", 0.5), ("unstructured", 0.75), ("unstructured", 0.9),
            ("unstructured", 0.95), ("2:4", 0.5), ("block:1x16", 0.9), ("block:4x4", 0.9)]


def pattern_label(pattern, s):
    return f"{pattern} {round(s * 100)}%" if pattern == "unstructured" else \
        (pattern if pattern == "2:4" else f"{pattern} {round(s * 100)}%")


def pruned_linear(K, N, pattern, s, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.normal_()
    compress.prune(lin, s, pattern)  # a bare Linear is its own only layer
    compress.remove_masks(lin)
    return lin


def csr_int32(w):
    c = w.to_sparse_csr()
    return torch.sparse_csr_tensor(c.crow_indices().to(torch.int32),
                                   c.col_indices().to(torch.int32), c.values(), c.shape)


def bsr_int32(w, block):
    b = w.to_sparse_bsr(block)
    return torch.sparse_bsr_tensor(b.crow_indices().to(torch.int32),
                                   b.col_indices().to(torch.int32), b.values(), b.shape)


def _bytes(t):
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return (t.values().numel() * t.values().element_size() +
                t.col_indices().numel() * 4 + t.crow_indices().numel() * 4)
    return t.numel() * t.element_size()


def _rotated(make_one, nbytes, limit=64):
    return harness.Rotator([make_one() for _ in range(harness.copies_for(nbytes, max_copies=limit))])


def run(args) -> harness.Report:
    warnings.filterwarnings("ignore", message=".*Sparse.*")
    warnings.filterwarnings("ignore", message=".*sparse.*")
    report = harness.Report(
        name="sparse",
        columns=["shape", "threads", "M", "pattern", "dense_fp32_us", "dense_bf16_us",
                 "torch_sparse_us", "scalenn_us", "x_vs_fp32", "x_vs_torch_sparse", "auto",
                 "auto_x_vs_fp32", "read_floor_us", "scalenn_vs_read"])
    shapes = SHAPES[:1] if args.quick else SHAPES
    batches = [1, 16] if args.quick else BATCHES
    patterns = [PATTERNS[2], PATTERNS[4], PATTERNS[5]] if args.quick else PATTERNS
    for K, N in shapes:
        layers = {}
        for pattern, s in patterns:
            lin = pruned_linear(K, N, pattern, s)
            layers[(pattern, s)] = lin
        dense_w = layers[patterns[0]].weight.detach().clone().normal_()  # an unpruned weight
        for threads in args.threads:
            torch.set_num_threads(threads)
            # What sparsify would choose for each layer (its own calibration, untimed here).
            choices = {}
            modules = {}
            for key, lin in layers.items():
                _, rep = compress.sparsify(lin, batch_sizes=tuple(batches))  # lin is not changed
                choices[key] = rep.layers[0]
                modules[key] = SparseLinear.from_dense(lin, None, rep.layers[0].layout)
            for M in batches:
                x = torch.randn(M, K)
                xb = x.to(torch.bfloat16)
                xt = x.t().contiguous()
                wf = _rotated(lambda: dense_w.clone(), _bytes(dense_w))
                wb = _rotated(lambda: dense_w.to(torch.bfloat16), dense_w.numel() * 2)
                variants = {"dense fp32": lambda: F.linear(x, wf.next()),
                            "dense bf16": lambda: F.linear(xb, wb.next())}
                if M == 1:  # the memory floor of batch 1, in the same rounds (see the notes)
                    variants["read dense fp32"] = _read_floor(_bytes(dense_w))
                peers = {}
                unsupported = set()
                for (pattern, s), lin in layers.items():
                    label = pattern_label(pattern, s)
                    mod = modules[(pattern, s)]
                    nbytes = sum(t.numel() * t.element_size()
                                 for t in (mod.values, mod.indices, mod.offsets))
                    mods = _rotated(lambda: SparseLinear.from_dense(lin, None, mod.layout), nbytes)
                    variants[f"scalenn {label}"] = (lambda mods=mods: _no_grad(mods.next(), x))
                    if M == 1:
                        variants[f"read {label}"] = _read_floor(nbytes)
                    w = lin.weight.detach()
                    peer = None
                    if pattern.startswith("block"):
                        R, C = map(int, pattern.split(":")[1].split("x"))
                        peer = bsr_int32(w, (R, C))
                        name = "torch BSR"
                        try:
                            torch.sparse.mm(peer, xt[:, :1])
                        except RuntimeError:
                            # MKL: "doesn't support matrices with non-square blocks" (1x16)
                            peer, name = None, "torch CSR"
                            unsupported.add(label)
                    if peer is None:
                        # CSR at M = 1024 and density >= 25% takes seconds per call: skipped.
                        if M >= 1024 and s < 0.9:
                            continue
                        peer = csr_int32(w)
                        name = "torch CSR"
                    ps = _rotated(lambda peer=peer: peer.clone(), _bytes(peer), limit=16)
                    variants[f"{name} {label}"] = (lambda ps=ps: torch.sparse.mm(ps.next(), xt))
                    peers[label] = f"{name} {label}"
                rounds = args.rounds if M <= 128 else max(3, args.rounds // 3)
                with torch.no_grad():
                    times = harness.interleaved_times(variants, rounds=rounds)
                med = {k: harness.median(v) for k, v in times.items()}
                for (pattern, s) in layers:
                    label = pattern_label(pattern, s)
                    sc = med[f"scalenn {label}"]
                    peer = med.get(peers.get(label, ""), None)
                    entry = choices[(pattern, s)]
                    dense_from = _dense_from(entry)
                    sparse_here = entry.choice == "sparse" and (dense_from is None or M < dense_from)
                    choice = "sparse" if sparse_here else "dense"
                    auto = sc if sparse_here else med["dense fp32"]
                    if label in unsupported:
                        label = label + " (peer: CSR, torch BSR rejects non-square blocks)"
                    floor = med.get(f"read {pattern_label(pattern, s)}")
                    report.add(shape=f"{K}->{N}", threads=threads, M=M, pattern=label,
                               dense_fp32_us=med["dense fp32"] * 1e6,
                               dense_bf16_us=med["dense bf16"] * 1e6,
                               torch_sparse_us=(peer * 1e6) if peer else "skipped",
                               scalenn_us=sc * 1e6, x_vs_fp32=med["dense fp32"] / sc,
                               x_vs_torch_sparse=(peer / sc) if peer else "",
                               auto=choice, auto_x_vs_fp32=med["dense fp32"] / auto,
                               read_floor_us=floor * 1e6 if floor else "",
                               scalenn_vs_read=sc / floor if floor else "")
                if M == 1:
                    report.notes.append(
                        f"{K}->{N}, {threads} thread(s), M=1: dense fp32 took "
                        f"{med['dense fp32'] / med['read dense fp32']:.2f}x the time of reading "
                        f"its {_bytes(dense_w) / 2**20:.0f} MiB")
    report.notes += [
        "x_vs_fp32 = dense fp32 median / scalenn median (same interleaved run); "
        "x_vs_torch_sparse = torch.sparse.mm median (CSR int32 indices for unstructured/2:4, "
        "BSR int32 for blocks) / scalenn median",
        "torch CSR at M=1024 for 50%/75% unstructured and 2:4 is skipped (seconds per call)",
        "auto = what the layer scalenn.sparsify built runs at this M (sparse kernel, or dense: "
        "layer kept dense, or dense matmul from its dense_from_batch on), from sparsify's own "
        "calibration "
        f"(batch sizes {list(DEFAULT_BATCH_SIZES)}), made before this run; auto_x_vs_fp32 uses "
        "this run's times of that choice",
        "weights rotated from memory (harness.copies_for); activations reused (in cache)",
        "read_floor_us (M=1): a streaming read (torch sum) of as many bytes as scalenn's packed "
        "weight (values + indices + offsets), rotated the same way, in the same rounds; "
        "scalenn_vs_read = scalenn / that read (1.0: the kernel runs at memory speed). At equal "
        "speed, x_vs_fp32 could reach dense fp32's bytes / the packed bytes: 6.7x for 90% "
        "unstructured with 16-bit indices (6 bytes per kept weight against 40 for dense).",
    ]
    report.plot = _plot
    return report


def _read_floor(nbytes):
    reads = _rotated(lambda: torch.ones(max(1, nbytes // 4)), nbytes)
    return lambda: reads.next().sum()


def _dense_from(entry):
    """The batch size from which sparsify's layer runs dense (None: never), from its report."""
    marker = "dense matmul on the unpacked weight from batch "
    if marker in entry.reason:
        return int(entry.reason.split(marker)[1].split()[0])
    return None


def _no_grad(mod, x):
    return mod(x)


_plot = harness.speedup_by_shape_plot("x_vs_fp32", "speed-up of scalenn over dense fp32 (x)")
