"""`scalenn info`: what was built and which CPU/GPU paths are active (the diagnostics command)."""
import importlib.util
import os
import platform

import torch

from . import _C
from ._ops.gpu_backends import gpu_backend


def transparent_huge_pages() -> str:
    """The kernel's THP mode ("always" / "madvise" / "never"), as Int8Linear's packed weight
    asks for huge pages with madvise (csrc/cpu/weight_memory.h)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unavailable (packed weights on regular pages)"
    used = "used for Int8Linear packed weights" if mode != "never" else "not used"
    return f"{mode} ({used})"


def wgmma_sp24_status() -> str:
    """Whether the Hopper 2:4 kernel (scalenn::wgmma_sp24_linear) runs here: it exists only in
    CUDA builds and runs only on a Hopper GPU with sm_90a code in the build."""
    try:
        op = torch.ops.scalenn.wgmma_sp24_linear
    except (AttributeError, RuntimeError):
        return "not built (no CUDA kernels in this build)"
    if not torch.cuda.is_available():
        return "built; no CUDA device"
    from ._ops.sparse24_layout import pack_sparse24, prune_2_4
    values, meta = pack_sparse24(prune_2_4(torch.randn(16, 32)).half())
    try:
        op(torch.zeros(1, 32, dtype=torch.float16, device="cuda"), values.cuda(), meta.cuda(),
           None, None, 16, "none")
    except RuntimeError as e:
        return "not usable: " + str(e).splitlines()[0][:160]
    return "runs on this GPU (an op of its own; mma_sp24_linear is the default 2:4 kernel)"


def collect() -> dict:
    build = _C.build_info()
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        try:
            import triton
            triton_version = triton.__version__
        except Exception as exc:  # a broken triton install should not break diagnostics
            triton_version = f"import failed: {exc}"
    cuda_archs = None
    if build["cuda"]:
        cuda_archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or "torch default at build time"
    return {
        "scalenn": build["version"],
        "torch": torch.__version__,
        "torch built with CUDA": torch.version.cuda or "no",
        "python": platform.python_version(),
        "compiler": build.get("compiler", "unknown"),
        "cpu features": " ".join(_C.cpu_features()),
        "cpu isa (detected)": _C.detected_isa(),
        "cpu isa (selected)": _C.current_isa(),
        "avx512vbmi kernels": "yes (SparseInt8Linear window kernels)"
        if _C.vbmi_enabled() and _C.current_isa() == "avx512" else "no",
        "SCALENN_CPU_ISA": os.environ.get("SCALENN_CPU_ISA", "(unset)"),
        "threads": torch.get_num_threads(),
        "transparent huge pages": transparent_huge_pages(),
        "cuda kernels built": "yes" if build["cuda"] else "no",
        "cuda archs": cuda_archs or "-",
        "cuda device available": torch.cuda.is_available(),
        "gpu backend for CUDA tensors": gpu_backend(),
        "2:4 on Hopper (wgmma.sp)": wgmma_sp24_status(),
        "SCALENN_INT8_GPU_KERNEL": os.environ.get("SCALENN_INT8_GPU_KERNEL", "auto") + (
            " (int8_linear on CUDA: Triton in CUDA-graph capture and above 2^36 MACs on Hopper, "
            "else the compiled mma kernel)" if build["cuda"] else ""),
        "triton": triton_version or "not installed",
        "triton interpreter (TRITON_INTERPRET)": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }


def main() -> int:
    info = collect()
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    return 0
