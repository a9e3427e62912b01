"""The command line as a user runs it: scalenn info, scalenn bench (scalenn demo: tests/test_demo.py)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "scalenn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_info_reports_isa_and_build():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    for key in ("cpu isa (selected)", "cuda kernels built", "triton", "threads", "torch",
                "avx512vbmi kernels", "transparent huge pages", "2:4 on Hopper (wgmma.sp)"):
        assert key in result.stdout
    import scalenn
    if not scalenn._C.build_info()["cuda"]:
        line = next(l for l in result.stdout.splitlines() if l.startswith("2:4 on Hopper"))
        assert line.split(None, 4)[-1].startswith("not built"), line


def test_info_honours_isa_override():
    result = run_cli("info", env=dict(os.environ, SCALENN_CPU_ISA="scalar"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("cpu isa (selected)") and line.split()[-1] == "scalar"
               for line in lines)
    assert any(line.startswith("avx512vbmi kernels") and line.split()[-1] == "no" for line in lines)


def test_bench_quantize_writes_json_md_png(tmp_path):
    result = run_cli("bench", "quantize", "--quick", "--threads", "1", "--rounds", "3",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"quantize.{ext}").stat().st_size > 0
    data = json.loads((tmp_path / "quantize.json").read_text())
    assert {"cpu", "date", "command"} <= set(data["meta"])
    assert {r["variant"] for r in data["rows"]} == {"torch ops", "scalenn"}


def test_bench_unknown_name_is_clear_error():
    result = run_cli("bench", "nonexistent")
    assert result.returncode == 2 and "available" in result.stderr


def test_bench_sparse_int8_writes_json_md_png(tmp_path):
    result = run_cli("bench", "sparse_int8", "--quick", "--threads", "1", "--rounds", "3",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"sparse_int8.{ext}").stat().st_size > 0
    data = json.loads((tmp_path / "sparse_int8.json").read_text())
    assert {"cpu", "date", "command"} <= set(data["meta"])
    rows = [r for r in data["rows"] if r["variant"] == "SparseInt8Linear"]
    # One SparseInt8Linear row per (pattern, M) of the quick run, each with its format and
    # stored bytes per kept weight; the dense int8 peers it is compared with ran alongside.
    assert rows and all(r["format"] in ("elem16", "quad") and r["bytes_per_kept"] > 0
                        for r in rows)
    assert {"dense fp32", "Int8Linear", "SparseLinear"} <= {r["variant"] for r in data["rows"]}
    md = (tmp_path / "sparse_int8.md").read_text()
    assert sum("| SparseInt8Linear |" in line for line in md.splitlines()) == len(rows)
