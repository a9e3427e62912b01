"""Model latency measured side by side: all variants of a model run interleaved in one process
(A B C A B C ...) at each batch size, so load from other processes hits them alike; we report
the median over rounds. Inputs rotate through several copies so a call does not just reread the
previous call's activations from L1."""
from typing import Callable, Dict, Sequence

import torch
import torch.nn as nn

from .bench import harness


def measure(models: Dict[str, nn.Module], make_input: Callable[[int], torch.Tensor],
            batch_sizes: Sequence[int] = (1, 256), rounds: int = 15,
            target_round_s: float = 0.02) -> Dict[str, Dict[int, float]]:
    """{variant: {batch_size: median seconds per forward}} for every model, interleaved."""
    if not models:
        raise ValueError("latency.measure: no model to time")
    for m in models.values():
        m.eval()
    out: Dict[str, Dict[int, float]] = {name: {} for name in models}
    with torch.inference_mode():
        for bs in batch_sizes:
            inputs = harness.Rotator([make_input(bs) for _ in range(4)])
            variants = {name: (lambda m=m: m(inputs.next())) for name, m in models.items()}
            times = harness.interleaved_times(variants, rounds=rounds,
                                              target_round_s=target_round_s)
            for name, ts in times.items():
                out[name][bs] = harness.median(ts)
    return out
