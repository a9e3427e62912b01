"""Keeping a compressed layer's float32 state float32 through model-wide dtype casts."""
from typing import Iterable

import torch
import torch.nn as nn


def apply_keeping_float32(module: nn.Module, apply, names: Iterable[str]):
    """Run `apply()` (the layer's nn.Module._apply) and undo any dtype change it made to the
    float32 tensors `names` (scales, bias): `model.to(torch.bfloat16)` must not round what the
    kernels read as float32, while a device move still moves them. Returns apply()'s result."""
    names = [n for n in names if getattr(module, n, None) is not None]
    saved = {n: getattr(module, n).detach().clone() for n in names}
    out = apply()
    for n in names:
        t = getattr(module, n)
        if t.dtype != torch.float32:
            exact = saved[n].to(t.device)
            if isinstance(t, nn.Parameter):
                t.data = exact
            else:
                setattr(module, n, exact)
    return out
