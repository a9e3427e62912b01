#!/usr/bin/env bash
# Install a built scalenn wheel into a fresh virtual environment that reuses the torch of an
# existing environment (through a .pth path entry), then run `scalenn info` and one op.
# Usage: scripts/wheel_check.sh PYTHON_OF_ENV_WITH_TORCH WHEEL
set -euo pipefail
base_py=$1
wheel=$2
dir=$(mktemp -d /tmp/scalenn-wheelcheck.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$base_py" -m venv --without-pip "$dir/venv"
torch_site=$("$base_py" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
new_site=$("$dir/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# A plain path line: torch and friends become importable; .pth files there (the editable
# scalenn of the dev venv) are not processed, so only the wheel provides scalenn.
echo "$torch_site" > "$new_site/_existing_torch.pth"
"$base_py" -m pip --disable-pip-version-check -q install --no-deps --target "$new_site" "$wheel"
cd "$dir"
"$dir/venv/bin/python" - <<'PY'
import scalenn, torch, os
assert os.path.dirname(scalenn.__file__).startswith(os.environ.get("TMPDIR", "/tmp")), scalenn.__file__
x = torch.randn(8, 100)
q, s = scalenn.quantize_per_row(x)
err = (scalenn.dequantize_per_row(q, s) - x).abs().max().item()
assert err <= s.max().item() / 2 + 1e-6, err
print(f"wheel OK: scalenn {scalenn.__version__} from {scalenn.__file__}, max error {err:.4f}")
PY
# Through a file, not a pipe: with PYTHONUNBUFFERED=1, `| head` closing early is a
# BrokenPipeError (a flaky failure under load).
"$dir/venv/bin/python" -m scalenn info > "$dir/info.txt"
head -12 "$dir/info.txt"
