"""Triton kernels, shipped as `scalenn.kernels` and registered as the CUDA implementation of
scalenn ops by `scalenn/_ops/gpu_backends.py`. On machines without a GPU they run (slowly) under
the Triton interpreter (TRITON_INTERPRET=1), which is how the tests check them."""
import os


def interpreting() -> bool:
    """True when Triton runs its CPU interpreter instead of compiling for a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
