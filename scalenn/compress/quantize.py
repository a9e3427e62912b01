"""scalenn.quantize / scalenn.calibrate / scalenn.prepare_qat: swap nn.Linear layers for
Int8Linear in place, with a report of what was swapped, what was kept and why.

Which layers are touched: nn.Linear (and QATLinear, its fake-quantized twin from prepare_qat),
and pruned layers (SparseLinear, or nn.Linear with a scalenn pruning mask), which become
SparseInt8Linear, a dense Int8Linear or stay as they are, whichever is measured fastest
(`_quantize_pruned`). Every other module type is left alone.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from .._ops.quantize import quantize_per_row_reference
from ..nn.int8_conv import Int8Conv2d
from ..nn.int8_linear import SCHEMES, Int8Linear, QATLinear
from ..nn.registry import is_compressed
from ..nn.sparse_int8_linear import SparseInt8Linear
from ..nn.sparse_linear import SparseLinear
from ..nn.swap import LayerFilter, make_filter, named_modules_of_type, replace_module
from . import int8_cost, sparse_int8_choice
from .prune import current_mask


@dataclass
class QuantizeReport:
    """One entry per Linear-like layer: name, shape, what happened and why."""
    scheme: str
    entries: List[dict] = field(default_factory=list)

    @property
    def swapped(self) -> List[str]:
        return [e["name"] for e in self.entries if e["action"] in ("int8", "sparse_int8")]

    @property
    def skipped(self) -> List[str]:
        return [e["name"] for e in self.entries if e["action"] not in ("int8", "sparse_int8")]

    def __str__(self) -> str:
        lines = [f"scalenn.quantize(scheme={self.scheme}): {len(self.swapped)} swapped, "
                 f"{len(self.skipped)} kept"]
        for e in self.entries:
            shape = f"{e.get('in_features', '?')}->{e.get('out_features', '?')}"
            lines.append(f"  {e['name']:<40} {e['type']:<12} {shape:<12} {e['action']:<6} "
                         f"{e['reason']}")
        return "\n".join(lines)

    __repr__ = __str__


def quantize(model: nn.Module, scheme: str = "int8_dynamic", filter: LayerFilter = None,
             skip: Iterable[str] = (), force: bool = False, batch_rows: int = 64,
             activation_dtype: torch.dtype = torch.float32, convs: bool = False,
             activation_check: Optional[Iterable] = None, max_activation_error: float = 0.01):
    """Replace the model's nn.Linear (and QATLinear) layers by Int8Linear, in place.

    filter: None, fn(module, fully_qualified_name) -> bool, or a list of name regexes (search).
    skip: names or regexes (full match) to leave alone.
    force: swap every selected layer; otherwise a layer is swapped only when the measured cost
        model (scalenn.compress.int8_cost) says its int8 kernel beats the dense layer at
        `batch_rows` rows per call, so quantize never makes a model slower.
    convs: also swap plain nn.Conv2d layers (groups=1, zero padding) for Int8Conv2d (int8 GEMM
        on im2col patches; scheme int8_dynamic). Opt-in: there is no cost model for
        convolutions (their cost depends on the input size, unknown here).
    activation_check: example inputs (an iterable of batches, each run as model(batch)). With
        scheme "int8_dynamic", the per-token int8 error of every Linear's inputs is measured on
        them, and a layer whose error exceeds max_activation_error (relative, ||x - x_q|| /
        ||x||) gets int8_weight_only instead: its activations stay float (heavy-tailed or
        outlier-ridden inputs), only its weight is int8.
    Returns (model, QuantizeReport).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize: expected an nn.Module, got {type(model).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {SCHEMES}, got {scheme!r}")
    if not (isinstance(max_activation_error, (int, float)) and max_activation_error > 0):
        raise ValueError(f"quantize: max_activation_error must be a positive number, got "
                         f"{max_activation_error!r}")
    act_errors = (activation_errors(model, activation_check)
                  if activation_check is not None and scheme == "int8_dynamic" else {})
    report = QuantizeReport(scheme)
    keep = make_filter(filter)
    skip = list(skip)
    skip_filter = make_filter(skip, full_match=True) if skip else (lambda m, n: False)
    for name, module in list(model.named_modules()):
        if not name:
            continue
        entry = {"name": name, "type": type(module).__name__,
                 "in_features": getattr(module, "in_features", None),
                 "out_features": getattr(module, "out_features", None)}
        if isinstance(module, (Int8Linear, SparseInt8Linear)):
            continue  # already converted (a second quantize call is a no-op for it)
        pruned = isinstance(module, SparseLinear) or (isinstance(module, nn.Linear) and
                                                      current_mask(module) is not None)
        if pruned and keep(module, name) and not skip_filter(module, name):
            action, reason = _quantize_pruned(model, name, module, scheme, force, batch_rows)
            report.entries.append({**entry, "action": action, "reason": reason})
            continue
        if is_compressed(module):
            report.entries.append({**entry, "action": "kept", "reason":
                                   f"{type(module).__name__} is another compressed format"})
            continue
        if convs and isinstance(module, nn.Conv2d):
            if keep(module, name) and not skip_filter(module, name):
                report.entries.append({**entry, **_quantize_conv(model, name, module, scheme)})
            continue
        if not isinstance(module, nn.Linear):
            continue
        if not keep(module, name):
            report.entries.append({**entry, "action": "kept", "reason": "excluded by filter"})
            continue
        if skip_filter(module, name):
            report.entries.append({**entry, "action": "kept", "reason": "in skip"})
            continue
        if type(module) not in (nn.Linear, QATLinear):
            report.entries.append({**entry, "action": "kept",
                                   "reason": f"subclass {type(module).__name__} of nn.Linear "
                                             "(may override forward); not converted"})
            continue
        layer_scheme, why = scheme, ""
        if act_errors.get(name, 0.0) > max_activation_error:
            layer_scheme = "int8_weight_only"
            why = (f"int8_weight_only: per-token int8 activation error "
                   f"{100 * act_errors[name]:.2f}% > {100 * max_activation_error:.2f}%; ")
        # The cost model is measured on the CPU; on other devices the layer is converted.
        if force or module.weight.device.type != "cpu":
            reason = why + ("forced" if force else f"device {module.weight.device.type}")
        else:
            choice = int8_cost.choose(module.in_features, module.out_features, batch_rows,
                                      layer_scheme, activation_dtype)
            reason = why + choice.reason
            if not choice.use_int8:
                report.entries.append({**entry, "action": "kept", "reason": reason})
                continue
        new = Int8Linear.from_dense(module, scheme=layer_scheme, name=name)
        new.train(module.training)
        replace_module(model, name, new)
        report.entries.append({**entry, "action": "int8", "reason": reason})
    return model, report


def activation_errors(model: nn.Module, batches: Iterable) -> Dict[str, float]:
    """name -> relative error ||x - x_q|| / ||x|| of per-token symmetric int8 quantization of
    the inputs every nn.Linear (or QATLinear) of `model` sees on `batches` (run as
    model(batch), in eval mode, without gradients)."""
    sums: Dict[str, List[float]] = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            q, scale = quantize_per_row_reference(x)  # the kernels' exact contract
            xq = q.float() * scale[:, None]
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += float((x - xq).pow(2).sum())
            acc[1] += float(x.pow(2).sum())
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if type(m) in (nn.Linear, QATLinear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {n: (err / total) ** 0.5 if total > 0 else 0.0 for n, (err, total) in sums.items()}


def _quantize_conv(model: nn.Module, name: str, conv: nn.Conv2d, scheme: str) -> dict:
    entry = {"in_features": conv.in_channels, "out_features": conv.out_channels}
    reason = Int8Conv2d.convertible(conv) or (
        "" if scheme == "int8_dynamic" else f"Int8Conv2d is int8_dynamic only, not {scheme}") or (
        "" if conv.weight.device.type == "cpu" else
        f"Int8Conv2d runs on the CPU only; layer is on {conv.weight.device.type}")
    if reason:
        return {**entry, "action": "kept", "reason": reason}
    new = Int8Conv2d.from_dense(conv, name=name)
    new.train(conv.training)
    replace_module(model, name, new)
    return {**entry, "action": "int8", "reason": "convs=True (int8 im2col GEMM)"}


def _quantize_pruned(model: nn.Module, name: str, module: nn.Module, scheme: str, force: bool,
                     batch_rows: int):
    """A pruned layer (SparseLinear, or nn.Linear with a pruning mask) -> SparseInt8Linear, dense
    Int8Linear or left as it is: whichever is fastest at `batch_rows` on this machine (force:
    SparseInt8Linear). Only int8_dynamic has a sparse kernel. Returns (action, reason)."""
    if scheme != "int8_dynamic":
        return "kept", f"pruned layer: sparse int8 kernels are int8_dynamic only, not {scheme}"
    if module.weight.device.type != "cpu":
        return "kept", f"sparse int8 kernels are CPU kernels; layer is on {module.weight.device}"
    if isinstance(module, SparseLinear):
        dense = module.to_dense()
        sparse = SparseInt8Linear.from_sparse(module)
    else:
        dense = nn.Linear(module.in_features, module.out_features, module.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(module.weight)  # the masked weight
            if module.bias is not None:
                dense.bias.copy_(module.bias)
        sparse = SparseInt8Linear.from_dense(dense)
    candidates = {"sparse_int8": sparse}
    if force:
        choice, reason = "sparse_int8", "forced"
    else:
        candidates["int8"] = Int8Linear.from_dense(dense, scheme=scheme, name=name)
        if isinstance(module, SparseLinear):
            candidates["sparse_fp32"] = module
        key = (dense.in_features, dense.out_features, sparse.format, round(sparse.density, 2))
        choice, reason = sparse_int8_choice.choose(dense, candidates, batch_rows, key)
    if choice in ("sparse_int8", "int8"):
        new, action = candidates[choice], choice
    elif choice == "dense" and not isinstance(module, SparseLinear):
        new, action = dense, "kept"  # the mask baked in
    else:
        return "kept", reason
    new.train(module.training)
    replace_module(model, name, new)
    return action, reason


def prepare_qat(model: nn.Module, filter: LayerFilter = None, skip: Iterable[str] = ()):
    """Swap nn.Linear layers for QATLinear (fake int8 quantization with straight-through
    gradients, sharing the original Parameters). Train, then scalenn.quantize(model, force=True)
    converts them to Int8Linear with the same outputs up to float rounding. Returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat: expected an nn.Module, got {type(model).__name__}")
    for name, module in list(named_modules_of_type(model, nn.Linear, filter, skip)):
        if type(module) is nn.Linear:
            replace_module(model, name, QATLinear.from_linear(module))
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Set the per-tensor activation scale (max |x| / 127) of every int8_static Int8Linear from
    the inputs it sees while `model` runs on `batches` (tensors, or tuples/dicts of arguments)."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear) and m.scheme == "int8_static"]
    if not layers:
        raise ValueError("calibrate: the model has no int8_static Int8Linear layers; call "
                         "scalenn.quantize(model, scheme='int8_static') first")
    for m in layers:
        m._observing, m._observed_amax = True, 0.0
    n = 0
    try:
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
            n += 1
    finally:
        for m in layers:
            m._observing = False
    if n == 0:
        raise ValueError("calibrate: `batches` was empty")
    for m in layers:
        amax = m._observed_amax
        if not (amax > 0 and amax < float("inf")):
            raise ValueError(f"calibrate: a layer saw max |x| = {amax}; cannot set a scale")
        m.set_act_scale(amax / 127.0)
    return model
