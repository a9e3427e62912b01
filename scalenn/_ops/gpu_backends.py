"""Registers the Triton kernels in `scalenn.kernels` as the CUDA implementation of scalenn ops.

The compiled CUDA kernels (csrc/cuda) are the default CUDA implementation when the extension
was built with them; otherwise, or with SCALENN_GPU_BACKEND=triton, the Triton kernels are
registered here. Triton itself is imported lazily, on the first call on a CUDA tensor.
"""
import os

import torch

from .. import _C

_TRITON_OPS = {
    "scalenn::quantize_per_row": ("quantize", "quantize_per_row"),
    "scalenn::dequantize_per_row": ("quantize", "dequantize_per_row"),
}


def gpu_backend() -> str:
    """Which implementation serves CUDA tensors: 'cuda' (compiled), 'triton', or 'none'."""
    choice = os.environ.get("SCALENN_GPU_BACKEND", "auto").lower()
    if choice not in ("auto", "cuda", "triton"):
        raise ValueError(f"SCALENN_GPU_BACKEND must be auto, cuda or triton, got {choice!r}")
    built_cuda = _C.build_info()["cuda"]
    if choice == "cuda" and not built_cuda:
        raise ValueError("SCALENN_GPU_BACKEND=cuda but scalenn was built without CUDA kernels "
                         "(rebuild with SCALENN_CUDA=1)")
    if choice == "triton" or (choice == "auto" and not built_cuda):
        return "triton" if _triton_installed() else "none"
    return "cuda"


def _triton_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def _lazy(module_name: str, fn_name: str):
    def call(*args, **kwargs):
        import importlib
        module = importlib.import_module(f"scalenn.kernels.{module_name}")
        return getattr(module, fn_name)(*args, **kwargs)
    call.__name__ = f"triton_{fn_name}"
    return call


if gpu_backend() == "triton":
    for _op, (_module, _fn) in _TRITON_OPS.items():
        torch.library.register_kernel(_op, "cuda", _lazy(_module, _fn))
