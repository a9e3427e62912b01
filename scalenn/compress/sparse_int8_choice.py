"""Shape-aware choice for a pruned layer between SparseInt8Linear, dense Int8Linear and the
dense float32 nn.Linear, by measurement at the expected rows per call (the same method as
int8_cost: interleaved rounds, fastest round of each, cached per layer shape, density, format,
rows, threads and ISA for the life of the process).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _C
from .int8_cost import _median_time

_CACHE: Dict[Tuple, Dict[str, float]] = {}


@torch.no_grad()
def measure(dense: nn.Linear, candidates: Dict[str, nn.Module], rows: int) -> Dict[str, float]:
    """Seconds per call of F.linear with `dense`'s weight ("dense") and of each candidate."""
    x = torch.randn(rows, dense.in_features)
    w, b = dense.weight.detach().float(), None if dense.bias is None else dense.bias.detach().float()
    variants = {"dense": lambda: F.linear(x, w, b)}
    variants.update({name: (lambda m=m: m(x)) for name, m in candidates.items()})
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(7):
        for name, fn in variants.items():
            times[name].append(_median_time(fn, 1, 3))
    return {name: min(t) for name, t in times.items()}


def timed(dense: nn.Linear, candidates: Dict[str, nn.Module], rows: int, key: Tuple
          ) -> Dict[str, float]:
    """measure(), cached under `key` (what identifies the layer) + rows, threads and ISA."""
    full_key = key + (tuple(sorted(candidates)), rows, torch.get_num_threads(), _C.current_isa())
    if full_key not in _CACHE:
        _CACHE[full_key] = measure(dense, candidates, rows)
    return _CACHE[full_key]


def choose(dense: nn.Linear, candidates: Dict[str, nn.Module], rows: int, key: Tuple
           ) -> Tuple[str, str]:
    """(fastest variant name, reason with the measured times)."""
    times = timed(dense, candidates, rows, key)
    best = min(times, key=times.get)
    detail = ", ".join(f"{n} {t * 1e6:.1f} us" for n, t in sorted(times.items(), key=lambda kv: kv[1]))
    return best, f"fastest at {rows} rows (measured: {detail})"
