"""`scalenn bench sparse_int8`: SparseInt8Linear (pruned int8 weights, sparse VNNI kernels)
against the dense int8 layers and the fp32 sparse layers a user could run instead.

The question it answers: once a layer is pruned, does storing its kept weights as int8 in a
sparse format beat (a) the best dense int8 layer on the same CPU and (b) keeping the pruned
weights in fp32 (scalenn SparseLinear, torch.sparse)? Variants per case, all interleaved in one
run (A B C ... A B C ...), weights rotated through copies that together exceed the L3, so that
every call reads its weights from memory, as in a model larger than the cache:
  dense fp32          F.linear on the unpruned weight (oneDNN/MKL)
  ao-x86, ao-onednn   torch.ao.quantization.quantize_dynamic Linear (fbgemm / oneDNN)
  torch-int-mm        per-row quantization + torch._int_mm + dequantization (torch ops)
  Int8Linear          scalenn dense int8 (int8_dynamic)
  SparseLinear        scalenn fp32 sparse kernel, in the layout scalenn.sparsify would pack
  torch CSR / BSR     torch.sparse.mm on the pruned fp32 weight (int32 indices)
  SparseInt8Linear    scalenn sparse int8, format chosen by SparseInt8Linear itself (bytes)
The dense variants do not depend on the pattern: they run once per (shape, threads, M) in the
same interleaved group as every pattern's sparse variants, so all ratios share one run.
"""
import copy
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _C
from ..compress.sparsify import layout_for
from ..nn.int8_linear import Int8Linear
from ..nn.sparse_int8_linear import SparseInt8Linear
from ..nn.sparse_linear import SparseLinear
from . import harness
# The dense int8 peers are built exactly as `bench int8` builds them, and the pruned weights and
# torch.sparse peers exactly as `bench sparse` does, so the three benchmarks' numbers compare.
from .int8 import IntMmLinear, _ao_dynamic, _EngineCall, _int_mm_available
from .sparse import _bytes, bsr_int32, csr_int32, pattern_label, pruned_linear

SHAPES = [(4096, 4096), (4096, 11008)]  # (in_features K, out_features N)
BATCHES = [1, 16, 128]
PATTERNS = [("unstructured", 0.75), ("unstructured", 0.9), ("unstructured", 0.95),
            ("block:1x4", 0.9), ("block:1x16", 0.9), ("2:4", 0.5)]
# --quick (the CLI test, < ~60 s on 2 cores): the first shape, M = 1 and 16, two patterns (one
# unstructured, one block, so both torch peers and both int8 formats usually appear).
QUICK_PATTERNS = [("unstructured", 0.9), ("block:1x4", 0.9)]
DENSE_INT8 = ("ao-x86", "ao-onednn", "torch-int-mm", "Int8Linear")


def _rotated(make_one, nbytes, limit=64):
    """Copies of a variant's weights that together exceed the L3 (harness.copies_for)."""
    return harness.Rotator([make_one() for _ in range(harness.copies_for(nbytes,
                                                                         max_copies=limit))])


def _with_bias(lin: nn.Linear, seed: int) -> nn.Linear:
    """`lin`'s (pruned) weight in an nn.Linear with a bias, so every variant adds one (the
    dense int8 peers always have a bias; torch.sparse.mm is the exception, see the notes)."""
    out = nn.Linear(lin.in_features, lin.out_features)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out.weight.copy_(lin.weight)
        out.bias.copy_(torch.randn(lin.out_features, generator=g) * 0.01)
    return out


def _sparse_linear_bytes(mod: SparseLinear) -> int:
    return sum(t.numel() * t.element_size() for t in (mod.values, mod.indices, mod.offsets))


def _sparse_int8_bytes(mod: SparseInt8Linear) -> int:
    # values + indices (rel, base) + row offsets + scales, as bytes_per_kept_weight counts them
    return int(round(mod.bytes_per_kept_weight * max(1, mod.kept)))


def _torch_peer(w: torch.Tensor, pattern: str):
    """(tensor, name) of torch.sparse's matmul on the pruned weight: BSR for block patterns
    when torch accepts the block shape, CSR otherwise (as in `bench sparse`)."""
    if pattern.startswith("block"):
        R, C = map(int, pattern.split(":")[1].split("x"))
        peer = bsr_int32(w, (R, C))
        try:
            torch.sparse.mm(peer, torch.zeros(w.shape[1], 1))
            return peer, "torch BSR"
        except RuntimeError:
            # MKL: "doesn't support matrices with non-square blocks" (1x4, 1x16)
            return csr_int32(w), "torch CSR (BSR rejected)"
    return csr_int32(w), "torch CSR"


def _build_layers(K, N, patterns):
    """Per pattern: the pruned fp32 Linear (with bias) and one SparseLinear / SparseInt8Linear /
    torch.sparse tensor built from it; their copies for rotation are made from these."""
    layers = {}
    for i, (pattern, s) in enumerate(patterns):
        lin = _with_bias(pruned_linear(K, N, pattern, s), seed=i)
        w = lin.weight.detach()
        keep = w != 0
        layout = layout_for(pattern, w, keep)  # what scalenn.sparsify packs for this pattern
        sp = SparseLinear.from_dense(lin, None, layout)
        si8 = SparseInt8Linear.from_dense(lin)  # format None: its own choice by stored bytes
        peer, peer_name = _torch_peer(w, pattern)
        layers[(pattern, s)] = dict(kept=int(keep.sum()), layout=layout, sp=sp, si8=si8,
                                    peer=peer, peer_name=peer_name)
        del lin, w, keep  # the fp32 pruned weight is not timed (dense fp32 uses its own)
    return layers


def _dense_variants(K, N, inp, have_int_mm):
    """The pattern-independent variants on an unpruned weight, each rotated from memory;
    they read the current activations from `inp` ("x": [M, K])."""
    def fresh_linear():
        lin = nn.Linear(K, N)
        with torch.no_grad():
            lin.weight.normal_(0, K ** -0.5)
        return lin

    fp32 = _rotated(fresh_linear, 4 * K * N)

    def fp32_call():
        lin = fp32.next()
        return F.linear(inp["x"], lin.weight, lin.bias)

    variants = {"dense fp32": fp32_call}
    for engine in ("x86", "onednn"):
        rot = _rotated(lambda e=engine: _EngineCall(_ao_dynamic(fresh_linear(), e), e), K * N)
        variants[f"ao-{engine}"] = lambda r=rot: r.next()(inp["x"])
    if have_int_mm:
        rot = _rotated(lambda: IntMmLinear(fresh_linear()), K * N)
        variants["torch-int-mm"] = lambda r=rot: r.next()(inp["x"])
    rot = _rotated(lambda: Int8Linear.from_dense(fresh_linear()), K * N)
    variants["Int8Linear"] = lambda r=rot: r.next()(inp["x"])
    return variants


def _placed(m: SparseInt8Linear) -> SparseInt8Linear:
    m.place_weights()  # a deep copy lands in ordinary memory; a layer users build does not
    return m


def _sparse_variants(layers, inp):
    """Per pattern: SparseLinear, the torch.sparse peer and SparseInt8Linear, rotated copies
    (deep copies: fresh storage, so each call's weights come from memory)."""
    variants, info = {}, {}
    for (pattern, s), L in layers.items():
        label = pattern_label(pattern, s)
        sp, si8, peer = L["sp"], L["si8"], L["peer"]
        rot = _rotated(lambda sp=sp: copy.deepcopy(sp), _sparse_linear_bytes(sp))
        variants[(label, "SparseLinear")] = lambda r=rot: r.next()(inp["x"])
        info[(label, "SparseLinear")] = (L["layout"], _sparse_linear_bytes(sp) / L["kept"])
        # At most 16 torch.sparse copies, as in `bench sparse` (it does not bind here: 95%
        # unstructured at 4096x4096 needs 15 copies to exceed the rotation target).
        rot = _rotated(lambda p=peer: p.clone(), _bytes(peer), limit=16)
        variants[(label, L["peer_name"])] = lambda r=rot: torch.sparse.mm(r.next(), inp["xt"])
        info[(label, L["peer_name"])] = ("fp32 int32-idx", _bytes(peer) / L["kept"])
        rot = _rotated(lambda m=si8: _placed(copy.deepcopy(m)), _sparse_int8_bytes(si8))
        variants[(label, "SparseInt8Linear")] = lambda r=rot: r.next()(inp["x"])
        info[(label, "SparseInt8Linear")] = (si8.format, si8.bytes_per_kept_weight)
    return variants, info


@torch.no_grad()
def run(args) -> harness.Report:
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    report = harness.Report(
        name="sparse_int8",
        columns=["shape", "threads", "M", "pattern", "variant", "median_ms",
                 "x_vs_best_dense_int8", "x_vs_fp32", "format", "bytes_per_kept"])
    have_int_mm = _int_mm_available()
    load_before = os.getloadavg()
    shapes = SHAPES[:1] if args.quick else SHAPES
    batches = [1, 16] if args.quick else BATCHES
    patterns = QUICK_PATTERNS if args.quick else PATTERNS
    previous_engine = torch.backends.quantized.engine
    try:
        for K, N in shapes:
            # Layers and their rotated copies do not depend on threads or M: built once per
            # shape; the variants read the activations of the current M from `inp`.
            inp = {}
            layers = _build_layers(K, N, patterns)
            dense = _dense_variants(K, N, inp, have_int_mm)
            sparse, info = _sparse_variants(layers, inp)
            variants = dict(dense)
            variants.update({f"{v} {label}": fn for (label, v), fn in sparse.items()})
            for threads in args.threads:
                torch.set_num_threads(threads)
                for M in batches:
                    torch.manual_seed(M)
                    inp["x"] = torch.randn(M, K)
                    inp["xt"] = inp["x"].t().contiguous()  # torch.sparse.mm computes W @ x^T
                    times = harness.interleaved_times(variants, rounds=args.rounds)
                    med = {k: harness.median(v) for k, v in times.items()}
                    best_int8 = min(med[v] for v in DENSE_INT8 if v in med)
                    shape = f"{K}->{N}"

                    def add(pattern, variant, t, fmt="", bpk=""):
                        report.add(shape=shape, threads=threads, M=M, pattern=pattern,
                                   variant=variant, median_ms=t * 1e3,
                                   x_vs_best_dense_int8=best_int8 / t,
                                   x_vs_fp32=med["dense fp32"] / t, format=fmt,
                                   bytes_per_kept=bpk)

                    for v in dense:
                        add("dense", v, med[v], "fp32" if v == "dense fp32" else "int8")
                    for (label, v) in sparse:
                        fmt, bpk = info[(label, v)]
                        add(label, v, med[f"{v} {label}"], fmt, bpk)
            del layers, dense, sparse, variants  # free this shape's copies before the next
    finally:
        torch.backends.quantized.engine = previous_engine
    report.notes += [
        "x_vs_best_dense_int8 = median of the fastest dense int8 layer (ao-x86, ao-onednn, "
        "torch-int-mm, scalenn Int8Linear) in the same run / the variant's median (>1: faster "
        "than every dense int8 layer); x_vs_fp32 = dense fp32 F.linear median / variant median",
        "bytes_per_kept = stored bytes per nonzero weight of the pruned layer: SparseInt8Linear "
        "values + indices + row offsets + per-channel scales (its bytes_per_kept_weight); "
        "SparseLinear and torch.sparse fp32 values + indices + offsets (block layouts store "
        "the zeros inside kept blocks too)",
        "format: SparseInt8Linear's own choice (elem16: one weight per entry, rows in groups "
        "of 16 sharing each 128-column window; quad: groups of 4 columns); SparseLinear's layout is scalenn.compress.sparsify.layout_for's for the "
        "pattern",
        "torch CSR/BSR: torch.sparse.mm(W, x^T) with int32 indices, no bias and the [N, M] "
        "result not transposed back: a lower bound of a torch.sparse layer; MKL rejects "
        "non-square BSR blocks (1x4, 1x16), so those rows run CSR",
        "every other variant has a bias; dense variants use an unpruned weight (their time "
        "does not depend on the values), sparse variants the pruned one",
        "medians of interleaved rounds; weights rotated through copies that exceed the L3; "
        "activations reused (in cache)",
        f"scalenn kernels: cpu isa {_C.current_isa()}",
        f"machine load average (1 min) at start / end: {load_before[0]:.1f} / "
        f"{os.getloadavg()[0]:.1f} (other processes on these {os.cpu_count()} cores distort "
        f"2-thread timings most)",
    ]
    report.plot = _plot
    return report


# SparseInt8Linear's speed-up over the best dense int8 layer, per shape (first thread count).
_plot = harness.speedup_by_shape_plot(
    "x_vs_best_dense_int8", "SparseInt8Linear speed-up over best dense int8 (x)",
    keep=lambda r: r["variant"] == "SparseInt8Linear")
