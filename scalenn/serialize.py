"""scalenn.save / scalenn.load: compressed models as safetensors, never pickle.

The file holds the model's whole state_dict (packed int8 / sparse buffers included) plus, in the
safetensors metadata, a JSON description of each compressed layer (its type and
compression_config()). `load` rebuilds those layers inside a freshly constructed model of the
same architecture, then loads the tensors.
"""
import json
from typing import Dict

import torch
import torch.nn as nn

from .nn.registry import COMPRESSED_MODULES, is_compressed
from .nn.swap import get_parent, replace_module

FORMAT = "scalenn-1"


def save(model: nn.Module, path: str) -> Dict[str, dict]:
    """Write `model` to `path` (safetensors). Returns the layer description that was stored."""
    from safetensors.torch import save_file
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: expected an nn.Module, got {type(model).__name__}")
    layers = {name: {"type": type(m).__name__, "config": m.compression_config()}
              for name, m in model.named_modules() if name and is_compressed(m)}
    state = model.state_dict()
    # safetensors stores each storage once: make shared/non-contiguous tensors independent.
    tensors = {k: v.detach().contiguous().clone() if _shares(v, state) else v.detach().contiguous()
               for k, v in state.items()}
    save_file(tensors, path, metadata={"format": FORMAT, "layers": json.dumps(layers)})
    return layers


def _shares(t: torch.Tensor, state: dict) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(1 for v in state.values() if v.untyped_storage().data_ptr() == ptr) > 1


def read_metadata(path: str) -> Dict[str, dict]:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ValueError(f"load: {path} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"load: {path} was not written by scalenn.save (format "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    return json.loads(meta.get("layers", "{}"))


def load(model: nn.Module, path: str, strict: bool = True) -> nn.Module:
    """Rebuild the compressed layers recorded in `path` inside `model` (a freshly constructed
    model of the same architecture), then load all tensors. Returns the model."""
    from safetensors.torch import load_file
    layers = read_metadata(path)
    for name, entry in layers.items():
        cls = COMPRESSED_MODULES.get(entry.get("type"))
        if cls is None:
            raise ValueError(f"load: layer {name!r} has unknown type {entry.get('type')!r}; "
                             f"known: {sorted(COMPRESSED_MODULES)}")
        try:
            get_parent(model, name)[0].get_submodule(name.split(".")[-1])
        except AttributeError:
            raise ValueError(f"load: the model has no submodule {name!r}; was it built with the "
                             f"same architecture as the saved one?") from None
        replace_module(model, name, cls.from_config(entry["config"]))
    state = load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"load: {path} does not match the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")
    return model
