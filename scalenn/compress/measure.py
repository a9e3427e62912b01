"""What a compressed model costs: parameters (and how many are nonzero), bytes on disk as
safetensors, and the sparsity of its Linear weights. torch.ao dynamic-int8 models cannot go
through safetensors as they are (packed C++ objects), so their int8 weights, scales and biases
are unpacked into plain tensors first: the honest size of the same information."""
import os
import tempfile
from typing import Dict

import torch
import torch.nn as nn


def _leaf_tensors(module: nn.Module):
    for name in ("weight", "bias"):
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            yield name, t


def effective_nonzero(model: nn.Module) -> int:
    """Nonzero values of the weights the forward pass uses: `module.weight` after any pruning
    mask has been applied, biases, and every other parameter."""
    total = 0
    counted = set()
    from torch.nn.utils.parametrize import ParametrizationList
    for module in model.modules():
        if isinstance(module, ParametrizationList):
            continue  # the unmasked original; counted through the owner's `weight`
        for _, t in _leaf_tensors(module):
            if t.is_floating_point():
                total += int(torch.count_nonzero(t.detach()))
                counted.add(id(t))
        for p in module.parameters(recurse=False):
            if id(p) not in counted and not _is_mask_original(module, p):
                total += int(torch.count_nonzero(p.detach()))
                counted.add(id(p))
    return total


def _is_mask_original(module: nn.Module, p: torch.Tensor) -> bool:
    # torch.nn.utils.prune keeps the unmasked tensor as `weight_orig`; parametrizations keep it
    # under `parametrizations.weight.original`. Those are counted through `module.weight`.
    orig = getattr(module, "weight_orig", None)
    return orig is not None and orig is p


def count_params(model: nn.Module) -> int:
    """Logical parameter count of a dense model (all parameters, zeros included)."""
    return sum(p.numel() for p in model.parameters())


def linear_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the weights of all nn.Linear layers (as the forward sees them)."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def _ao_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    from torch.ao.nn.quantized.dynamic import Linear as AoDynamicLinear
    out: Dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, AoDynamicLinear):
            w = module.weight()
            out[prefix + "weight"] = w.int_repr().contiguous()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out[prefix + "scale"] = w.q_per_channel_scales().float().contiguous()
                out[prefix + "zero_point"] = w.q_per_channel_zero_points().contiguous()
            else:
                out[prefix + "scale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
                out[prefix + "zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            if module.bias() is not None:
                out[prefix + "bias"] = module.bias().detach().contiguous()
        elif not any(True for _ in module.children()):
            for k, v in module.state_dict().items():
                if isinstance(v, torch.Tensor):
                    out[prefix + k] = v.detach().contiguous()
    return out


def is_torch_ao_quantized(model: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as AoDynamicLinear
    return any(isinstance(m, AoDynamicLinear) for m in model.modules())


def safetensors_bytes(model: nn.Module) -> int:
    """Size in bytes of the model written as safetensors (scalenn.save; torch.ao models
    unpacked to int8 + scales first)."""
    from safetensors.torch import save_file

    from ..serialize import save
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        if is_torch_ao_quantized(model):
            save_file(_ao_tensors(model), path)
        else:
            save(model, path)
        return os.path.getsize(path)
