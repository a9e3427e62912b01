"""scalenn: compressed drop-in layers (sparse, int8) and fused gradient all-reduce for PyTorch."""
import torch  # noqa: F401  (torch must load before the extension)

from . import _C_loader  # noqa: F401
from . import _C
from . import _ops  # noqa: F401  (fake kernels, autograd, GPU backends)
from . import nn  # noqa: F401
from . import distributed  # noqa: F401
from .compress import PruningSchedule, prune, remove_masks, sparsify
from .compress.quantize import QuantizeReport, calibrate, prepare_qat, quantize
from .ops import dequantize_per_row, quantize_per_row
from .serialize import load, save
from .compress.distill import DistillationLoss
from .transfer import freeze, param_groups, replace_head, unfreeze
from . import models  # noqa: F401
# The Python form of `scalenn compress`: scalenn.compress(model, recipe, train_loader, eval_fn).
# scalenn.compress stays the scalenn/compress/ package (so every import form of its submodules
# keeps working); the package is made callable and forwards to compress.pipeline.compress.
from .compress.pipeline import make_package_callable as _make_package_callable
_make_package_callable()

__version__ = _C.build_info()["version"]

__all__ = ["quantize_per_row", "dequantize_per_row", "save", "load", "__version__",
           "prune", "remove_masks", "PruningSchedule", "sparsify",
           "quantize", "calibrate", "prepare_qat", "QuantizeReport",
           "DistillationLoss", "freeze", "unfreeze", "replace_head", "param_groups", "compress"]
