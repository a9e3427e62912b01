"""Magnitude pruning: unstructured, N:M, block and channel patterns, layer or global scope.

Masks are a parametrization (torch.nn.utils.parametrize): the layer computes with
`weight = original * mask`, so pruned weights are zero in every forward pass, their gradients
are zero, and no optimizer step (momentum, weight decay, Adam) can bring them back. Re-pruning
(a schedule) only ever removes more weights. `remove_masks` bakes the masks in (plain layers
with zeros); `scalenn.sparsify` then turns pruned Linear layers into packed SparseLinear.

"channel" pruning is structural: it removes whole output channels of a Linear/Conv2d and the
matching inputs of the layer that consumes them (see channel.py).
"""
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..nn.swap import LayerFilter, make_filter, named_modules_of_type

PRUNABLE = (nn.Linear, nn.Conv2d)
# Attribute left on a pruned layer (it survives remove_masks) so sparsify knows the pattern.
PATTERN_ATTR = "_scalenn_prune_pattern"


class PruningMask(nn.Module):
    """Parametrization weight = original * mask; `mask` is a buffer (saved in state_dict)."""

    def __init__(self, mask: torch.Tensor, pattern: str):
        super().__init__()
        self.pattern = pattern
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


@dataclass
class Pattern:
    kind: str            # "unstructured" | "nm" | "block" | "channel"
    n: int = 1           # nm: kept per group; block: rows
    m: int = 1           # nm: group size;     block: cols
    text: str = ""

    @property
    def max_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else 1.0


def parse_pattern(pattern: str) -> Pattern:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    p = pattern.strip().lower()
    if p in ("unstructured", "channel"):
        return Pattern(p, text=p)
    m = re.fullmatch(r"(\d+):(\d+)", p)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n < mm or mm > 256:
            raise ValueError(f"N:M pattern needs 1 <= N < M <= 256, got {pattern!r}")
        return Pattern("nm", n, mm, f"{n}:{mm}")
    m = re.fullmatch(r"block:(\d+)x(\d+)", p)
    if m:
        r, c = int(m.group(1)), int(m.group(2))
        if r < 1 or c < 1:
            raise ValueError(f"block sizes must be positive, got {pattern!r}")
        return Pattern("block", r, c, f"block:{r}x{c}")
    raise ValueError(f"unknown pruning pattern {pattern!r}: expected 'unstructured', 'N:M' "
                     f"(e.g. '2:4'), 'block:RxC' (e.g. 'block:1x16', 'block:4x4') or 'channel'")


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0 or math.isnan(s):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return s


@dataclass
class LayerReport:
    name: str
    shape: Tuple[int, ...]
    pattern: str
    sparsity: float
    kept: int
    note: str = ""


@dataclass
class PruneReport:
    """What prune() did: one entry per layer, and the overall fraction of zeroed weights."""
    pattern: str
    scope: str
    target: float
    layers: List[LayerReport] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        total = sum(math.prod(l.shape) for l in self.layers)
        return 1.0 - sum(l.kept for l in self.layers) / total if total else 0.0

    def to_dict(self) -> Dict[str, object]:
        return {"pattern": self.pattern, "scope": self.scope, "target": self.target,
                "sparsity": self.sparsity, "layers": [vars(l) for l in self.layers]}

    def __str__(self) -> str:
        lines = [f"prune: pattern={self.pattern} scope={self.scope} target={self.target:.3f} "
                 f"achieved={self.sparsity:.3f}"]
        for l in self.layers:
            lines.append(f"  {l.name:30s} {str(l.shape):22s} sparsity={l.sparsity:.3f} "
                         f"kept={l.kept}{' ' + l.note if l.note else ''}")
        return "\n".join(lines)


def current_mask(module: nn.Module) -> Optional[torch.Tensor]:
    """The scalenn pruning mask of `module.weight`, or None."""
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, PruningMask):
                return p.mask
    return None


def effective_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


def _scores(w2: torch.Tensor, pat: Pattern, name: str) -> torch.Tensor:
    """Importance of each pruning unit of a 2-D weight [out, in]; pruned units are the lowest.

    unstructured: |w| per element. block: mean |w| per block (a [out/R, in/C] grid). nm: |w|,
    with the N largest of every group of M set to +inf (never pruned), so pruning the lowest
    units yields a subset of an N:M pattern at any sparsity up to 1 - N/M.
    """
    a = w2.abs().float()
    if pat.kind == "unstructured":
        return a
    if pat.kind == "block":
        R, C = pat.n, pat.m
        if a.shape[0] % R or a.shape[1] % C:
            raise ValueError(f"prune: block {R}x{C} does not divide the weight of {name!r} "
                             f"{tuple(a.shape)} (as [out, in])")
        return a.reshape(a.shape[0] // R, R, a.shape[1] // C, C).mean(dim=(1, 3))
    N, M = pat.n, pat.m
    if a.shape[1] % M:
        raise ValueError(f"prune: N:M pattern {N}:{M} needs the input dimension of {name!r} "
                         f"({a.shape[1]}) to be divisible by {M}")
    g = a.reshape(a.shape[0], -1, M)
    top = g.topk(N, dim=2).indices
    protected = torch.zeros_like(g, dtype=torch.bool).scatter_(2, top, True)
    return torch.where(protected, torch.full_like(g, float("inf")), g).reshape(a.shape)


def _expand(unit_mask: torch.Tensor, pat: Pattern) -> torch.Tensor:
    if pat.kind == "block":
        return unit_mask.repeat_interleave(pat.n, 0).repeat_interleave(pat.m, 1)
    return unit_mask


def _lowest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of `scores` with the k lowest entries dropped (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def apply_mask(module: nn.Module, mask: torch.Tensor, pattern: str) -> None:
    """Install or tighten the mask (masks only shrink: new = new & old)."""
    mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
    old = current_mask(module)
    if old is not None:
        with torch.no_grad():
            old.copy_(old * mask)
        for p in module.parametrizations.weight:
            if isinstance(p, PruningMask):
                p.pattern = pattern
    else:
        parametrize.register_parametrization(module, "weight", PruningMask(mask, pattern),
                                             unsafe=True)
    setattr(module, PATTERN_ATTR, pattern)


def prunable_layers(model: nn.Module, filter: LayerFilter = None) -> List[Tuple[str, nn.Module]]:
    """(name, layer) of the Linear/Conv2d layers passing `filter`; a bare layer is its own
    only layer (name "")."""
    if isinstance(model, PRUNABLE):
        return [("", model)] if make_filter(filter)(model, "") else []
    return [(n, m) for n, m in named_modules_of_type(model, PRUNABLE, filter)]


def prune(model: nn.Module, sparsity: float, pattern: str = "unstructured",
          scope: str = "layer", filter: LayerFilter = None) -> PruneReport:
    """Prune the Linear and Conv2d layers of `model` (those passing `filter`) by magnitude.

    sparsity: fraction of weights to zero, in [0, 1). For "N:M" at most 1 - N/M (the mask is
    then a subset of an N:M pattern; at exactly 1 - N/M it is N:M). For "block:RxC" the
    fraction of blocks. scope "layer": every layer reaches `sparsity`; "global": one threshold
    over all selected layers (not for "channel"). Returns a PruneReport.
    """
    s = check_sparsity(sparsity)
    pat = parse_pattern(pattern)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune: expected an nn.Module, got {type(model).__name__}")
    if pat.kind == "channel":
        if scope != "layer":
            raise ValueError("channel pruning is per layer (scope='layer'); norms of different "
                             "layers are not comparable")
        from .channel import prune_channels
        return prune_channels(model, s, filter)
    if s > pat.max_sparsity + 1e-9:
        raise ValueError(f"pattern {pat.text} keeps {pat.n} of every {pat.m} weights: sparsity "
                         f"can be at most {pat.max_sparsity:.4f}, got {s}")
    layers = prunable_layers(model, filter)
    if not layers:
        raise ValueError("prune: the model has no nn.Linear/nn.Conv2d layer that passes the filter")
    report = PruneReport(pat.text, scope, s)
    weights = {name: effective_weight(m).reshape(m.weight.shape[0], -1) for name, m in layers}
    scores = {name: _scores(w2, pat, name) for name, w2 in weights.items()}
    if scope == "layer":
        units = {name: _lowest_mask(sc, round(s * sc.numel())) for name, sc in scores.items()}
    else:
        allsc = torch.cat([sc.reshape(-1) for sc in scores.values()])
        keep_all = _lowest_mask(allsc, round(s * allsc.numel()))
        units, i = {}, 0
        for name, sc in scores.items():
            units[name] = keep_all[i:i + sc.numel()].view_as(sc)
            i += sc.numel()
    for name, module in layers:
        mask2 = _expand(units[name], pat)
        apply_mask(module, mask2.reshape(module.weight.shape), pat.text)
        kept = int(current_mask(module).count_nonzero())
        numel = module.weight.numel()
        report.layers.append(LayerReport(name, tuple(module.weight.shape), pat.text,
                                         1.0 - kept / numel if numel else 0.0, kept))
    return report


def remove_masks(model: nn.Module) -> int:
    """Bake the pruning masks into the weights (weight = original * mask, a plain Parameter)
    and remove the parametrizations. Returns the number of layers unmasked."""
    count = 0
    for _, module in list(model.named_modules()):
        if current_mask(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            count += 1
    return count
