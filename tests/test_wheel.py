"""`make wheel` builds dist/scalenn-*+cpu-*.whl and the wheel installs next to the existing torch
in a fresh virtual environment, imports, and runs an op (scripts/wheel_check.sh)."""
import glob
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_builds_installs_and_runs():
    result = subprocess.run(["make", "wheel-check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wheel OK" in result.stdout
    wheels = glob.glob(os.path.join(ROOT, "dist", "scalenn-*+cpu-*.whl"))
    assert wheels, "no +cpu wheel in dist/"
