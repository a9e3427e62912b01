"""`scalenn demo --quick` end to end on the real data, and its missing-data path."""
import os
import re
import subprocess
import sys

import pytest

import scalenn
from scalenn import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("dense fp32", "torch.ao dynamic int8", "scalenn int8", "scalenn sparse",
            "scalenn sparse+int8")


@pytest.mark.slow
@pytest.mark.skipif(not data.fashion_mnist_available(), reason=data.HOW_TO_GET)
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "scalenn", "demo", "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    top1 = {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^=> (MLP|CNN fine-tuned)[^\n]*test top-1 ([\d.]+)%", stdout, re.M)}
    # 1 epoch on 3000 images: far above chance (10%), far below the full demo
    assert top1["MLP"] > 50 and top1["CNN fine-tuned"] > 50, stdout
    assert "epoch 1/1" in result.stderr and "top1=" in result.stderr  # the progress bars
    md = (out / "report.md").read_text()
    for v in VARIANTS:
        assert f"| {v} |" in md and v in stdout
    # only the 3136x128 Linear is pruned and packed, then quantized into SparseInt8Linear
    assert "SparseLinear: classifier.0 csr density 0.1" in stdout
    assert "| scalenn sparse | " in md and "ok: SparseLinear classifier.0 |" in md
    assert "ok: SparseInt8Linear classifier.0; int8 features.0, features.3, classifier.2" in md
    sizes = {m.group(1): float(m.group(2)) for m in
             re.finditer(r"^\| ([^|]+?) \| [^|]+ \| [^|]+ \| ([\d.]+) MB", md, re.M)}
    assert sizes["scalenn sparse"] < 0.3 * sizes["dense fp32"], md
    assert sizes["scalenn sparse+int8"] < 0.6 * sizes["scalenn sparse"], md
    assert (out / "report.png").stat().st_size > 10_000
    # the fine-tuned dense CNN is saved for `scalenn compress`
    from scalenn.models import mnist_cnn
    scalenn.load(mnist_cnn(), str(out / "cnn_dense.safetensors"))


def test_demo_without_data_says_how_to_get_it(tmp_path):
    env = dict(os.environ, SCALENN_FASHION_MNIST=str(tmp_path / "none"))
    result = subprocess.run([sys.executable, "-m", "scalenn", "demo", "--quick", "--out",
                             str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=env)
    assert result.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert result.stderr.strip().count("\n") == 0
