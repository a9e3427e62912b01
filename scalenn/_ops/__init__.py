"""Python side of the op registry: fake (meta) kernels, autograd and GPU backends per op family.

Importing this package registers everything; `scalenn/__init__.py` does so once.
"""
from . import quantize  # noqa: F401
from . import gpu_ops  # noqa: F401
from . import sparse  # noqa: F401
from . import bucket  # noqa: F401
from . import int8  # noqa: F401
from . import sparse_int8  # noqa: F401
from . import gpu_backends  # noqa: F401  (last: registers Triton kernels for the ops above)
