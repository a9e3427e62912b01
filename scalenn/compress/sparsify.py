"""sparsify(model): masked or already-sparse nn.Linear -> packed SparseLinear, where it pays.

For each Linear the layout follows the pattern it was pruned with (csr for unstructured, nm:N:M
for N:M, bsr:RxC for blocks; csr when the zeros fit nothing else). A cost model then decides,
by measurement on this machine, whether the sparse kernel beats the dense layer at every batch
size in `batch_sizes`; if not (and force is False) the layer stays a dense nn.Linear with the
masks baked in. The measurements are cached per process by (shape, layout, density, batch,
threads, ISA), so a model with many equal layers is calibrated once per shape.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .. import _C
from ..nn.swap import LayerFilter, make_filter, named_modules_of_type, replace_module
from .prune import PATTERN_ATTR, current_mask, parse_pattern

DEFAULT_BATCH_SIZES = (1, 16, 128, 1024)
_CALIBRATION: Dict[tuple, Tuple[float, float]] = {}


@dataclass
class SparsifyEntry:
    name: str
    shape: Tuple[int, int]
    pattern: str
    layout: str
    density: float
    choice: str                      # "sparse" | "dense"
    reason: str
    speedup: Dict[int, float] = field(default_factory=dict)  # batch -> dense_time / sparse_time


@dataclass
class SparsifyReport:
    layers: List[SparsifyEntry] = field(default_factory=list)

    def to_dict(self):
        return {"layers": [vars(e) for e in self.layers]}

    def __str__(self) -> str:
        lines = ["sparsify:"]
        for e in self.layers:
            sp = " ".join(f"M={m}:{r:.2f}x" for m, r in e.speedup.items())
            lines.append(f"  {e.name:28s} {str(e.shape):14s} {e.pattern:12s} {e.layout:9s} "
                         f"density={e.density:.3f} -> {e.choice} ({e.reason}) {sp}")
        return "\n".join(lines)


def layout_for(pattern: str, weight: torch.Tensor, keep: torch.Tensor) -> str:
    """The packed layout for a weight pruned with `pattern` whose kept entries are `keep`."""
    out_f, in_f = weight.shape
    try:
        pat = parse_pattern(pattern)
    except ValueError:
        return "csr"
    if pat.kind == "nm" and in_f % pat.m == 0 and (keep.numel() == 0 or int(
            keep.reshape(out_f, -1, pat.m).sum(dim=2).max()) <= pat.n):
        return f"nm:{pat.n}:{pat.m}"
    if pat.kind == "block" and out_f % pat.n == 0 and in_f % pat.m == 0:
        return f"bsr:{pat.n}x{pat.m}"
    return "csr"


def _time(fn, reps: int, budget_s: float = 0.5) -> float:
    """Best of `reps` timed calls after two warm-up calls (the first call of a shape may
    create kernels/primitives); fewer reps once `budget_s` is spent."""
    fn()
    fn()
    best, spent = math.inf, 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


def calibrate(dense: nn.Linear, sparse: nn.Module, batch: int, reps: int = 5
              ) -> Tuple[float, float]:
    """(dense seconds, sparse seconds) for one forward at this batch size (cached)."""
    key = (sparse.out_features, sparse.in_features, sparse.layout, round(sparse.density, 2),
           batch, torch.get_num_threads(), _C.current_isa())
    if key not in _CALIBRATION:
        x = torch.randn(batch, sparse.in_features)
        w = dense.weight.detach().float()
        with torch.no_grad():
            td = _time(lambda: F.linear(x, w), reps)
            ts = _time(lambda: sparse(x), reps)
        _CALIBRATION[key] = (td, ts)
    return _CALIBRATION[key]


def _bake(module: nn.Linear) -> None:
    if current_mask(module) is not None:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def sparsify(model: nn.Module, filter: LayerFilter = None, force: bool = False,
             batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, min_sparsity: float = 0.3
             ) -> Tuple[nn.Module, SparsifyReport]:
    """Replace pruned nn.Linear layers of `model` (in place) by SparseLinear where the sparse
    kernel is at least as fast as the dense layer at every batch size in `batch_sizes` (CPU,
    float32, measured now); `force=True` converts every layer with zeros regardless. Layers
    with sparsity below `min_sparsity` stay dense without measuring. Masks of layers
    left dense are baked in. Returns (model, report)."""
    from ..nn.sparse_linear import SparseLinear  # lazily: scalenn.nn imports this package
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify: expected an nn.Module, got {type(model).__name__}")
    if any((not isinstance(b, int)) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    report = SparsifyReport()
    from ..nn.int8_linear import Int8Linear
    if isinstance(model, (nn.Linear, Int8Linear)):  # a bare layer: the converted module is returned
        holder = nn.Sequential(model)
        _, report = sparsify(holder, lambda m, n: make_filter(filter)(m, ""), force, batch_sizes,
                             min_sparsity)
        for e in report.layers:
            e.name = ""
        return holder[0], report
    for name, module in list(named_modules_of_type(model, nn.Linear, filter)):
        weight = module.weight.detach()
        mask = current_mask(module)
        keep = (weight != 0) if mask is None else (mask != 0) & (weight != 0)
        pattern = getattr(module, PATTERN_ATTR, "unstructured")
        numel = weight.numel()
        density = int(keep.count_nonzero()) / numel if numel else 1.0
        layout = layout_for(pattern, weight, keep)
        shape = tuple(weight.shape)
        entry = SparsifyEntry(name, shape, pattern, layout, density, "dense", "")
        report.layers.append(entry)
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            entry.reason = f"sparse kernels run float32 on CPU; layer is {weight.dtype} on " \
                           f"{weight.device.type}"
            _bake(module)
            continue
        if not force and 1.0 - density < min_sparsity:
            entry.reason = f"sparsity {1 - density:.3f} below min_sparsity {min_sparsity}"
            _bake(module)
            continue
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias.detach())
        sparse = SparseLinear.from_dense(plain, keep, layout)
        entry.density = sparse.density
        slower = []
        for b in sorted(int(b) for b in batch_sizes):
            td, ts = calibrate(plain, sparse, b)
            entry.speedup[b] = td / ts
            if ts > td:
                slower.append(b)
        if force:
            entry.choice, entry.reason = "sparse", "forced" if slower else \
                "faster or equal at every batch size"
        elif not slower:
            entry.choice, entry.reason = "sparse", "faster or equal at every batch size"
        else:
            # Sparse loses only from some batch size on (the usual shape: its advantage is in
            # bytes, dense's in FLOP/s): keep it packed, run batches from there on as dense.
            first = slower[0]
            if all(b in slower for b in entry.speedup if b >= first) and first > min(entry.speedup):
                sparse.dense_from_batch = first
                entry.choice = "sparse"
                entry.reason = f"sparse below batch {first}, dense matmul on the unpacked " \
                               f"weight from batch {first} on"
            else:
                entry.reason = f"sparse kernel slower than dense at batch {slower}"
                _bake(module)
                continue
        replace_module(model, name, sparse)
    for name, module in list(named_modules_of_type(model, Int8Linear, filter)):
        if type(module) is Int8Linear:  # not Int8Conv2d, its im2col subclass
            _sparsify_int8(model, name, module, force, batch_sizes, min_sparsity, report)
    return model, report


def _sparsify_int8(model, name, module, force, batch_sizes, min_sparsity, report) -> None:
    """Int8Linear with zeros -> SparseInt8Linear where the sparse int8 kernel is not slower than
    the dense int8 one at every batch size (force: wherever it has zeros)."""
    from ..nn.sparse_int8_linear import SparseInt8Linear
    from . import sparse_int8_choice
    w = module.weight_int8
    density = float((w != 0).float().mean()) if w.numel() else 1.0
    entry = SparsifyEntry(name, tuple(w.shape), "int8", "-", density, "int8", "")
    report.layers.append(entry)
    if module.scheme != "int8_dynamic" or module.activation != "none":
        entry.reason = f"sparse int8 kernels are int8_dynamic without a fused activation; " \
                       f"layer is {module.scheme}/{module.activation}"
        return
    if w.device.type != "cpu":
        entry.reason = f"sparse int8 kernels are CPU kernels; layer is on {w.device}"
        return
    if not force and 1.0 - density < min_sparsity:
        entry.reason = f"sparsity {1 - density:.3f} below min_sparsity {min_sparsity}"
        return
    sparse = SparseInt8Linear.from_int8(module)
    entry.layout = f"sparse_int8:{sparse.format}"
    key = (module.in_features, module.out_features, sparse.format, round(density, 2))
    slower = []
    for b in sorted(int(b) for b in batch_sizes):
        times = sparse_int8_choice.timed(module.to_dense(), {"int8": module, "sparse_int8": sparse},
                                         b, key)
        entry.speedup[b] = times["int8"] / times["sparse_int8"]
        if times["sparse_int8"] > times["int8"]:
            slower.append(b)
    if slower and not force:
        entry.reason = f"sparse int8 kernel slower than dense int8 at batch {slower}"
        return
    entry.choice = "sparse_int8"
    entry.reason = "forced" if slower else "sparse int8 faster or equal at every batch size"
    sparse.train(module.training)
    replace_module(model, name, sparse)
