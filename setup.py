"""Builds the one extension module `scalenn._C` with ninja through torch.utils.cpp_extension.

Build with the torch that is already installed (`pip install --no-build-isolation`); this file
never installs or replaces torch.

Environment:
  SCALENN_CUDA=auto|0|1   auto (default): build csrc/cuda when torch has CUDA and nvcc exists;
                          1: require it (clear error otherwise); 0: CPU only.
  TORCH_CUDA_ARCH_LIST    CUDA archs, e.g. "8.0;9.0a" (torch's own convention; 9.0a = Hopper
                          with wgmma, which scalenn::wgmma_sp24_linear needs).
  MAX_JOBS                parallel compile jobs (ninja).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

BASE_VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _torch():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit("scalenn builds against an installed torch: install torch first, then "
                 "`pip install --no-build-isolation .` (build isolation would fetch another torch)")
    return torch, cpp_extension


def _want_cuda(torch, cpp_extension):
    mode = os.environ.get("SCALENN_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"SCALENN_CUDA must be auto, 0 or 1, got {mode!r}")
    torch_has_cuda = torch.version.cuda is not None
    have_nvcc = cpp_extension.CUDA_HOME is not None and shutil.which(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is not None
    if mode == "1" and not torch_has_cuda:
        sys.exit(f"SCALENN_CUDA=1 but this torch ({torch.__version__}) was built without CUDA: "
                 "install a CUDA build of torch, or set SCALENN_CUDA=0")
    if mode == "1" and not have_nvcc:
        sys.exit("SCALENN_CUDA=1 but nvcc was not found: set CUDA_HOME to a CUDA toolkit")
    return mode != "0" and torch_has_cuda and have_nvcc


def _version(torch, with_cuda):
    if with_cuda:
        return f"{BASE_VERSION}+cu{torch.version.cuda.replace('.', '')}"
    return f"{BASE_VERSION}+cpu"


def _extension(torch, cpp_extension, with_cuda):
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -O3 and no -march: every ISA-specific function carries its own target attribute
    # (csrc/cpu/isa.h), so the wheel runs on any x86-64 CPU.
    cxx = ["-O3", "-std=c++20", "-fno-math-errno", "-Wall", "-Wno-unused-function",
           "-Wno-unknown-pragmas",
           # gcc 12 false positive inside its own AVX-512 intrinsics headers
           "-Wno-maybe-uninitialized"]
    # ATen's at::parallel_for is a header template that runs `#pragma omp parallel` in *our*
    # object code: without -fopenmp the pragma is ignored and every "parallel" loop runs on one
    # thread. Linking -fopenmp records libgomp.so.1, which resolves to the copy torch already
    # loaded (same SONAME), so there is one OpenMP thread pool.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx += openmp
    defines = [("SCALENN_VERSION", f'"{_version(torch, with_cuda)}"')]
    # Headers as dependencies, so editing one rebuilds (setuptools only compares sources).
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True))
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=openmp, define_macros=defines,
                  depends=depends)
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        defines.append(("SCALENN_WITH_CUDA", "1"))
        return cpp_extension.CUDAExtension("scalenn._C", sources, **kwargs)
    return cpp_extension.CppExtension("scalenn._C", sources, **kwargs)


torch, cpp_extension = _torch()
with_cuda = _want_cuda(torch, cpp_extension)

setup(
    version=_version(torch, with_cuda),
    packages=find_packages(include=["scalenn", "scalenn.*"]) + ["scalenn.kernels"],
    # Triton kernels live in the top-level kernels/ folder and ship as scalenn.kernels.
    package_dir={"scalenn.kernels": "kernels"},
    ext_modules=[_extension(torch, cpp_extension, with_cuda)],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
