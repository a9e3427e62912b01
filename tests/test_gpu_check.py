"""benchmarks/gpu_check.py on a machine without a GPU: its pure parts (argument parsing, operand
rotation, pytest summary parsing, table formatting, target verdicts) and its loud failure."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gpu_check",
                                              os.path.join(ROOT, "benchmarks", "gpu_check.py"))
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)


def test_parse_args_defaults_and_lists():
    a = gc.parse_args(["--out", "/tmp/x"])
    assert a.sizes == [4096, 8192] and a.ms == [16, 128, 1024, 8192] and a.rounds == 9
    a = gc.parse_args(["--out", "d", "--sizes", "1024", "--ms", "1,7", "--skip-build"])
    assert a.sizes == [1024] and a.ms == [1, 7] and a.skip_build
    with pytest.raises(SystemExit):
        gc.parse_args([])  # --out is required
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", "d", "--ms", "16,x"])
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", "d", "--rounds", "2"])


def test_copies_for_rotates_past_l2():
    l2 = 60 * 2 ** 20
    n = gc.copies_for(16 * 2 ** 20, l2)  # a 4096x4096 int8 weight
    assert n * 16 * 2 ** 20 >= 3 * l2 and n == 12
    assert gc.copies_for(2 ** 30, l2) == 2  # big operands: still two, alternating
    assert gc.copies_for(1, l2) == 64  # capped
    assert gc.copies_for(0, l2) == 2


def test_summarize_pytest():
    out = "....s\n=== 3 passed, 1 skipped, 2 failed in 2.01s ===\n"
    assert gc.summarize_pytest(out) == {"passed": 3, "skipped": 1, "failed": 2}
    assert gc.summarize_pytest("1 error in 0.1s") == {"errors": 1}
    assert gc.summarize_pytest("no tests ran") == {}


def test_format_table():
    text = gc.format_table([{"S": 4096, "M": 16, "ms": 0.0123456}, {"S": 8192, "M": 1024}],
                           ["S", "M", "ms"])
    lines = text.splitlines()
    assert lines[0].split() == ["S", "M", "ms"]
    assert lines[2].split() == ["4096", "16", "0.0123"]
    assert lines[3].split() == ["8192", "1024", "-"]
    assert len({len(l.rstrip()) <= len(lines[1]) for l in lines}) == 1


def test_check_targets_verdicts():
    results = {
        "int8_linear": [{"M": 16, "variant": "summary", "vs_bf16": 1.1, "vs_int_mm": 1.2},
                        {"M": 1024, "variant": "summary", "vs_bf16": 1.6, "vs_int_mm": 0.9}],
        "sparse24": [{"M": 1024, "variant": "summary", "vs_dense": 1.4}],
        "bucket_pack": [{"variant": "scalenn pack->bfloat16 (cuda)", "fraction_of_copy_bw": 0.85},
                        {"variant": "torch.cat", "fraction_of_copy_bw": 0.5}],
    }
    v = gc.check_targets(results)
    assert v["int8_vs_bf16_at_M>=1024"]["status"] == "pass"
    assert v["int8_vs_int_mm_every_M"] == {"status": "FAIL", "worst": 0.9, "threshold": 1.0}
    assert v["sparse24_vs_dense_at_M>=1024"]["status"] == "pass"
    assert v["sparse24_vs_semi_structured_at_M>=1024"] == {"status": "not measured"}
    assert v["pack_fraction_of_copy_bw"]["status"] == "pass"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_main_fails_loudly_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gc.main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "gpu_check: FAILED" in err and ("CPU-only" in err or "no CUDA GPU" in err)


def test_cpu_smoke_runs_every_benchmark_code_path(tmp_path):
    # Tiny shapes on the CPU (Triton interpreter, op references): the timings mean nothing, but
    # every section, the json and the final table are produced by the same code the GPU runs.
    import json
    rc = gc.main(["--out", str(tmp_path), "--cpu-smoke", "--sizes", "32", "--ms", "3",
                  "--rounds", "3"])
    assert rc == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {"limits", "int8_linear", "sparse24", "bucket_pack", "targets"} <= set(report)
    variants = {r.get("variant") for r in report["int8_linear"]}
    assert {"scalenn int8 (triton)", "bf16 F.linear", "summary"} <= variants
    assert any(r.get("variant") == "scalenn 2:4 (mma.sp)" for r in report["sparse24"])
    # the op's CPU kernel is the reference: its layout map is the identity
    probe = next(r for r in report["sparse24_probe"] if r["variant"] == "mma.sp")
    assert [probe[k]["fraction_right"] for k in ("x_token", "x_k", "w_row", "w_col")] == [1.0] * 4
    packs = {r["variant"] for r in report["bucket_pack"]}  # scalenn::bucket_pack, op + Triton
    assert {"scalenn pack->bfloat16 (cuda)", "scalenn pack->float32 (triton)"} <= packs
    assert (tmp_path / "gpu_check.md").read_text().startswith("# scalenn gpu_check")


def test_sparse24_disagreements_drops_kernels_that_differ_from_the_reference():
    import torch
    y = torch.randn(8, 16)
    variants = {
        "scalenn 2:4 (mma.sp)": lambda i: y,
        "scalenn 2:4 (wgmma.sp)": lambda i: y + 1e-4,  # summation-order noise: kept
        "scalenn 2:4 int8 (mma.sp)": lambda i: y,
        "scalenn 2:4 int8 (wgmma.sp)": lambda i: y.flip(0),  # wrong rows
        "scalenn 2:4 (other.sp)": lambda i: torch.full_like(y, float("nan")),
        "dense bf16 F.linear": lambda i: -y,  # not a 2:4 kernel: never compared
    }
    wrong = gc._sparse24_disagreements(torch, variants, "scalenn 2:4 (mma.sp)",
                                       "scalenn 2:4 int8 (mma.sp)")
    assert set(wrong) == {"scalenn 2:4 int8 (wgmma.sp)", "scalenn 2:4 (other.sp)"}
    assert "disagrees with scalenn 2:4 int8 (mma.sp)" in wrong["scalenn 2:4 int8 (wgmma.sp)"]
    # without the reference kernel there is nothing to compare against
    assert gc._sparse24_disagreements(torch, {"scalenn 2:4 (wgmma.sp)": lambda i: y},
                                      "scalenn 2:4 (mma.sp)", "scalenn 2:4 int8 (mma.sp)") == {}


def test_sparse24_probe_names_what_a_broken_kernel_read():
    import torch
    spec = importlib.util.spec_from_file_location(
        "sparse24_probe", os.path.join(ROOT, "benchmarks", "sparse24_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    ref = torch.ops.scalenn.mma_sp24_linear

    def rows_swapped_in_pairs(x, *args):  # a kernel that reads token t ^ 1 for token t
        return ref(x[torch.arange(x.shape[0]) ^ 1], *args)

    good = probe.probe(torch, ref, "cpu")
    bad = probe.probe(torch, rows_swapped_in_pairs, "cpu")
    assert all(v["fraction_right"] == 1.0 for v in good.values())
    assert bad["x_token"]["fraction_right"] == 0.0
    assert bad["x_token"]["first_mismatches"][0] == {"t": 0, "n": 0, "got": 1.0, "want": 0.0}
    assert bad["x_k"]["fraction_right"] == 1.0  # the k it used is still right
    assert bad["w_row"]["fraction_right"] < 1.0 and bad["w_col"]["fraction_right"] < 1.0
    assert "x_token 0.0%" in probe.summary_line("bad", bad)


def test_a_crashing_probe_process_is_reported_and_its_op_left_out(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(gc, "DEV", "nodevice")  # the probe process dies on its first tensor
    monkeypatch.setattr(gc, "SPARSE24_KERNELS", ("mma", "nosuch"))
    monkeypatch.setenv(gc.SKIP_OPS_ENV, "")
    rows = gc.probe_sparse24(str(tmp_path))
    assert rows[0]["variant"] == "mma.sp" and "error" in rows[0]
    assert "FAILED" in rows[0]["line"]
    assert "absent" in rows[1]  # an op this build does not have is not a failure
    assert os.environ[gc.SKIP_OPS_ENV] == "mma_sp24_linear"
    assert not gc._has_op(torch, "mma_sp24_linear") and gc._has_op(torch, "quantize_per_row")
