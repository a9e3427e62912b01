r"""Transfer-learning helpers: freeze a pretrained backbone, put a new head on it, and give the
backbone and the head their own learning rates.

    scalenn.freeze(model, except_=["classifier"])      # train only the classifier
    scalenn.replace_head(model, num_classes=10)        # new last Linear, fresh weights, trainable
    opt = torch.optim.Adam(scalenn.param_groups(model, backbone_lr=1e-4, head_lr=1e-3))
    scalenn.unfreeze(model)                            # then fine-tune everything

Names in `except_` / `only` are module or parameter names, or regular expressions that must
match a whole name ("features.0", "classifier", r"blocks\.\d+\.attn"); a module name covers all
its parameters.
"""
import re
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch.nn as nn

from .nn.swap import replace_module

Names = Optional[Union[str, Iterable[str]]]


def _compile(names: Names, what: str) -> List["re.Pattern"]:
    if names is None:
        return []
    items = [names] if isinstance(names, str) else list(names)
    if not all(isinstance(n, str) for n in items):
        raise TypeError(f"{what}: expected a name or a list of names/regexes, got {names!r}")
    try:
        return [re.compile(n) for n in items]
    except re.error as exc:
        raise ValueError(f"{what}: invalid regular expression: {exc}") from None


def _matches(param_name: str, patterns) -> bool:
    """True when the parameter or any module above it matches one of the patterns."""
    parts = param_name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def _check_all_used(model: nn.Module, patterns, what: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if not any(_matches(n, [p]) for n in names):
            modules = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"{what}: {p.pattern!r} matches no module or parameter of the model; "
                             f"its modules are {modules[:20]}")


def freeze(model: nn.Module, except_: Names = None) -> List[str]:
    """requires_grad=False on every parameter except those under `except_`. Returns the names
    of the parameters that stay trainable."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze: expected an nn.Module, got {type(model).__name__}")
    keep = _compile(except_, "freeze(except_=...)")
    _check_all_used(model, keep, "freeze(except_=...)")
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(_matches(name, keep))
        if p.requires_grad:
            trainable.append(name)
    return trainable


def unfreeze(model: nn.Module, only: Names = None) -> List[str]:
    """requires_grad=True on all parameters (or only those under `only`). Returns their names."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfreeze: expected an nn.Module, got {type(model).__name__}")
    sel = _compile(only, "unfreeze(only=...)")
    _check_all_used(model, sel, "unfreeze(only=...)")
    changed = []
    for name, p in model.named_parameters():
        if not sel or _matches(name, sel):
            if p.is_floating_point() or p.is_complex():
                p.requires_grad_(True)
                changed.append(name)
    return changed


def _is_linear_like(module: nn.Module) -> bool:
    # nn.Linear and the compressed drop-ins (Int8Linear, SparseLinear, ...) that keep
    # in_features/out_features.
    return isinstance(module, nn.Linear) or (
        isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int))


def find_head(model: nn.Module) -> Tuple[str, nn.Module]:
    """(name, module) of the last Linear(-like) layer in registration order: the classifier head
    of the usual backbone-then-head model."""
    last = None
    for name, module in model.named_modules():
        if name and _is_linear_like(module):
            last = (name, module)
    if last is None:
        raise ValueError(f"no Linear layer found in {type(model).__name__}; replace_head needs a "
                         "model whose last Linear is its classifier (pass head=NAME otherwise)")
    return last


def replace_head(model: nn.Module, num_classes: int, head: Optional[str] = None,
                 bias: Optional[bool] = None) -> nn.Module:
    """Replace the last Linear (or the layer named `head`) by a fresh, trainable
    nn.Linear(in_features, num_classes) on the same device and dtype. Returns the new layer."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"replace_head: num_classes must be an int >= 1, got {num_classes!r}")
    if head is None:
        head, old = find_head(model)
    else:
        try:
            old = model.get_submodule(head)
        except AttributeError:
            raise ValueError(f"replace_head: the model has no layer {head!r}") from None
        if not _is_linear_like(old):
            raise ValueError(f"replace_head: {head!r} is a {type(old).__name__}, not a Linear")
    ref = next(iter(old.parameters()), None)
    if ref is None:
        ref = next(iter(old.buffers()), None)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
    has_bias = (getattr(old, "bias", None) is not None) if bias is None else bias
    new = nn.Linear(old.in_features, num_classes, bias=has_bias, device=device, dtype=dtype)
    replace_module(model, head, new)
    return new


def param_groups(model: nn.Module, backbone_lr: float, head_lr: float,
                 head: Names = None) -> List[Dict]:
    """Two optimizer parameter groups: the head (default: the last Linear; or names/regexes)
    at head_lr and everything else at backbone_lr. Frozen parameters are included, so the same
    optimizer keeps working after unfreeze(); they get no gradient while frozen."""
    for lr, what in ((backbone_lr, "backbone_lr"), (head_lr, "head_lr")):
        if not isinstance(lr, (int, float)) or not lr >= 0:
            raise ValueError(f"param_groups: {what} must be a number >= 0, got {lr!r}")
    patterns = _compile(head if head is not None else find_head(model)[0], "param_groups(head=...)")
    _check_all_used(model, patterns, "param_groups(head=...)")
    head_params, backbone_params = [], []
    for name, p in model.named_parameters():
        (head_params if _matches(name, patterns) else backbone_params).append(p)
    groups = [{"params": head_params, "lr": float(head_lr), "name": "head"}]
    if backbone_params:
        groups.insert(0, {"params": backbone_params, "lr": float(backbone_lr), "name": "backbone"})
    return groups
