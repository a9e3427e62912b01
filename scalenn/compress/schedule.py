"""Gradual pruning with the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune".

  s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3    for t0 <= t <= t1

Masks are updated at t0, every `frequency` steps after it, and at t1; call `.step()` once per
optimizer step (after optimizer.step()). Between updates the masks hold (weights keep training
around them); after t1 the final sparsity stays.
"""
from typing import Optional

import torch.nn as nn

from ..nn.swap import LayerFilter
from .prune import PruneReport, check_sparsity, parse_pattern, prune


class PruningSchedule:
    def __init__(self, model: nn.Module, final_sparsity: float, start_step: int, end_step: int,
                 frequency: int = 100, pattern: str = "unstructured",
                 initial_sparsity: float = 0.0, scope: str = "layer",
                 filter: LayerFilter = None):
        self.final_sparsity = check_sparsity(final_sparsity)
        self.initial_sparsity = check_sparsity(initial_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed "
                             f"final_sparsity ({final_sparsity})")
        for name, v in (("start_step", start_step), ("end_step", end_step),
                        ("frequency", frequency)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if start_step < 0 or end_step < start_step:
            raise ValueError(f"need 0 <= start_step <= end_step, got {start_step} and {end_step}")
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        pat = parse_pattern(pattern)
        if pat.kind == "channel":
            raise ValueError("channel pruning changes layer shapes (and the optimizer's "
                             "parameters); prune channels once with scalenn.prune, then fine-tune")
        if self.final_sparsity > pat.max_sparsity + 1e-9:
            raise ValueError(f"pattern {pat.text} allows sparsity up to {pat.max_sparsity:.4f}, "
                             f"got final_sparsity {final_sparsity}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.model = model
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.pattern, self.scope, self.filter = pattern, scope, filter
        self.step_count = 0
        self.current_sparsity = 0.0  # of the masks installed so far
        self.last_report: Optional[PruneReport] = None

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at optimizer step `step` (initial before start, final after end)."""
        if step <= self.start_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * \
            (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (
            (step - self.start_step) % self.frequency == 0 or step == self.end_step)

    def step(self) -> float:
        """Advance one optimizer step; re-prune when due. Returns the sparsity now in force."""
        t = self.step_count
        if self.is_update_step(t):
            self.current_sparsity = self.sparsity_at(t)
            self.last_report = prune(self.model, self.current_sparsity, self.pattern, self.scope,
                                     self.filter)
        self.step_count += 1
        return self.current_sparsity

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "current_sparsity": self.current_sparsity}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.current_sparsity = float(state.get("current_sparsity", 0.0))
