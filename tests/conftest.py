import os

import pytest
import torch

# No GPU here: Triton kernels run under the CPU interpreter. Must be set before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import scalenn  # noqa: E402
from scalenn import _C  # noqa: E402

ALL_ISAS = ["avx512", "avx2", "scalar"]
_LEVEL = {name: i for i, name in enumerate(reversed(ALL_ISAS))}


def supported_isas():
    best = _LEVEL[_C.detected_isa()]
    return [name for name in ALL_ISAS if _LEVEL[name] <= best]


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Runs the test once per CPU ISA level; levels this CPU lacks are skipped (with reason)."""
    name = request.param
    if name not in supported_isas():
        pytest.skip(f"CPU lacks the {name} level (detected {_C.detected_isa()})")
    previous = _C.current_isa()
    _C.set_cpu_isa(name)
    yield name
    _C.set_cpu_isa(previous)


# Fresh random data on every run; the seed is printed in the header so a failure can be replayed
# with SCALENN_TEST_SEED=<seed>.
SEED = int(os.environ.get("SCALENN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def pytest_report_header(config):
    return f"scalenn {scalenn.__version__}, cpu isa {_C.current_isa()}, SCALENN_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
