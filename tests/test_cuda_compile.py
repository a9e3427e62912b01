"""Every CUDA source compiles with nvcc for the GPU generations we ship (sm_80 Ampere, sm_90
Hopper), also on machines without a GPU. The .cu files hold kernels and launchers on raw
pointers only, so this needs nvcc but no CUDA build of torch."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
# Hopper-only instructions (wgmma, TMA) need sm_90a; a file opts in with this marker.
HOPPER_MARKER = "SCALENN_NEEDS_SM90A"


def _archs(path):
    with open(path) as f:
        if HOPPER_MARKER in f.read():
            return ["sm_90a"]
    return ["sm_80", "sm_90"]


@pytest.mark.skipif(not NVCC, reason="nvcc not found: CUDA compile checks need a CUDA toolkit")
@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_cuda_source_compiles(path, tmp_path):
    for arch in _archs(path):
        cmd = [NVCC, "-std=c++17", "-O3", "-c", path, "-o", str(tmp_path / f"out_{arch}.o"),
               f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xcompiler", "-Wall",
               "--expt-relaxed-constexpr"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"nvcc failed for {arch}:\n{result.stderr}"
        assert "warning" not in result.stderr.lower(), result.stderr


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/cuda/*.cu missing"
