"""Finding layers and replacing them in place, by setting attributes on their parents, so models
that keep layers in lists, ModuleDicts and nested blocks all work."""
import re
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

# filter=None: everything; a callable fn(module, fully_qualified_name) -> bool; or a list of
# regular expressions matched (re.search) against the fully qualified name.
LayerFilter = Optional[Union[Callable[[nn.Module, str], bool], Sequence[str], str]]


def make_filter(filter: LayerFilter, full_match: bool = False) -> Callable[[nn.Module, str], bool]:
    if filter is None:
        return lambda module, name: True
    if callable(filter):
        return filter
    patterns = [filter] if isinstance(filter, str) else list(filter)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("filter must be None, a callable fn(module, name) -> bool, or a list of "
                        f"name regexes; got {filter!r}")
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise ValueError(f"filter: invalid regular expression: {exc}") from None
    if full_match:
        return lambda module, name: any(c.fullmatch(name) for c in compiled)
    return lambda module, name: any(c.search(name) for c in compiled)


def named_modules_of_type(model: nn.Module, types: Union[type, Tuple[type, ...]],
                          filter: LayerFilter = None, skip: Iterable[str] = ()
                          ) -> Iterator[Tuple[str, nn.Module]]:
    """(name, module) for each submodule of `types` that passes `filter` (regexes: re.search) and
    is not in `skip` (names or regexes that must match the whole name)."""
    keep = make_filter(filter)
    skip_filter = make_filter(list(skip), full_match=True) if skip else (lambda m, n: False)
    for name, module in list(model.named_modules()):
        if isinstance(module, types) and name and keep(module, name) and not skip_filter(module, name):
            yield name, module


def get_parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace submodule `name` (dotted path) of `model` by `new`; returns the old module."""
    parent, attr = get_parent(model, name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)  # works for Sequential/ModuleList ("0") and ModuleDict keys too
    return old


def module_names(model: nn.Module) -> List[str]:
    return [n for n, _ in model.named_modules() if n]
