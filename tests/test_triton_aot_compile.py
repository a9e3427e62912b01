"""Every Triton kernel compiles for real GPUs (sm_80 Ampere, sm_90 Hopper) on this GPU-less
machine: triton.compile with an explicit GPUTarget runs the whole CUDA backend (TTIR -> TTGIR ->
LLVM -> PTX -> cubin with Triton's bundled ptxas) without a device. The interpreter accepts
things a GPU compile rejects (non-constexpr globals, some dtype mixes), so this catches errors
the interpreter tests cannot. It does not run anything.

The compiles run in a subprocess (tests/triton_aot_check.py) because this test session imports
the kernels under TRITON_INTERPRET=1, where triton.jit builds interpreter objects instead."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_triton_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_aot_check.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n\n".join(f"{r['name']} sm_{r['arch']}: {r['error']}" for r in failed)
    assert len(results) >= 20
    int8 = [r for r in results if r["name"].startswith("int8_linear")]
    assert int8 and all(r["tensor_cores"] for r in int8), "int8 tl.dot must use mma/wgmma"
