"""Shape-aware choice between a layer's int8 kernel and the dense nn.Linear, by measurement.

For a layer shape (K -> N) at the expected rows per call M, time both on this machine (random
data of that shape, the same thread count, interleaved rounds, the fastest round of each: other
processes only ever add time, so the minimum is the estimate least disturbed by a busy machine)
and pick int8 only when it is faster by a margin, so that scalenn.quantize never makes a model slower. Results
are cached per (shape, rows, scheme, dtype, threads, ISA) for the life of the process.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .. import _C

# int8 must beat dense by this factor to be chosen: a near-tie is noise, and dense is the safe
# default.
MARGIN = 0.9


@dataclass(frozen=True)
class Choice:
    use_int8: bool
    dense_us: float
    int8_us: float
    reason: str


_CACHE: Dict[Tuple, Choice] = {}


def _median_time(fn, rounds: int, calls: int) -> float:
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        ts.append((time.perf_counter() - t0) / calls)
    return statistics.median(ts)


@torch.no_grad()
def measure(in_features: int, out_features: int, rows: int, scheme: str,
            dtype: torch.dtype = torch.float32) -> Tuple[float, float]:
    """(dense seconds, int8 seconds) per call for this shape, measured now."""
    from ..nn.int8_linear import Int8Linear
    dense = torch.nn.Linear(in_features, out_features).to(dtype)
    q = Int8Linear.from_dense(dense.float(), scheme=scheme)
    if scheme == "int8_static":
        q.set_act_scale(1.0 / 127.0)
    x = torch.randn(rows, in_features).to(dtype)
    variants = [lambda: F.linear(x, dense.weight, dense.bias), lambda: q(x)]
    for fn in variants:  # warm up, and size the calls per round to ~2 ms
        fn()
    t0 = time.perf_counter()
    variants[0]()
    calls = int(max(1, min(200, 2e-3 / max(time.perf_counter() - t0, 1e-7))))
    dense_t, int8_t = [], []
    for _ in range(7):  # interleaved rounds: load on the machine hits both alike
        dense_t.append(_median_time(variants[0], 1, calls))
        int8_t.append(_median_time(variants[1], 1, calls))
    return min(dense_t), min(int8_t)


def choose(in_features: int, out_features: int, rows: int, scheme: str,
           dtype: torch.dtype = torch.float32) -> Choice:
    key = (in_features, out_features, rows, scheme, dtype, torch.get_num_threads(),
           _C.current_isa())
    if key not in _CACHE:
        dense_s, int8_s = measure(in_features, out_features, rows, scheme, dtype)
        use = int8_s < MARGIN * dense_s
        verdict = "int8 faster" if use else "dense not slower"
        _CACHE[key] = Choice(use, dense_s * 1e6, int8_s * 1e6,
                             f"{verdict} at {rows} rows: dense {dense_s * 1e6:.1f} us, "
                             f"{scheme} {int8_s * 1e6:.1f} us (measured)")
    return _CACHE[key]
