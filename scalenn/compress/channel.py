"""Structural channel pruning: drop whole output channels of a Linear/Conv2d (lowest L2 norm)
and the matching inputs of the layer that consumes them, so the model is physically smaller.

Only chains are followed: an nn.Sequential (nested ones are flattened), where between a pruned
layer and its consumer there may be only shape-preserving layers (activations, dropout,
pooling, BatchNorm, which is shrunk too) and nn.Flatten (Conv2d -> Linear: each channel owns a
contiguous run of H*W inputs). Anything else raises ValueError naming the module, instead of
producing a broken model. The last Linear/Conv2d (the model's output) is never pruned.
"""
import math
from typing import List, Tuple

import torch
import torch.nn as nn

from ..nn.swap import LayerFilter, make_filter, replace_module
from .prune import LayerReport, PruneReport, current_mask

PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU,
                nn.Hardswish, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d,
                nn.AvgPool2d, nn.AdaptiveAvgPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS = (nn.Linear, nn.Conv2d)


def _flatten_chain(model: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"channel pruning follows nn.Sequential chains only; {type(model).__name__} "
            f"{('at ' + repr(prefix)) if prefix else ''} is not one, so scalenn cannot tell which "
            f"layer consumes which output (wrap the layers in nn.Sequential, or use an "
            f"unstructured/N:M/block pattern, which never changes shapes)")
    out = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out += _flatten_chain(child, full)
        else:
            out.append((full, child))
    return out


def _plain_weight(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    if current_mask(module) is not None:
        w = w.clone()  # effective (masked) weight; the rebuilt layer is unmasked
    return w


def _shrunk_linear(old: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = _plain_weight(old)
    b = old.bias.detach() if old.bias is not None else None
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new.train(old.training)


def _shrunk_conv(old: nn.Conv2d, rows=None, cols=None) -> nn.Conv2d:
    if old.groups != 1:
        raise ValueError(f"channel pruning supports Conv2d with groups=1, got groups={old.groups}")
    w = _plain_weight(old)
    b = old.bias.detach() if old.bias is not None else None
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    new = nn.Conv2d(w.shape[1], w.shape[0], old.kernel_size, old.stride, old.padding,
                    old.dilation, 1, b is not None, old.padding_mode, device=w.device,
                    dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new.train(old.training)


def _shrunk_norm(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(old)(len(keep), old.eps, old.momentum, old.affine, old.track_running_stats,
                    device=keep.device)
    with torch.no_grad():
        if old.affine:
            new.weight.copy_(old.weight[keep])
            new.bias.copy_(old.bias[keep])
        if old.track_running_stats:
            new.running_mean.copy_(old.running_mean[keep])
            new.running_var.copy_(old.running_var[keep])
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new.train(old.training)


def prune_channels(model: nn.Module, sparsity: float, filter: LayerFilter = None) -> PruneReport:
    chain = _flatten_chain(model)
    keep_filter = make_filter(filter)
    report = PruneReport("channel", "layer", sparsity)
    layer_pos = [i for i, (_, m) in enumerate(chain) if isinstance(m, LAYERS)]
    plans = []
    for a, b in zip(layer_pos, layer_pos[1:]):
        name, producer = chain[a]
        if not keep_filter(producer, name):
            continue
        between = chain[a + 1:b]
        spatial_flatten = False
        for bname, mod in between:
            if isinstance(mod, nn.Flatten):
                spatial_flatten = True
            elif not isinstance(mod, PASS_THROUGH + NORMS):
                raise ValueError(f"channel pruning cannot follow {type(mod).__name__} at "
                                 f"{bname!r} between {name!r} and {chain[b][0]!r}; it only "
                                 f"passes activations, dropout, pooling, BatchNorm and Flatten")
        plans.append((a, b, spatial_flatten))
    if not plans:
        raise ValueError("channel pruning found no Linear/Conv2d layer followed by a consumer "
                         "layer (the last layer is never pruned)")
    for a, b, spatial_flatten in plans:
        name, producer = chain[a]
        cname, consumer = chain[b]
        w = _plain_weight(producer)
        out_ch = w.shape[0]
        n_keep = max(1, out_ch - round(sparsity * out_ch))
        norms = w.reshape(out_ch, -1).float().norm(dim=1)
        keep = norms.topk(n_keep).indices.sort().values
        # consumer inputs for the kept channels
        if isinstance(consumer, nn.Linear):
            per = consumer.in_features // out_ch if spatial_flatten else 1
            if consumer.in_features != per * out_ch:
                raise ValueError(f"channel pruning: {cname!r} has {consumer.in_features} inputs, "
                                 f"not a multiple of the {out_ch} channels of {name!r}")
            cols = (keep.view(-1, 1) * per + torch.arange(per, device=keep.device)).reshape(-1)
            new_consumer = _shrunk_linear(consumer, cols=cols)
        else:
            if spatial_flatten:
                raise ValueError(f"channel pruning: Flatten between {name!r} and Conv2d {cname!r}")
            new_consumer = _shrunk_conv(consumer, cols=keep)
        new_producer = (_shrunk_linear(producer, rows=keep) if isinstance(producer, nn.Linear)
                        else _shrunk_conv(producer, rows=keep))
        replace_module(model, name, new_producer)
        replace_module(model, cname, new_consumer)
        chain[a] = (name, new_producer)
        chain[b] = (cname, new_consumer)
        for i in range(a + 1, b):
            nname, mod = chain[i]
            if isinstance(mod, NORMS):
                new_norm = _shrunk_norm(mod, keep)
                replace_module(model, nname, new_norm)
                chain[i] = (nname, new_norm)
        numel = math.prod(w.shape)
        report.layers.append(LayerReport(name, tuple(w.shape), "channel", 1.0 - n_keep / out_ch,
                                         n_keep * numel // out_ch,
                                         note=f"out channels {out_ch} -> {n_keep}; "
                                              f"{cname} inputs shrunk"))
    return report
