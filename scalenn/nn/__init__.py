"""Compressed drop-in replacements for torch.nn layers."""
from .registry import COMPRESSED_MODULES, register_compressed_module  # noqa: F401
from .sparse_linear import SparseLinear  # noqa: F401,E402  (issue 4)
from .int8_linear import Int8Linear, QATLinear  # noqa: F401
from .sparse_int8_linear import SparseInt8Linear  # noqa: F401  (issue 7)
from .int8_conv import Int8Conv2d  # noqa: F401
