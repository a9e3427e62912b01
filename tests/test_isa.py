"""CPU ISA detection and the SCALENN_CPU_ISA override."""
import os
import subprocess
import sys

import pytest

from scalenn import _C

from conftest import ALL_ISAS, supported_isas


def test_detected_and_current_are_known_levels():
    assert _C.detected_isa() in ALL_ISAS
    assert _C.current_isa() in ALL_ISAS
    assert "scalar" in supported_isas()


def test_set_cpu_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="avx512, avx2, scalar"):
        _C.set_cpu_isa("sse9")
    unsupported = [i for i in ALL_ISAS if i not in supported_isas()]
    for name in unsupported:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            _C.set_cpu_isa(name)


def _run_with_isa(value):
    env = dict(os.environ, SCALENN_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", "import scalenn; print(scalenn._C.current_isa())"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ALL_ISAS)
def test_environment_override(name):
    result = _run_with_isa(name)
    if name in supported_isas():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name
    else:
        assert result.returncode != 0 and "not supported by this CPU" in result.stderr


def test_environment_override_unknown_value_is_clear_error():
    result = _run_with_isa("fastest")
    assert result.returncode != 0
    assert "SCALENN_CPU_ISA must be one of avx512, avx2, scalar" in result.stderr
    assert "Segmentation" not in result.stderr
