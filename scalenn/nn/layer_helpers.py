"""What the compressed Linear-like layers (Int8Linear, SparseInt8Linear) share: their float32
state through model-wide dtype casts, the inference fast path of their op call, huge-page
memory for a packed weight, to_dense."""
from typing import Iterable

import torch
import torch.nn as nn

from .. import _C

def weight_memory(t: torch.Tensor) -> torch.Tensor:
    """`t` copied onto transparent huge pages when it is a CPU tensor big enough for them (from
    ~1.8 MiB: a packed weight a batch-1 call streams from memory, csrc/cpu/weight_memory.h);
    else `t` itself."""
    if t.device.type != "cpu" or t.numel() * t.element_size() < (1 << 20):
        return t
    return _C.to_weight_memory(t.contiguous())


def weight_memory_together(*tensors: torch.Tensor):
    """The CPU tensors `tensors` copied back to back (each start 64-byte aligned) into ONE
    huge-page buffer (weight_memory), returned as views of it in the same order; unchanged when
    they are together too small for huge pages or not all on the CPU.

    For arrays a kernel streams side by side (SparseInt8Linear's quad format: rel, values,
    base). Each on huge pages of its own, single sparse layers were 10-25% faster or slower
    than on 4 KiB pages from one construction to the next (csrc/cpu/weight_memory.h); in one
    buffer, 90% 1x4 blocks at M = 1 took 0.94-0.98x the time on 4 KiB pages (4096 x 4096 and
    4096 x 11008, 2 and 1 threads)."""
    if any(t.device.type != "cpu" for t in tensors):
        return tensors
    raw = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    padded = [-(-r.numel() // 64) * 64 for r in raw]
    if sum(padded) < (1 << 20):
        return tensors
    buf = torch.zeros(sum(padded), dtype=torch.uint8)
    offsets = [0]
    for r, n in zip(raw, padded):
        buf[offsets[-1]:offsets[-1] + r.numel()].copy_(r)
        offsets.append(offsets[-1] + n)
    placed = _C.to_weight_memory(buf)
    if placed is buf:  # not worth a huge page after all
        return tensors
    return tuple(placed[o:o + r.numel()].view(t.dtype).view(t.shape)
                 for t, r, o in zip(tensors, raw, offsets))


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


def call_op(op, args, x: torch.Tensor, bias) -> torch.Tensor:
    """op(*args), below the autograd kernel when there is nothing to differentiate: the Python
    autograd wrapper costs ~3 us a call, which small layers feel. Under torch.compile the op is
    always called normally."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (
            x.requires_grad or (bias is not None and bias.requires_grad))):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def dense_linear(weight: torch.Tensor, bias) -> nn.Linear:
    """An nn.Linear holding `weight` [out, in] and `bias` (float32 copies)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin
