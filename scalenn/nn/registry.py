"""The protocol every compressed module (Int8Linear, SparseLinear, ...) follows, so that one
save/load and one module-swap mechanism serve all of them.

A compressed module class
  - is decorated with @register_compressed_module (its class name is its saved type name);
  - implements `compression_config(self) -> dict`: JSON-serializable constructor arguments
    (shapes, scheme, format, ...), enough to build an empty module of the right buffer shapes;
  - implements `@classmethod from_config(cls, config: dict) -> nn.Module`: that empty module;
  - keeps everything else it needs in parameters/buffers, so `state_dict()` carries the data
    (non-persistent buffers are rebuilt by the module, e.g. a CPU-packed weight layout, in
    `_load_from_state_dict` or lazily).
"""
from typing import Dict, Type

import torch.nn as nn

COMPRESSED_MODULES: Dict[str, Type[nn.Module]] = {}


def register_compressed_module(cls):
    for method in ("compression_config", "from_config"):
        if not hasattr(cls, method):
            raise TypeError(f"{cls.__name__} must implement {method}() to be a compressed module")
    COMPRESSED_MODULES[cls.__name__] = cls
    return cls


def is_compressed(module: nn.Module) -> bool:
    return type(module).__name__ in COMPRESSED_MODULES and \
        COMPRESSED_MODULES[type(module).__name__] is type(module)
