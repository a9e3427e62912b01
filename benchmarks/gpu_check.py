#!/usr/bin/env python
"""One-command GPU check for scalenn: build with CUDA, run the GPU correctness tests, time the
kernels against what a user would otherwise pick, print a short table last, write json.

    python benchmarks/gpu_check.py --out DIR

For a machine with a CUDA build of torch, Triton and nvcc, and no network. Sized to finish in
under 5 minutes on one H200. Steps (each recorded in DIR/gpu_check.json):

1. build: `setup.py build_ext --inplace` with SCALENN_CUDA=1, only this GPU's arch (sm_90a on
   Hopper);
2. probes: a layout map of each 2:4 kernel (benchmarks/sparse24_probe.py: which input element
   each output element was made of), one process per kernel, which names what is wrong when a
   new kernel fails; a kernel whose process crashes is left out of the steps below;
3. tests: pytest on the CUDA and Triton test files (the Triton ones run on the GPU here);
4. limits: device copy bandwidth and the bf16 (and int8) matmul rates of cuBLAS;
5. int8 W8A8 linear (activation quantization included) vs torch._int_mm with separate
   quantize/dequantize vs bf16 F.linear; 2:4 sparse (mma.sp, and wgmma.sp where built) vs
   torch.sparse to_sparse_semi_structured vs dense; gradient-bucket pack vs the copy bandwidth.
   K = N in {4096, 8192}, M in {16, 128, 1024, 8192}. CUDA events, warm-up, interleaved
   variants, medians of rounds, random data, weights/inputs rotated over more bytes than L2.

Without a GPU it stops at once with a message saying so (exit status 2).
"""
import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (4096, 8192)
MS = (16, 128, 1024, 8192)
TEST_FILES = ["tests/test_cuda_kernels.py", "tests/test_triton_int8_linear.py",
              "tests/test_triton_bsr_matmul.py", "tests/test_triton_bucket_pack.py",
              "tests/test_triton_quantize.py", "tests/test_gpu_ops.py",
              "tests/test_sparse24_layout.py"]
# Issue 6 targets, checked on the measured rows.
TARGETS = {
    "int8_vs_bf16_at_M>=1024": 1.5,
    "int8_vs_int_mm_every_M": 1.0,
    "sparse24_vs_dense_at_M>=1024": 1.3,
    "sparse24_vs_semi_structured_at_M>=1024": 1.0,
    "pack_fraction_of_copy_bw": 0.8,
}


# Where the benchmarks run. Only the CPU smoke test (tests/test_gpu_check.py, --cpu-smoke) sets
# "cpu", to execute every code path of this script on tiny shapes without a GPU.
DEV = "cuda"


class GpuCheckFailure(SystemExit):
    """Stops the check with a clear message and exit status 2."""

    def __init__(self, message):
        print(f"gpu_check: FAILED: {message}", file=sys.stderr)
        super().__init__(2)


# ---------------------------------------------------------------- pure helpers (tested on CPU)

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--skip-build", action="store_true", help="use the extension as built")
    p.add_argument("--skip-tests", action="store_true", help="do not run the pytest step")
    p.add_argument("--sizes", type=_int_list, default=list(SIZES), help="K=N values, e.g. 4096,8192")
    p.add_argument("--ms", type=_int_list, default=list(MS), help="M values, e.g. 16,128,1024,8192")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds per variant (median)")
    p.add_argument("--budget-s", type=float, default=200.0,
                   help="wall-clock budget of the timing sections (counted from their start); "
                        "shapes past it are skipped and recorded as skipped")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="test-only: run the benchmark code on the CPU with tiny shapes (no build, "
                        "no tests, meaningless timings)")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (a median of fewer is noise)")
    return args


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def copies_for(bytes_per_copy: int, l2_bytes: int, factor: float = 3.0, cap: int = 64) -> int:
    """How many distinct copies of the operands to rotate through so that consecutive calls
    never find their data in L2: together at least `factor` x L2, and at least 2."""
    if bytes_per_copy <= 0:
        return 2
    return int(min(cap, max(2, math.ceil(factor * l2_bytes / bytes_per_copy))))


def summarize_pytest(output: str) -> dict:
    """Counts from pytest's last summary line ('3 passed, 1 skipped in 2.0s')."""
    counts = {}
    lines = [l for l in output.strip().splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    if lines:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)",
                                  lines[-1]):
            counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def format_table(rows, columns) -> str:
    """Plain fixed-width table; numbers with 3 significant digits, None as '-'."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(out)


def check_targets(results: dict) -> dict:
    """Pass/fail/unknown per issue target from the measured rows."""
    out = {}
    int8 = results.get("int8_linear", [])
    big = [r for r in int8 if r.get("M", 0) >= 1024 and r.get("vs_bf16") is not None]
    out["int8_vs_bf16_at_M>=1024"] = _verdict([r["vs_bf16"] for r in big],
                                              TARGETS["int8_vs_bf16_at_M>=1024"])
    every = [r for r in int8 if r.get("vs_int_mm") is not None]
    out["int8_vs_int_mm_every_M"] = _verdict([r["vs_int_mm"] for r in every],
                                             TARGETS["int8_vs_int_mm_every_M"])
    sp = [r for r in results.get("sparse24", []) if r.get("M", 0) >= 1024]
    out["sparse24_vs_dense_at_M>=1024"] = _verdict(
        [r["vs_dense"] for r in sp if r.get("vs_dense") is not None],
        TARGETS["sparse24_vs_dense_at_M>=1024"])
    out["sparse24_vs_semi_structured_at_M>=1024"] = _verdict(
        [r["vs_semi_structured"] for r in sp if r.get("vs_semi_structured") is not None],
        TARGETS["sparse24_vs_semi_structured_at_M>=1024"])
    pk = [r for r in results.get("bucket_pack", []) if r.get("fraction_of_copy_bw") is not None
          and r.get("variant", "").startswith("scalenn")]
    out["pack_fraction_of_copy_bw"] = _verdict([max(r["fraction_of_copy_bw"] for r in pk)]
                                               if pk else [], TARGETS["pack_fraction_of_copy_bw"])
    return out


def _verdict(values, threshold):
    if not values:
        return {"status": "not measured"}
    worst = min(values)
    return {"status": "pass" if worst >= threshold else "FAIL", "worst": worst,
            "threshold": threshold}


# ---------------------------------------------------------------- steps that need the GPU

def require_gpu():
    try:
        import torch
    except ImportError:
        raise GpuCheckFailure("torch is not installed")
    if torch.version.cuda is None:
        raise GpuCheckFailure(f"this torch ({torch.__version__}) is a CPU-only build; the check "
                              "needs a CUDA build of torch")
    if not torch.cuda.is_available():
        raise GpuCheckFailure("no CUDA GPU is visible to torch (torch.cuda.is_available() is "
                              "False): run this on the GPU machine")
    from torch.utils import cpp_extension
    nvcc = shutil.which("nvcc") or (cpp_extension.CUDA_HOME and
                                    os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if not nvcc or not os.path.exists(nvcc):
        raise GpuCheckFailure("nvcc not found (set CUDA_HOME): the CUDA kernels must be built")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise GpuCheckFailure("Triton is not installed")
    return torch


def build_extension(torch, out_dir):
    """Builds with the CUDA kernels for this GPU's arch. If that fails, the log is kept and the
    extension is built without them, so the Triton kernels are still tested and timed (the
    check then ends with a failing exit status)."""
    major, minor = torch.cuda.get_device_capability()
    # Hopper: the sm_90a target, which has the wgmma instructions (a superset of sm_90).
    arch = f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")
    info = _build(out_dir, "build_cuda.log", SCALENN_CUDA="1", TORCH_CUDA_ARCH_LIST=arch)
    info["arch"] = "sm_" + arch.replace(".", "")
    if not info["ok"]:
        print(info["log_tail"], file=sys.stderr)
        print("[gpu_check] the CUDA build failed; building without the CUDA kernels so the "
              "Triton kernels still run", file=sys.stderr, flush=True)
        info["cpu_only_fallback"] = _build(out_dir, "build_cpu_only.log", SCALENN_CUDA="0")
        if not info["cpu_only_fallback"]["ok"]:
            raise GpuCheckFailure("building the extension failed, with and without CUDA (logs in "
                                  f"{out_dir})")
    return info


def _build(out_dir, log_name, **env_vars):
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4), **env_vars)
    log = os.path.join(out_dir, log_name)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=600).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    with open(log) as f:
        tail = f.read()[-3000:]
    return {"seconds": round(time.time() - t0, 1), "ok": rc == 0, "log_tail": tail}


def run_tests(out_dir, timeout_s=180):
    """pytest on the GPU test files, its output streamed to out_dir/pytest.log. Uses
    pytest-xdist when installed: most of the time is Triton compiling one kernel variant per
    test, which spreads over the CPU cores."""
    env = dict(os.environ, SCALENN_TRITON_AUTOTUNE="0", PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    if importlib.util.find_spec("pytest_timeout"):
        cmd += ["--timeout=120"]
    cmd += TEST_FILES
    log = os.path.join(out_dir, "pytest.log")
    t0 = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    with open(log) as f:
        out = f.read() + ("\n[timed out]" if rc == -1 else "")
    return {"seconds": round(time.time() - t0, 1), "returncode": rc,
            "counts": summarize_pytest(out), "output_tail": out[-6000:]}


class Timer:
    """Interleaved CUDA-event timing. Every variant is first run eagerly (compiles, autotunes)
    and sized to ~2 ms per round (`inner` calls, cycling through its rotated operand copies);
    then `inner` calls are captured into one CUDA graph. Each round times, per variant, one
    graph replay (device time: no Python or launch gaps between kernels) and one eager loop
    (what a Python caller pays per call); rounds alternate the variant order. Results are
    medians over rounds of the per-call time: "ms" from the graph (eager where a variant cannot
    be captured, e.g. it copies a host table each call), and "eager_ms"."""

    def __init__(self, torch, rounds):
        self.torch, self.rounds = torch, rounds

    def run(self, variants: dict) -> dict:
        torch = self.torch
        inner, graphs = {}, {}
        for name, fn in variants.items():
            for i in range(3):
                fn(i)
            _sync(torch)
            t0 = time.perf_counter()
            for i in range(5):
                fn(i)
            _sync(torch)
            per_call = (time.perf_counter() - t0) / 5
            inner[name] = int(min(200, max(3, 2e-3 / max(per_call, 1e-7))))
            graphs[name] = self._capture(fn, inner[name])
        graph_t = {name: [] for name in variants}
        eager_t = {name: [] for name in variants}
        names = list(variants)
        counter = 0
        for r in range(self.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                if graphs[name] is not None:
                    start, end = _event(torch), _event(torch)
                    start.record()
                    graphs[name].replay()
                    end.record()
                    end.synchronize()
                    graph_t[name].append(start.elapsed_time(end) / inner[name])
                start, end = _event(torch), _event(torch)
                start.record()
                for _ in range(inner[name]):
                    variants[name](counter)
                    counter += 1
                end.record()
                end.synchronize()
                eager_t[name].append(start.elapsed_time(end) / inner[name])
        out = {}
        for name in names:
            eager = statistics.median(eager_t[name])
            graph = statistics.median(graph_t[name]) if graph_t[name] else None
            out[name] = {"ms": graph if graph is not None else eager, "eager_ms": eager,
                         "timed_by": "graph" if graph is not None else "eager"}
        del graphs
        return out

    def _capture(self, fn, n):
        """A CUDA graph of n calls, or None when the variant cannot be captured."""
        torch = self.torch
        if DEV != "cuda":
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph wants
            fn(0)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for i in range(n):
                    fn(i)
        except Exception:  # noqa: BLE001 - e.g. a host-to-device table copy while capturing
            torch.cuda.synchronize()
            return None
        return graph


def _sync(torch):
    if DEV == "cuda":
        torch.cuda.synchronize()


class _WallEvent:
    """CPU stand-in for torch.cuda.Event (smoke test only)."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


def _event(torch):
    return torch.cuda.Event(enable_timing=True) if DEV == "cuda" else _WallEvent()


def measure_limits(torch, timer, scale=1):
    n = (1 << 29) // scale  # 512 MiB: far past L2
    a = torch.empty(n, dtype=torch.uint8, device=DEV).random_()
    b = torch.empty_like(a)
    # Eager: in a CUDA graph a device-to-device copy becomes a memcpy node that the copy
    # engines run (2.7 TB/s on an H200 against 4.2 TB/s for the copy kernel of eager calls).
    ms = timer.run({"copy": lambda i: b.copy_(a)})["copy"]["eager_ms"]
    copy_gbs = 2 * n / (ms * 1e-3) / 1e9
    del a, b
    s = 8192 // scale
    x = torch.randn(s, s, device=DEV, dtype=torch.bfloat16)
    y = torch.randn(s, s, device=DEV, dtype=torch.bfloat16)
    qa = torch.randint(-127, 128, (s, s), device=DEV, dtype=torch.int8)
    qb = torch.randint(-127, 128, (s, s), device=DEV, dtype=torch.int8).t()
    t = timer.run({"bf16": lambda i: torch.mm(x, y), "int8": lambda i: torch._int_mm(qa, qb)})
    flops = 2 * s ** 3
    return {"copy_GBps": copy_gbs, "bf16_TFLOPs": flops / (t["bf16"]["ms"] * 1e-3) / 1e12,
            "int8_TOPs": flops / (t["int8"]["ms"] * 1e-3) / 1e12}


def _int8_variants(torch, S, M, l2):
    import torch.nn.functional as F
    from scalenn.kernels import int8_linear as tk
    OP = torch.ops.scalenn
    n_w = copies_for(S * S, l2)
    w8 = [torch.randint(-127, 128, (S, S), device=DEV, dtype=torch.int8) for _ in range(n_w)]
    wbf = [torch.randn(S, S, device=DEV, dtype=torch.bfloat16) for _ in range(
        copies_for(2 * S * S, l2))]
    ws = torch.rand(S, device=DEV) / 100
    xs = [torch.randn(M, S, device=DEV, dtype=torch.bfloat16) for _ in range(
        copies_for(2 * M * S, l2, cap=8))]
    v = {}
    packed = [OP.int8_pack_weight(w) for w in w8]
    if _has_op(torch, "int8_linear_mma"):  # the compiled kernel alone (CUDA builds)
        v["scalenn int8 (cuda)"] = lambda i: OP.int8_linear_mma(xs[i % len(xs)], packed[i % n_w],
                                                                ws, None, S, "none")
    if _has_op(torch, "int8_linear"):  # what users call: picks a kernel per call
        v["scalenn::int8_linear op"] = lambda i: OP.int8_linear(xs[i % len(xs)],
                                                                packed[i % n_w], ws, None, S,
                                                                "none")
    v["scalenn int8 (triton)"] = lambda i: tk.int8_linear(xs[i % len(xs)], w8[i % n_w], ws, None,
                                                          S, "none")
    # the pointer-addressed GEMM, to see what the TMA path (the default on Hopper) gains
    v["scalenn int8 (triton, no TMA)"] = lambda i: tk.int8_linear(
        xs[i % len(xs)], w8[i % n_w], ws, None, S, "none", tma=False)
    w8t = [w.t() for w in w8]

    def int_mm(i):
        x = xs[i % len(xs)].float()
        s = x.abs().amax(dim=1, keepdim=True) / 127.0
        q = torch.round(x / s).clamp_(-127, 127).to(torch.int8)
        acc = torch._int_mm(q, w8t[i % n_w])
        return (acc.float() * s * ws).to(torch.bfloat16)
    v["torch._int_mm + q/dq"] = int_mm
    v["bf16 F.linear"] = lambda i: F.linear(xs[i % len(xs)], wbf[i % len(wbf)])
    return v


def bench_int8(torch, timer, sizes, ms, l2, deadline):
    rows = []
    for S in sizes:
        for M in ms:
            if time.time() > deadline:
                rows.append({"S": S, "M": M, "skipped": "time budget"})
                continue
            variants = _int8_variants(torch, S, M, l2)
            ok = {}
            for name, fn in variants.items():  # a baseline that cannot run this shape is n/a
                try:
                    fn(0)
                    ok[name] = fn
                except RuntimeError as e:
                    rows.append({"S": S, "M": M, "variant": name, "error": str(e)[:200]})
            t = timer.run(ok)
            best_scalenn = min((t[n]["ms"] for n in t if n.startswith("scalenn")), default=None)
            for name, r in t.items():
                rows.append({"S": S, "M": M, "variant": name, **r,
                             "TOPs": 2 * M * S * S / (r["ms"] * 1e-3) / 1e12})
            t = {name: r["ms"] for name, r in t.items()}
            summary = {"S": S, "M": M, "variant": "summary", "ms": best_scalenn}
            if best_scalenn is not None:
                if "bf16 F.linear" in t:
                    summary["vs_bf16"] = t["bf16 F.linear"] / best_scalenn
                if "torch._int_mm + q/dq" in t:
                    summary["vs_int_mm"] = t["torch._int_mm + q/dq"] / best_scalenn
            rows.append(summary)
            del variants, ok
            _empty_cache(torch)
    return rows


def bench_sparse24(torch, timer, sizes, ms, l2, deadline):
    import torch.nn.functional as F
    from scalenn._ops.sparse24_layout import pack_sparse24, prune_2_4
    OP = torch.ops.scalenn
    rows = []
    for S in sizes:
        if time.time() > deadline:
            rows.append({"S": S, "skipped": "time budget"})
            continue
        w_host = prune_2_4(torch.randn(S, S)).to(torch.bfloat16)
        values, meta = pack_sparse24(w_host)
        # int8 2:4 against scalenn's own dense int8 kernel ("the dense kernel of the same dtype")
        w8_host = prune_2_4(torch.randint(-127, 128, (S, S), dtype=torch.int8))
        v8, m8 = (t.to(DEV) for t in pack_sparse24(w8_host))
        w8 = w8_host.to(DEV)
        ws = torch.rand(S, device=DEV) / 100
        n = copies_for(S * S * 2, l2)  # dense bf16 bytes per copy
        dense = [w_host.to(DEV) for _ in range(n)]
        vals = [values.to(DEV) for _ in range(copies_for(values.numel() * 2 + meta.numel() * 4, l2))]
        metas = [meta.to(DEV) for _ in range(len(vals))]
        try:
            from torch.sparse import to_sparse_semi_structured
            semi = [to_sparse_semi_structured(w) for w in dense[:copies_for(S * S, l2)]]
        except Exception as e:  # noqa: BLE001 - record why the baseline is missing
            semi, semi_err = None, f"{type(e).__name__}: {e}"[:200]
        for M in ms:
            if time.time() > deadline:
                rows.append({"S": S, "M": M, "skipped": "time budget"})
                continue
            xs = [torch.randn(M, S, device=DEV, dtype=torch.bfloat16) for _ in range(
                copies_for(2 * M * S, l2, cap=8))]
            v = {}
            for kernel in SPARSE24_KERNELS:
                if not _has_op(torch, f"{kernel}_sp24_linear"):
                    continue
                fn = getattr(OP, f"{kernel}_sp24_linear")
                v[f"scalenn 2:4 ({kernel}.sp)"] = lambda i, fn=fn: fn(
                    xs[i % len(xs)], vals[i % len(vals)], metas[i % len(metas)], None, None, S,
                    "none")
                v[f"scalenn 2:4 int8 ({kernel}.sp)"] = lambda i, fn=fn: fn(
                    xs[i % len(xs)], v8, m8, ws, None, S, "none")
            v["dense bf16 F.linear"] = lambda i: F.linear(xs[i % len(xs)], dense[i % n])
            if semi is not None:
                v["to_sparse_semi_structured"] = lambda i: F.linear(xs[i % len(xs)],
                                                                    semi[i % len(semi)])
            if _has_op(torch, "int8_linear"):
                packed8 = OP.int8_pack_weight(w8)
                v["scalenn dense int8"] = lambda i: OP.int8_linear(xs[i % len(xs)], packed8, ws,
                                                                   None, S, "none")
            ok = {}
            for name, fn in v.items():
                try:
                    fn(0)
                    ok[name] = fn
                except RuntimeError as e:
                    rows.append({"S": S, "M": M, "variant": name, "error": str(e)[:200]})
            # A kernel only counts when it agrees with the mma.sp kernel (tested on the GPU
            # before): both read the same images, so they differ by summation order only.
            wrong = _sparse24_disagreements(torch, ok, "scalenn 2:4 (mma.sp)",
                                            "scalenn 2:4 int8 (mma.sp)")
            for name, err in wrong.items():
                rows.append({"S": S, "M": M, "variant": name, "error": err})
                ok.pop(name)
            t = timer.run(ok)
            for name, r in t.items():
                rows.append({"S": S, "M": M, "variant": name, **r,
                             "TFLOPs_dense_equiv": 2 * M * S * S / (r["ms"] * 1e-3) / 1e12})
            t = {name: r["ms"] for name, r in t.items()}
            mine = min((ms for name, ms in t.items() if name.startswith("scalenn 2:4 (")),
                       default=None)
            mine8 = min((ms for name, ms in t.items() if name.startswith("scalenn 2:4 int8")),
                        default=None)
            summary = {"S": S, "M": M, "variant": "summary", "ms": mine}
            if mine:
                if "dense bf16 F.linear" in t:
                    summary["vs_dense"] = t["dense bf16 F.linear"] / mine
                if "to_sparse_semi_structured" in t:
                    summary["vs_semi_structured"] = t["to_sparse_semi_structured"] / mine
            if mine8 and t.get("scalenn dense int8"):
                summary["int8_vs_dense_int8"] = t["scalenn dense int8"] / mine8
            if semi is None:
                summary["semi_structured_error"] = semi_err
            rows.append(summary)
        del dense, vals, metas, semi, v8, m8, w8
        _empty_cache(torch)
    return rows


# The 2:4 kernels timed: mma.sp (any GPU from sm_80) and, where the build has it, wgmma.sp.
SPARSE24_KERNELS = ("mma", "wgmma")


# Ops that crashed their probe process: left out of the tests and timings of this run (a CUDA
# fault poisons the process it happens in), and reported.
SKIP_OPS_ENV = "SCALENN_GPU_CHECK_SKIP_OPS"


def probe_sparse24(out_dir, timeout_s=120):
    """The layout map of benchmarks/sparse24_probe.py for each 2:4 kernel (mma.sp is the
    control: it passed its tests on an H200), each in its own process: one row per kernel. A
    kernel whose process fails is added to SKIP_OPS_ENV for the rest of the run."""
    rows = []
    for kernel in SPARSE24_KERNELS:
        name, out = f"{kernel}.sp", os.path.join(out_dir, f"probe_{kernel}_sp24.json")
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "sparse24_probe.py"),
               "--kernel", kernel, "--out", out, "--device", DEV]
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s, env=dict(os.environ, PYTHONPATH=ROOT))
            rc, log = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            rc, log = -1, "[timed out]"
        if rc == 0:
            with open(out) as f:
                rows.append({"variant": name, **json.load(f)})  # its "line" included
        elif "has no attribute" in log or "no sm_90a code" in log:
            rows.append({"variant": name, "absent": log.strip().splitlines()[-1][:300]})
        else:
            skipped = [o for o in os.environ.get(SKIP_OPS_ENV, "").split(",") if o]
            os.environ[SKIP_OPS_ENV] = ",".join(skipped + [f"{kernel}_sp24_linear"])
            rows.append({"variant": name, "error": log[-3000:],
                         "line": f"2:4 layout probe, {name}: its process FAILED (rc {rc}); "
                                 f"left out of the tests and timings"})
    return rows


def _sparse24_disagreements(torch, variants, float_ref, int8_ref):
    """{variant: why} for each 2:4 kernel whose output is not close to the reference kernel's
    on the same call (the references themselves are checked by the tests)."""
    out = {}
    for name, fn in variants.items():
        ref = int8_ref if "int8" in name else float_ref
        if not name.startswith("scalenn 2:4") or name == ref or ref not in variants:
            continue
        got, want = fn(0).float(), variants[ref](0).float()
        err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)
        if not err <= 2e-2:  # also catches NaN
            out[name] = f"disagrees with {ref}: max abs difference {err:.3g} of max |y|"
    return out


def bench_pack(torch, timer, copy_gbs, scale=1):
    from scalenn.kernels import bucket_pack as tb
    OP = torch.ops.scalenn
    gen = torch.Generator().manual_seed(0)
    # ~100 M elements (400 MB fp32) in 96 tensors of random sizes
    sizes = torch.randint(1, (1 << 21) // scale, (96 // min(scale, 12),), generator=gen).tolist()
    grads = [torch.randn(s, device=DEV) for s in sizes]
    total = sum(sizes)
    rows = []
    for dtype, nbytes in ((torch.bfloat16, 2), (torch.float32, 4)):
        # scalenn::bucket_pack writes into a preallocated flat buffer (as scalenn.distributed
        # does); the torch baseline allocates its result, as a user without the op would.
        flat = torch.empty(total, dtype=dtype, device=DEV)
        v = {f"scalenn pack->{str(dtype)[6:]} (cuda)": lambda i, f=flat: OP.bucket_pack(
                grads, f, 0.125),
             f"scalenn pack->{str(dtype)[6:]} (triton)": lambda i, f=flat: tb.bucket_pack(
                grads, f, 0.125),
             f"torch.cat*scale->{str(dtype)[6:]}": lambda i, d=dtype: (
                torch.cat([g.view(-1) for g in grads]) * 0.125).to(d)}
        t = timer.run(v)
        for name, r in t.items():
            gbs = total * (4 + nbytes) / (r["ms"] * 1e-3) / 1e9
            rows.append({"variant": name, **r, "GBps": gbs,
                         "fraction_of_copy_bw": gbs / copy_gbs})
    return rows


def _empty_cache(torch):
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _has_op(torch, name):
    if name in os.environ.get(SKIP_OPS_ENV, "").split(","):
        return False
    try:
        getattr(torch.ops.scalenn, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    global DEV
    if args.cpu_smoke:
        import torch
        DEV, scale = "cpu", 4096
        args.skip_build = args.skip_tests = True
    else:
        torch = require_gpu()
        scale = 1
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu (smoke test)",
              "torch": torch.__version__,
              "cuda": torch.version.cuda, "host": platform.node()}
    if not args.skip_build:
        report["build"] = build_extension(torch, args.out)
        print(f"[gpu_check] build: ok={report['build']['ok']} in {report['build']['seconds']} s",
              flush=True)
        save(report, args.out)
    report["sparse24_probe"] = probe_sparse24(args.out)
    for row in report["sparse24_probe"]:
        print(f"[gpu_check] {row.get('line') or row['variant'] + ': ' + row.get('absent', '')}",
              flush=True)
    save(report, args.out)
    if not args.skip_tests:
        report["tests"] = run_tests(args.out)
        print(f"[gpu_check] tests: {report['tests']['counts']} "
              f"({report['tests']['seconds']} s)", flush=True)
        save(report, args.out)
    sys.path.insert(0, ROOT)
    import scalenn  # noqa: F401  (the in-place build)
    report["scalenn"] = {"file": scalenn.__file__, "built_with_cuda":
                         scalenn._C.build_info()["cuda"]}
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        l2 = int(getattr(props, "L2_cache_size", 0) or 60 * 2 ** 20)
    else:
        l2 = 1 << 16
    report["l2_bytes"] = l2
    torch.manual_seed(0)
    timer = Timer(torch, args.rounds)
    deadline = time.time() + args.budget_s
    report["limits"] = measure_limits(torch, timer, scale)
    print(f"[gpu_check] limits: {report['limits']}", flush=True)
    # Each section is kept apart: an exception in one is recorded and the others still run.
    sections = [("int8_linear", lambda: bench_int8(torch, timer, args.sizes, args.ms, l2,
                                                   deadline)),
                ("sparse24", lambda: bench_sparse24(torch, timer, args.sizes, args.ms, l2,
                                                    deadline)),
                ("bucket_pack", lambda: bench_pack(torch, timer, report["limits"]["copy_GBps"],
                                                   scale))]
    for name, fn in sections:
        try:
            report[name] = fn()
        except Exception:  # noqa: BLE001 - a one-shot GPU run must report, not stop
            report[name] = [{"error": traceback.format_exc()[-3000:]}]
            print(f"[gpu_check] {name} FAILED:\n{report[name][0]['error']}", file=sys.stderr)
        print(f"[gpu_check] {name} done ({time.time() - t_start:.0f} s)", flush=True)
        save(report, args.out)
    report["triton_autotune"] = autotune_choices()
    if DEV == "cuda":
        try:
            profile_launch(torch, os.path.join(args.out, "launch_profile.txt"))
        except Exception:  # noqa: BLE001 - diagnostics only
            traceback.print_exc()
    report["targets"] = check_targets(report)
    report["seconds_total"] = round(time.time() - t_start, 1)
    save(report, args.out)
    text = render(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(f"# scalenn gpu_check: {report['device']}, {report['date']}\n\n```\n{text}\n```\n")
    print(text)
    failed_tests = report.get("tests", {}).get("returncode", 0) != 0
    failed_build = not report.get("build", {}).get("ok", True)
    failed_section = any("error" in r and "variant" not in r for name, _ in sections
                         for r in report[name])
    failed_section |= any("error" in r for r in report["sparse24_probe"])
    return 1 if failed_tests or failed_build or failed_section else 0


def save(report, out_dir):
    """Written after every step, so a run cut short still leaves what it measured."""
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)


def profile_launch(torch, path, calls=200):
    """Where a Python caller's time goes in one small Triton int8_linear call (M=16): cProfile
    of `calls` eager calls, top functions by cumulative time, written to `path`."""
    import cProfile
    import io
    import pstats
    from scalenn.kernels import int8_linear as tk
    x = torch.randn(16, 4096, device=DEV, dtype=torch.bfloat16)
    w = torch.randint(-127, 128, (4096, 4096), device=DEV, dtype=torch.int8)
    ws = torch.rand(4096, device=DEV)
    for _ in range(3):
        tk.int8_linear(x, w, ws, None, 4096, "none")
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        tk.int8_linear(x, w, ws, None, 4096, "none")
    prof.disable()
    host_us = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
    with open(path, "w") as f:
        f.write(f"host time per call under cProfile: {host_us:.1f} us\n{text.getvalue()}")


def autotune_choices():
    """The tile each autotuned Triton kernel picked per key (for tuning the config lists)."""
    out = {}
    for mod_name, kernel_name in (("int8_linear", "_int8_linear_kernel"),
                                  ("int8_linear", "_int8_linear_tma_kernel"),
                                  ("bsr_matmul", "_bsr_kernel")):
        mod = sys.modules.get(f"scalenn.kernels.{mod_name}")
        kernel = getattr(mod, kernel_name, None) if mod else None
        cache = getattr(kernel, "cache", None) or {}
        out[kernel_name] = {str(k): str(v) for k, v in cache.items()}
    return out


def render(report) -> str:
    lim = report["limits"]
    parts = [f"device {report['device']}  copy {lim['copy_GBps']:.0f} GB/s  cuBLAS bf16 "
             f"{lim['bf16_TFLOPs']:.0f} TFLOP/s  int8 {lim['int8_TOPs']:.0f} TOP/s"]
    if "build" in report:
        b = report["build"]
        parts.append(f"build: {'ok' if b['ok'] else 'CUDA build FAILED'} ({b['arch']}, "
                     f"{b['seconds']} s)")
    if "tests" in report:
        parts.append(f"tests: {report['tests']['counts']} (exit {report['tests']['returncode']})")
    for name in ("int8_linear", "sparse24", "bucket_pack"):
        if any("error" in r and "variant" not in r for r in report[name]):
            parts.append(f"section {name} FAILED (traceback in gpu_check.json)")
    parts += [r["line"] for r in report["sparse24_probe"] if "line" in r]
    parts.append("\ntimes: ms per call of the device, from CUDA-graph replays (eager where a "
                 "variant cannot be captured); eager per-call times in gpu_check.json")
    parts.append("\nint8 W8A8 linear incl. activation quantization (ms; ratios: baseline time / "
                 "best scalenn time):")
    parts.append(_section_table(report["int8_linear"], ["vs_bf16", "vs_int_mm"]))
    parts.append("\n2:4 sparse (ms; ratios as above):")
    parts.append(_section_table(report["sparse24"], ["vs_dense", "vs_semi_structured",
                                                     "int8_vs_dense_int8"]))
    parts.append("\nbucket pack (100 M fp32 elements):")
    parts.append(format_table(report["bucket_pack"], ["variant", "ms", "timed_by", "GBps",
                                                      "fraction_of_copy_bw"]))
    small = [r for r in report["int8_linear"] if "eager_ms" in r]
    if small:
        m0, s0 = min(r["M"] for r in small), min(r["S"] for r in small)
        parts.append(f"\nper-call cost from Python, int8 linear at M={m0}, K=N={s0} "
                     "(device ms from the graph vs eager ms):")
        parts.append(format_table([r for r in small if r["M"] == m0 and r["S"] == s0],
                                  ["variant", "ms", "eager_ms"]))
    parts.append("\ntargets: " + ", ".join(f"{k}: {v['status']}" + (
        f" ({v['worst']:.2f} vs {v['threshold']})" if "worst" in v else "")
        for k, v in report["targets"].items()))
    return "\n".join(parts)


def _section_table(rows, ratio_columns):
    """One line per (S, M): each variant's ms, then the summary ratios."""
    table, variants = {}, []
    for r in rows:
        if "M" not in r or "variant" not in r:
            continue
        line = table.setdefault((r["S"], r["M"]), {"S": r["S"], "M": r["M"]})
        if r["variant"] == "summary":
            line.update({c: r.get(c) for c in ratio_columns})
        elif "ms" in r:
            line[r["variant"]] = r["ms"]
            if r["variant"] not in variants:
                variants.append(r["variant"])
    return format_table(list(table.values()), ["S", "M", *variants, *ratio_columns])


if __name__ == "__main__":
    sys.exit(main())
